"""Percentile-bootstrap confidence intervals for the offline watch-time simulation report.

``onerec-simulate`` reports, per model, the relative watch-time gain over the NTP model
with a 95% interval (``report.json``: ``gains[name] = {"swt_rel", "ci95"}``). The unit of
resampling is the *user*: every model is scored on the same users, so the gain is
resampled *paired* (:func:`paired_relative_gain_ci`), which removes the between-user
variance that both models share and gives a much tighter, honest interval than
resampling the two arms independently.

Resampling is vectorised: a [chunk, n] matrix of indices is drawn at a time, with
``chunk * n`` capped (:data:`_CHUNK_ELEMENTS`), so 2,000 resamples of 100k users hold
about 100 MB at a time instead of 1.6 GB per array (about 2 s on one CPU core).
Results depend only on the inputs and ``seed``.

Example::

    ci = paired_relative_gain_ci(swt_ipa, swt_ntp, n_resamples=2000, confidence=0.95, seed=0)
    report["gains"]["ipa"] = {"swt_rel": ci.estimate, "ci95": [ci.low, ci.high]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["ConfidenceInterval", "STATISTICS", "bootstrap_ci", "paired_relative_gain_ci"]

# Cap on the entries of one [chunk, n] resample matrix: 2**22 int64 indices are 32 MB, and
# so is each array of gathered float64 values, whatever the number of users.
_CHUNK_ELEMENTS = 1 << 22

Statistic = Callable[..., np.ndarray]
"""A numpy reduction called as ``f(x, axis=-1)``: [k, n] → [k] (like ``np.mean``)."""

STATISTICS: dict[str, Statistic] = {"mean": np.mean, "median": np.median}
"""Statistic names accepted by :func:`bootstrap_ci`."""


class ConfidenceInterval(NamedTuple):
    """A point estimate and its two-sided interval, as plain floats.

    Attributes:
        estimate: the statistic on the original sample (not the bootstrap mean).
        low: lower percentile of the bootstrap distribution.
        high: upper percentile of the bootstrap distribution.
    """

    estimate: float
    low: float
    high: float


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _as_sample(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a finite, non-empty, 1-D float64 array (no copy if already one): [n]."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per user), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; a confidence interval needs at least one value")
    nonfinite = ~np.isfinite(arr)
    if nonfinite.any():
        n_nan = int(np.isnan(arr).sum())
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {int(nonfinite.sum()) - n_nan} inf "
            f"value(s) of {arr.size} (first at index {int(np.argmax(nonfinite))})"
        )
    return arr


def _check_settings(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise ValueError(f"n_resamples must be an int, got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be in the open interval (0, 1), got {confidence}")


def _resolve_statistic(statistic: str | Statistic) -> Statistic:
    if callable(statistic):
        return statistic
    try:
        return STATISTICS[statistic]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown statistic {statistic!r}; expected one of {sorted(STATISTICS)} "
            f"or a callable f(x, axis=-1)"
        ) from None


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Resample indices, ``n_resamples`` rows of ``n`` draws with replacement, in chunks.

    Yields [chunk, n] int64 arrays whose rows together are the ``n_resamples`` resamples.
    numpy's ``Generator.integers`` consumes its stream element by element, so the rows do
    not depend on the chunk size: the same seed gives the same resamples however they are
    split (a test pins this).
    """
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        yield rng.integers(0, n, size=(rows, n), dtype=np.int64)


