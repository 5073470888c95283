"""``onerec-demo``: the whole flow on the embedded synthetic log, as a user would run it.

    onerec-demo [out_dir=DIR]

Each stage runs as its own command, exactly as written in the README's command
contract, and the demo prints every command before running it, so the output doubles
as a walk-through.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    """Attributes:
        out_dir: everything the demo writes goes here.
        train_steps: NTP training steps of the tiny model.
    """

    out_dir: str = "demo_out"
    train_steps: int = 600


def _run(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"onerec-demo: step failed with exit status {result.returncode}: {shlex.join(command)}", file=sys.stderr)
        sys.exit(result.returncode)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def run_demo(cfg: DemoConfig) -> Path:
    out = Path(cfg.out_dir).resolve()
    bundle, run = out / "bundle", out / "ntp"
    bin_dir = Path(sys.executable).parent
    _run([str(bin_dir / "onerec-prep"), "data=synthetic", f"out_dir={bundle}", "show_progress=false"])
    _run(
        [
            str(bin_dir / "onerec-train"),
            f"data_dir={bundle}",
            f"run_dir={run}",
            "model=tiny",
            f"trainer.max_steps={cfg.train_steps}",
            "trainer.eval_every=200",
            "trainer.batch_size=64",
            "trainer.show_progress=false",
        ]
    )
    _run(
        [
            str(bin_dir / "onerec-eval"),
            f"run_dir={run}",
            "split=test",
            f"predictions_out={out / 'test_predictions.jsonl'}",
            "baselines=[popularity]",
            "show_progress=false",
        ]
    )
    print(f"\nDone. Results are in {out}:")
    print(f"  bundle            {bundle}  (manifest.json, rejects.csv, items.parquet ...)")
    print(f"  NTP model         {run}  (best.pt, metrics.jsonl, tb/)")
    print(f"  test predictions  {out / 'test_predictions.jsonl'}")
    return out


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("demo", "onerec-demo", run_demo)


if __name__ == "__main__":
    main()
