"""``python -m onerec.baselines``: score the baselines on a bundle without a generative run.

    python -m onerec.baselines --data-dir BUNDLE --out-dir DIR [--split test] [--time-budget-min 45] [--threads 1]

SASRec is trained into DIR the first time (then loaded); prints ``{name: metrics}`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from data_pipeline.bundle import Bundle
from onerec.baselines.run import BASELINES, run_baselines
from onerec.baselines.sasrec import SASRecConfig


def main(argv: list[str] | None = None) -> None:
    """``python -m onerec.baselines --data-dir BUNDLE --out-dir DIR [--split test]``:
    train SASRec into DIR if it is not there, then print every baseline's metrics as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out-dir", required=True, help="baselines folder (SASRec's checkpoint)")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--names", nargs="+", default=list(BASELINES))
    parser.add_argument("--time-budget-min", type=float, default=0.0, help="SASRec training time limit (0: none)")
    parser.add_argument("--max-epochs", type=int, default=SASRecConfig.max_epochs)
    parser.add_argument("--objective", default=SASRecConfig.objective, choices=["all", "last"])
    parser.add_argument("--batch-size", type=int, default=SASRecConfig.batch_size)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--exclude-history", action="store_true", help="leave each user's history items out of its list")
    args = parser.parse_args(argv)
    # force: importing torchrec already put a WARNING-level handler on the root logger.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = SASRecConfig(
        time_budget_min=args.time_budget_min,
        max_epochs=args.max_epochs,
        objective=args.objective,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    results = run_baselines(
        Bundle.open(args.data_dir), args.split, args.names, args.out_dir, sasrec_config=cfg, exclude_history=args.exclude_history
    )
    print(json.dumps({"split": args.split, **results}, indent=2))


if __name__ == "__main__":
    main()
