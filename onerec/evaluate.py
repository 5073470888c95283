"""``onerec-eval``: Recall@K / NDCG@K over all items, legal-item rate, predictions file.

    onerec-eval data_dir=BUNDLE run_dir=RUN [split=valid|test] [predictions_out=FILE]
                [baselines=[popularity,sasrec]] [baselines_dir=DIR] [exclude_history=true]

Prints the generative model and the requested baselines side by side, all ranked by the
same code and scored by the same metrics on the same split; ``exclude_history=true`` leaves
each user's seen items out of every list (see :mod:`onerec.ranking`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.checkpoint import load_run
from onerec.data import BatchBuilder, ExampleSet
from onerec.generate import SessionGenerator
from onerec.ranking import Rankings, evaluate_rankings, rank_items
from onerec.trie import SemanticIdTrie

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """``onerec-eval``.

    Attributes:
        data_dir: the bundle (default: the run's own).
        run_dir: a run folder from onerec-train or onerec-align.
        split: ``valid`` or ``test``.
        predictions_out: write one JSON line per user: ``{"user", "items"}`` (original ids).
        top_k: items per prediction line.
        beam_size: beams of the ranking search (at least top_k).
        baselines: baselines to score beside the model (``popularity``, ``sasrec``).
        baselines_dir: where trained baselines are kept (SASRec is trained there once).
        unconstrained: also report the legal-item rate without the trie (an ablation).
        limit: evaluate only the first users (0: all).
        exclude_history: leave each user's history items out of every ranked list, the
            model's and the baselines' alike (for logs without re-consumption, e.g. Amazon).
    """

    data_dir: str | None = None
    run_dir: str = "???"
    split: str = "test"
    predictions_out: str | None = None
    top_k: int = 10
    beam_size: int = 20
    batch_size: int = 256
    baselines: list[str] = field(default_factory=list)
    baselines_dir: str | None = None
    unconstrained: bool = False
    limit: int = 0
    exclude_history: bool = False
    show_progress: bool = True
    out_json: str | None = None


def write_predictions(path: Path, bundle: Bundle, examples: ExampleSet, items: np.ndarray) -> None:
    """One line per user of the split, original ids, best first."""
    item_ids = bundle.item_ids()
    user_ids = bundle.user_ids()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for user, ranked in zip(examples.users[: items.shape[0]], items):
            line = {"user": user_ids[int(user)], "items": [item_ids[int(i)] for i in ranked if i >= 0]}
            f.write(json.dumps(line) + "\n")


def model_rankings(cfg: EvalConfig, constrained: bool = True) -> tuple[Rankings, ExampleSet, Bundle]:
    run = load_run(cfg.run_dir, cfg.data_dir)
    bundle = run.bundle
    examples = ExampleSet(bundle.split(cfg.split), run.config.model.max_history, run.session_length)
    builder = BatchBuilder.for_bundle(bundle, run.config.model.history_item_embedding, run.config.model.user_embedding_buckets)
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    generator = SessionGenerator(run.model, trie, torch.as_tensor(bundle.codes))
    rankings = rank_items(
        generator,
        builder,
        examples,
        top_k=cfg.top_k,
        beam_size=cfg.beam_size,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
        constrained=constrained,
        show_progress=cfg.show_progress,
        exclude_history=cfg.exclude_history,
    )
    return rankings, examples, bundle


def evaluate(cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Score the model (and baselines) on a split; returns ``{name: metrics}``."""
    if cfg.split not in ("valid", "test"):
        raise UserError(f"split={cfg.split!r}; expected valid or test")
    rankings, examples, bundle = model_rankings(cfg)
    results: dict[str, dict[str, Any]] = {"onerec": evaluate_rankings(rankings, examples)}
    if cfg.unconstrained:
        free, _, _ = model_rankings(cfg, constrained=False)
        results["onerec"]["legal_rate_unconstrained"] = free.legal_rate
    if cfg.predictions_out:
        write_predictions(Path(cfg.predictions_out), bundle, examples, rankings.items)
    if cfg.baselines:
        from onerec.baselines import run_baselines

        baseline_dir = Path(cfg.baselines_dir) if cfg.baselines_dir else Path(cfg.run_dir) / "baselines"
        results.update(
            run_baselines(bundle, cfg.split, cfg.baselines, baseline_dir, limit=cfg.limit, exclude_history=cfg.exclude_history)
        )
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    columns = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "legal_rate", "users"]
    lines = [f"{'model':<12}" + "".join(f"{c:>11}" for c in columns)]
    for name, metrics in results.items():
        cells = []
        for c in columns:
            value = metrics.get(c)
            cells.append(f"{value:>11}" if isinstance(value, int) else f"{value:>11.4f}" if value is not None else f"{'-':>11}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)


def report(cfg: EvalConfig) -> None:
    results = evaluate(cfg)
    print(f"split: {cfg.split}")
    print(format_table(results))
    if cfg.out_json:
        Path(cfg.out_json).write_text(json.dumps(results, indent=2))


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("eval", "onerec-eval", report)


if __name__ == "__main__":
    main()
