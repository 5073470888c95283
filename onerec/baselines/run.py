"""Score the baselines on a split with the same rankings and metrics as the generative model.

``onerec-eval ... baselines=[popularity,sasrec]`` calls :func:`run_baselines`; SASRec is
trained once into ``baseline_dir`` and loaded from there afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data_pipeline.bundle import Bundle
from onerec.baselines.popularity import item_popularity, popularity_rankings, popularity_rankings_excluding
from onerec.baselines.sasrec import CHECKPOINT, SASRecConfig, load_sasrec, sasrec_rankings, train_sasrec
from onerec.data import ExampleSet
from onerec.ranking import Rankings, evaluate_rankings, history_exclusions

log = logging.getLogger(__name__)

RankFn = Callable[[Bundle, ExampleSet, Path, int, int, SASRecConfig, bool], Rankings]


def _popularity(
    bundle: Bundle, examples: ExampleSet, baseline_dir: Path, top_k: int, limit: int, cfg: SASRecConfig, exclude_history: bool
) -> Rankings:
    users = len(examples) if limit <= 0 else min(limit, len(examples))
    if exclude_history:
        return popularity_rankings_excluding(item_popularity(bundle), history_exclusions(examples, np.arange(users)), top_k)
    return popularity_rankings(item_popularity(bundle), users, top_k)


def _sasrec(
    bundle: Bundle, examples: ExampleSet, baseline_dir: Path, top_k: int, limit: int, cfg: SASRecConfig, exclude_history: bool
) -> Rankings:
    path = baseline_dir / CHECKPOINT
    if not path.is_file():
        log.info("no SASRec at %s: training one (this takes a while on the full data)", path)
        train_sasrec(bundle, baseline_dir, cfg)
    model = load_sasrec(path, bundle, device=cfg.device)
    return sasrec_rankings(model, examples, top_k, cfg.eval_batch_size, limit, exclude_history)


BASELINES: dict[str, RankFn] = {"popularity": _popularity, "sasrec": _sasrec}


def run_baselines(
    bundle: Bundle,
    split: str,
    names: list[str] | tuple[str, ...] = ("popularity", "sasrec"),
    baseline_dir: str | Path | None = None,
    limit: int = 0,
    top_k: int = 10,
    sasrec_config: SASRecConfig | None = None,
    exclude_history: bool = False,
) -> dict[str, dict[str, Any]]:
    """``{name: metrics}`` for each baseline on ``split`` (metrics of :func:`evaluate_rankings`).

    Args:
        names: keys of :data:`BASELINES`.
        baseline_dir: where trained baselines live (needed for ``sasrec``).
        limit: score only the first examples of the split (0: all).
        sasrec_config: settings used when SASRec has to be trained (default :class:`SASRecConfig`).
        exclude_history: leave each user's history items out of its list (see :mod:`onerec.ranking`).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected some of {sorted(BASELINES)}")
    if "sasrec" in names and baseline_dir is None:
        raise ValueError("baseline_dir is needed to keep the trained SASRec")
    cfg = sasrec_config or SASRecConfig()
    examples = ExampleSet(bundle.split(split), cfg.max_len, bundle.target_items)
    folder = Path(baseline_dir) if baseline_dir is not None else Path(".")
    return {
        name: evaluate_rankings(BASELINES[name](bundle, examples, folder, top_k, limit, cfg, exclude_history), examples)
        for name in names
    }