def _percentile_interval(
    estimate: float, replicates: np.ndarray, confidence: float
) -> ConfidenceInterval:
    """Percentile interval of the bootstrap ``replicates`` [n_resamples]."""
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1.0 - alpha / 2])
    return ConfidenceInterval(float(estimate), float(low), float(high))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray,
    *,
    statistic: str | Statistic = "mean",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap confidence interval of a statistic of one sample.

    Draws ``n_resamples`` samples of size n with replacement, computes the statistic on
    each, and returns the ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles of
    those replicates (Efron & Tibshirani 1993, ch. 13).

    Args:
        values: [n] one value per user (e.g. session watch time); finite, n >= 1.
        statistic: ``"mean"``, ``"median"`` or a numpy reduction called as
            ``f(x, axis=-1)`` mapping [k, n] → [k].
        n_resamples: number of bootstrap resamples (>= 1).
        confidence: two-sided coverage in (0, 1), e.g. 0.95.
        seed: seed of the resampling; the same inputs and seed give the same interval.

    Returns:
        :class:`ConfidenceInterval` (estimate = statistic of ``values``).

    Raises:
        ValueError: empty, non-1-D or non-finite ``values``; bad settings or statistic.

    Example::

        >>> bootstrap_ci(np.array([3.0, 3.0, 3.0]))
        ConfidenceInterval(estimate=3.0, low=3.0, high=3.0)
    """
    sample = _as_sample(values, "values")
    _check_settings(n_resamples, confidence)
    stat = _resolve_statistic(statistic)
    n = sample.shape[0]
    replicates = np.concatenate(
        [
            np.asarray(stat(sample[idx], axis=-1), dtype=np.float64)  # (chunk,)
            for idx in _index_chunks(n, n_resamples, seed)
        ]
    )
    estimate = float(np.asarray(stat(sample[np.newaxis, :], axis=-1))[0])
    return _percentile_interval(estimate, replicates, confidence)


def paired_relative_gain_ci(
    treatment: np.ndarray,
    baseline: np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Paired percentile-bootstrap interval of ``mean(treatment) / mean(baseline) - 1``.

    ``treatment[i]`` and ``baseline[i]`` are the same user scored under two models, so
    users are resampled *jointly*: one index matrix selects from both arrays. A gain that
    is the same for every user (``treatment = 1.1 * baseline``) therefore has a zero-width
    interval, which independent resampling of the two arms could never give.

    Args:
        treatment: [n] per-user metric under the model being evaluated (e.g. IPA).
        baseline: [n] the same users' metric under the reference model (the NTP model).
        n_resamples: number of bootstrap resamples (>= 1).
        confidence: two-sided coverage in (0, 1).
        seed: seed of the resampling.

    Returns:
        :class:`ConfidenceInterval` of the relative gain (0.10 means +10%).

    Raises:
        ValueError: empty, non-1-D, non-finite or different-length inputs; a baseline
            whose mean is 0 (on the sample or in a resample), where the gain is undefined.
    """
    t = _as_sample(treatment, "treatment")
    b = _as_sample(baseline, "baseline")
    if t.shape != b.shape:
        raise ValueError(
            f"treatment and baseline must hold the same users (element i = user i), "
            f"got lengths {t.shape[0]} and {b.shape[0]}"
        )
    _check_settings(n_resamples, confidence)
    baseline_mean = b.mean()
    if baseline_mean == 0.0:
        raise ValueError("baseline has mean 0; the relative gain mean(t)/mean(b) - 1 is undefined")
    n = t.shape[0]
    parts: list[np.ndarray] = []
    n_zero = 0
    for idx in _index_chunks(n, n_resamples, seed):
        t_means = t[idx].mean(axis=-1)  # (chunk,)
        b_means = b[idx].mean(axis=-1)  # (chunk,)
        zero = b_means == 0.0
        n_zero += int(zero.sum())
        # Divide only where defined; the error below reports the rest.
        parts.append(np.divide(t_means, b_means, out=np.zeros_like(t_means), where=~zero) - 1.0)
    if n_zero:
        raise ValueError(
            f"baseline mean was 0 in {n_zero} of {n_resamples} resamples (too many zero "
            f"baseline values for n={n}); the relative gain is undefined there"
        )
    estimate = t.mean() / baseline_mean - 1.0
    return _percentile_interval(estimate, np.concatenate(parts), confidence)
