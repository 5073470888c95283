"""Bootstrap intervals: exact cases by enumeration, determinism, coverage, errors."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from onerec import bootstrap
from onerec.bootstrap import ConfidenceInterval, bootstrap_ci, paired_relative_gain_ci


def _exact_bootstrap_quantile(values: list[float], q: float) -> float:
    """The q-quantile of the *exact* bootstrap distribution of the mean, by enumeration.

    Every one of the n**n index tuples is an equally likely resample; the quantile is the
    smallest resample mean whose cumulative probability reaches q.
    """
    n = len(values)
    means = sorted(
        Fraction(sum(Fraction(values[i]) for i in idx), n)
        for idx in itertools.product(range(n), repeat=n)
    )
    k = int(np.ceil(q * len(means)))  # 1-based rank of the first mean with CDF >= q
    return float(means[k - 1])


# ---------------------------------------------------------------------------------------
# Cases worked out by hand
# ---------------------------------------------------------------------------------------


def test_exact_percentiles_match_enumeration() -> None:
    # values [0, 0, 1, 1]: a resample mean is Binomial(4, 1/2) / 4, so
    #   P(mean = 0, .25, .5, .75, 1) = 1/16, 4/16, 6/16, 4/16, 1/16
    #   CDF                           = .0625, .3125, .6875, .9375, 1
    # 80% interval: the 10% quantile is 0.25 and the 90% quantile is 0.75;
    # 95% interval: the 2.5% quantile is 0    and the 97.5% quantile is 1.
    # With 4000 resamples the empirical CDF at each step has sd <= 0.008, and every target
    # quantile is >= 0.0375 (4.7 sd) away from a step, so the interval lands on the exact
    # values (and the seed is fixed, so this never flakes).
    values = [0.0, 0.0, 1.0, 1.0]
    for confidence, (lo, hi) in [(0.80, (0.25, 0.75)), (0.95, (0.0, 1.0))]:
        alpha = 1 - confidence
        assert _exact_bootstrap_quantile(values, alpha / 2) == lo
        assert _exact_bootstrap_quantile(values, 1 - alpha / 2) == hi
        ci = bootstrap_ci(np.array(values), n_resamples=4000, confidence=confidence, seed=0)
        assert ci == ConfidenceInterval(estimate=0.5, low=lo, high=hi)


def test_constant_sample_gives_zero_width_interval() -> None:
    for statistic in ("mean", "median"):
        ci = bootstrap_ci(np.full(50, 3.25), statistic=statistic, n_resamples=200)
        assert ci == ConfidenceInterval(3.25, 3.25, 3.25)
    # a single user is a constant sample too
    assert bootstrap_ci(np.array([7.0]), n_resamples=10) == ConfidenceInterval(7.0, 7.0, 7.0)


def test_callable_statistic_is_applied_along_the_resample_axis() -> None:
    # max of a resample of [0, 1] is 0 only when both draws are 0: P = 1/4.
    # 95% interval: 2.5% quantile 0 (CDF .25), 97.5% quantile 1.
    ci = bootstrap_ci(np.array([0.0, 1.0]), statistic=np.max, n_resamples=2000)
    assert ci == ConfidenceInterval(1.0, 0.0, 1.0)


def test_paired_gain_of_a_uniform_lift_is_exact_and_zero_width() -> None:
    # treatment = 1.1 * baseline for every user: every resample has
    # mean(1.1 b) / mean(b) - 1 = 0.1 (up to float rounding), so the interval has no width.
    # Independent resampling of the two arms would give a wide interval here.
    baseline = np.random.default_rng(3).exponential(30.0, size=500)
    ci = paired_relative_gain_ci(1.1 * baseline, baseline, n_resamples=500, confidence=0.95, seed=0)
    assert ci.estimate == pytest.approx(0.10, abs=1e-12)
    assert ci.low == pytest.approx(0.10, abs=1e-12)
    assert ci.high == pytest.approx(0.10, abs=1e-12)


def test_paired_gain_by_enumeration() -> None:
    # Two users: (t, b) = (2, 1) and (3, 3). Resamples of the pairs (each 1/4):
    #   {u0,u0}: 2/1 - 1 = 1 ; {u1,u1}: 3/3 - 1 = 0 ; {u0,u1} twice: 5/4 - 1 = 0.25
    # so gains 0, .25, 1 with P = 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    # The estimate on the sample is 5/4 - 1 = 0.25.
    ci = paired_relative_gain_ci(
        np.array([2.0, 3.0]), np.array([1.0, 3.0]), n_resamples=2000, confidence=0.95, seed=0
    )
    assert ci == ConfidenceInterval(0.25, 0.0, 1.0)
    # 40% interval: quantiles 0.3 and 0.7 both fall inside the 0.25 step (CDF .25 -> .75).
    ci = paired_relative_gain_ci(
        np.array([2.0, 3.0]), np.array([1.0, 3.0]), n_resamples=2000, confidence=0.4, seed=0
    )
    assert ci == ConfidenceInterval(0.25, 0.25, 0.25)


# ---------------------------------------------------------------------------------------
# Determinism and chunking
# ---------------------------------------------------------------------------------------


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    x = np.random.default_rng(0).normal(size=300)
    a = bootstrap_ci(x, n_resamples=500, seed=11)
    assert bootstrap_ci(x, n_resamples=500, seed=11) == a
    assert bootstrap_ci(x, n_resamples=500, seed=12) != a
    t = x + 5.0
    b = paired_relative_gain_ci(t, x + 4.0, n_resamples=500, confidence=0.9, seed=11)
    assert paired_relative_gain_ci(t, x + 4.0, n_resamples=500, confidence=0.9, seed=11) == b


def test_chunk_size_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # numpy's Generator.integers draws element by element, so splitting the index matrix
    # into chunks must give the very same resamples; if a numpy release ever changes that,
    # this test says so instead of the report silently changing with the user count.
    x = np.random.default_rng(1).exponential(size=101)
    y = x * 1.2 + np.random.default_rng(2).normal(scale=0.1, size=101)
    whole = bootstrap_ci(x, n_resamples=300, seed=5), paired_relative_gain_ci(
        y, x, n_resamples=300, seed=5
    )
    for cap in (1, 101, 250, 1000):  # one row per chunk, exact fits, and ragged chunks
        monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", cap)
        chunked = bootstrap_ci(x, n_resamples=300, seed=5), paired_relative_gain_ci(
            y, x, n_resamples=300, seed=5
        )
        assert chunked == whole


# ---------------------------------------------------------------------------------------
# Coverage: a statistical sanity check with fixed seeds
# ---------------------------------------------------------------------------------------


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    # 200 normal samples of 40 users, mean 5. The percentile bootstrap slightly
    # under-covers at small n (~93% here), so expect ~186 hits; binomial sd ~3.6.
    # [170, 199] is > 4 sd either side: it catches a wrong quantile or an interval that is
    # far too narrow/wide, and with fixed seeds it is deterministic anyway.
    hits = 0
    for trial in range(200):
        x = np.random.default_rng(1000 + trial).normal(5.0, 2.0, size=40)
        ci = bootstrap_ci(x, n_resamples=500, confidence=0.95, seed=trial)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= 5.0 <= ci.high
    assert 170 <= hits <= 199


def test_paired_gain_interval_covers_the_true_gain() -> None:
    # baseline ~ Exp(mean 10), treatment = 1.1 * baseline + N(0, 1) noise: the population
    # relative gain is exactly 0.10. Same tolerance reasoning as above.
    hits = 0
    for trial in range(200):
        rng = np.random.default_rng(5000 + trial)
        b = rng.exponential(10.0, size=100)
        t = 1.1 * b + rng.normal(0.0, 1.0, size=100)
        ci = paired_relative_gain_ci(t, b, n_resamples=500, confidence=0.95, seed=trial)
        hits += ci.low <= 0.10 <= ci.high
    assert 170 <= hits <= 199


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([]), r"values is empty"),
        (np.zeros((3, 2)), r"values must be 1-D.*\(3, 2\)"),
        (np.array([1.0, np.nan, np.nan]), r"values must be finite, got 2 NaN and 0 inf.*index 1"),
        (np.array([1.0, np.inf]), r"values must be finite, got 0 NaN and 1 inf"),
    ],
)
def test_bad_values_are_rejected(values: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_confidence_outside_open_unit_interval_is_rejected(confidence: float) -> None:
    expected = rf"confidence must be in the open interval \(0, 1\), got {confidence}"
    with pytest.raises(ValueError, match=expected):
        bootstrap_ci(np.ones(3), confidence=confidence)
    with pytest.raises(ValueError, match=r"confidence must be in the open interval"):
        paired_relative_gain_ci(np.ones(3), np.ones(3), confidence=confidence)


@pytest.mark.parametrize(
    ("n_resamples", "match"), [(0, r">= 1, got 0"), (2.5, r"an int, got 2.5"), (True, r"an int")]
)
def test_bad_n_resamples_is_rejected(n_resamples: object, match: str) -> None:
    with pytest.raises(ValueError, match=rf"n_resamples must be {match}"):
        bootstrap_ci(np.ones(3), n_resamples=n_resamples)  # type: ignore[arg-type]


def test_unknown_statistic_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown statistic 'avg'.*\['mean', 'median'\]"):
        bootstrap_ci(np.ones(3), statistic="avg")


def test_paired_errors() -> None:
    with pytest.raises(ValueError, match=r"same users.*lengths 3 and 2"):
        paired_relative_gain_ci(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match=r"treatment is empty"):
        paired_relative_gain_ci(np.array([]), np.array([]))
    with pytest.raises(ValueError, match=r"baseline must be finite, got 1 NaN"):
        paired_relative_gain_ci(np.ones(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"baseline has mean 0"):
        paired_relative_gain_ci(np.ones(2), np.zeros(2))
    # mean 0.25 on the sample, but a resample of only the zero users happens (P = (3/4)^4)
    with pytest.raises(ValueError, match=r"baseline mean was 0 in \d+ of 400 resamples"):
        paired_relative_gain_ci(np.ones(4), np.array([0.0, 0.0, 0.0, 1.0]), n_resamples=400)
