"""How the cost of training and of the data pipeline grows with the work.

Three sweeps, each point measured in a fresh child process (so that its peak memory is
its own):

- **items** (10k → 1M by default): the catalogue behind the per-item history table.
  Training runs on random histories over that many items (the model, the batch and the
  history length fixed); the pipeline prepares a synthetic log with that many items.
- **history** (16 → 256): the encoder's history length, for training and for the
  pipeline's ``examples.history_length``.
- **users** (1k → 4k): users in the synthetic log; rows grow with them. Pipeline only: a
  training step's cost does not depend on how many users there are, only an epoch's.

Columns: training tokens/s (history items + target codes + target items per second, as
``onerec-train`` logs them), the share of a step spent clipping gradients and in AdamW
(work proportional to the parameter count, the item table included), the training
child's peak memory, the pipeline's seconds per million log rows, its peak memory and its
most expensive stage (the manifest's ``timings_s``).
After each metric, ``x2`` is its per-doubling ratio against the previous point,
``(m_i / m_{i-1}) ** (1 / log2(x_i / x_{i-1}))``: 1.00 means flat, 2.00 linear.

Run from the repository root (a few minutes on two shared CPU cores at the defaults)::

    python -m benchmarks.bench_scale
    python -m benchmarks.bench_scale --items 10000,100000 --history 16,64 --users 500,1000 --steps 2
    python -m benchmarks.bench_scale --device cuda --model small --batch-size 256

Peak memory is the child's ``ru_maxrss`` (CPU) or ``torch.cuda.max_memory_allocated``
(CUDA, training only). Children use one torch thread unless ``--threads`` says otherwise:
on two cores shared with another job, two spinning OpenMP threads made a tiny model's
step 100x slower (2.3 s instead of 0.02 s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODEBOOK = 256  # codes per semantic-ID level (3 levels), whatever the catalogue size
LEVELS = 3
SESSION_ITEMS = 3


# --------------------------------------------------------------------------- training
def synthetic_model_and_batches(
    model_name: str, num_items: int, history: int, batch_size: int, count: int, device: str, seed: int = 0
) -> tuple[Any, list[Any]]:
    """A OneRec of ``conf/model/<model_name>.yaml`` over ``num_items`` items with random
    semantic IDs, and ``count`` batches of ``batch_size`` users with ``history`` items each.
    (Shared with ``benchmarks.gpu_check``.)"""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from onerec.config import ModelConfig, MoEConfig
    from onerec.data import BatchBuilder
    from onerec.model import OneRec

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fields = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{model_name}.yaml"))
    model_cfg = ModelConfig(**{**fields, "max_history": max(history, 1), "dropout": 0.0})  # type: ignore[arg-type]
    moe_fields = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "moe" / "default.yaml"))
    model = OneRec(model_cfg, MoEConfig(**moe_fields), [CODEBOOK] * LEVELS, num_items, SESSION_ITEMS).to(device)  # type: ignore[arg-type]
    codes = rng.integers(0, CODEBOOK, size=(num_items, LEVELS))
    builder = BatchBuilder(codes, history_item_embedding=True, user_buckets=0)
    batches = []
    for _ in range(count):
        items = torch.from_numpy(rng.integers(0, num_items, size=(batch_size, history + SESSION_ITEMS)))
        lengths = torch.full((batch_size,), history, dtype=torch.long)
        batch = builder.build(items[:, :history].reshape(-1), lengths, torch.arange(batch_size), items[:, history:])
        batches.append(batch.to(torch.device(device)))
    return model, batches


def measure_training(point: dict[str, Any]) -> dict[str, float]:
    """tokens/s, the share of a step spent on clipping + the optimiser (work proportional
    to the parameter count, the tables included) and peak memory of ``steps`` NTP steps
    (after one warm-up)."""
    import torch

    from onerec.config import TrainerConfig
    from onerec.losses import ntp_loss
    from onerec.train import autocast_dtype, make_optimizer

    device = torch.device(point["device"])
    model, batches = synthetic_model_and_batches(
        point["model"], point["items"], point["history"], point["batch_size"], point["steps"] + 1, point["device"]
    )
    optimizer = make_optimizer(model, TrainerConfig())
    amp = autocast_dtype("auto", device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    compute = optimize = 0.0
    tokens = 0
    for i, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            output = model(batch)
            loss = ntp_loss(output.logits, batch.target_codes) + output.balance_loss
        loss.backward()
        sync()
        middle = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync()
        if i > 0:  # the first step warms up allocators and kernels
            compute += middle - start
            optimize += time.perf_counter() - middle
            tokens += batch.num_tokens
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
    return {"tokens_per_s": tokens / (compute + optimize), "optimizer_share": optimize / (compute + optimize), "train_peak_mib": peak}


# --------------------------------------------------------------------------- pipeline
def measure_pipeline(point: dict[str, Any]) -> dict[str, float]:
    """Seconds per million log rows and peak memory of ``prepare`` on a synthetic log."""
    import tempfile

    from data_pipeline.examples import ExampleConfig
    from data_pipeline.items import ItemEmbeddingConfig
    from data_pipeline.prep import PrepConfig, prepare
    from data_pipeline.semantic_ids import SemanticIdConfig
    from data_pipeline.sessions import SessionConfig
    from data_pipeline.sources.synthetic import SyntheticConfig

    with tempfile.TemporaryDirectory() as out:
        cfg = PrepConfig(
            data=SyntheticConfig(num_users=point["users"], num_items=point["items"], seed=0),
            out_dir=out,
            sessions=SessionConfig(target_items=SESSION_ITEMS),
            examples=ExampleConfig(history_length=point["history"]),
            items=ItemEmbeddingConfig(dim=32, side_dim=8),
            semantic_ids=SemanticIdConfig(levels=LEVELS, codebook_size=CODEBOOK, iterations=10),
            show_progress=False,
        )
        source = cfg.data.read()  # generating the log is not the pipeline's cost
        start = time.perf_counter()
        manifest = prepare(cfg, source)
        seconds = time.perf_counter() - start
    rows = int(manifest["counts"]["rows_read"])
    timings = manifest["timings_s"]
    top = max(timings, key=timings.get)
    return {
        "rows": rows,
        "prep_top_stage": f"{top} {timings[top] / max(sum(timings.values()), 1e-9):.0%}",
        "bundle_items": int(manifest["counts"]["items"]),
        "prep_s_per_mrow": seconds / rows * 1e6,
        "prep_peak_mib": _peak_rss_mib(),
    }


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- driver
@dataclass
class Sweep:
    name: str
    values: list[int]
    train: bool
    pipeline: bool


def run_child(kind: str, point: dict[str, Any], timeout: float) -> dict[str, float]:
    """Measure one point in a fresh process (its own peak memory)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--child", kind, json.dumps(point)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed for {point}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_doubling(values: list[float], sizes: list[int]) -> list[str]:
    """``(m_i / m_{i-1}) ** (1 / log2(x_i / x_{i-1}))`` for each point after the first."""
    out = [""]
    for i in range(1, len(values)):
        if values[i - 1] > 0 and values[i] > 0 and sizes[i] != sizes[i - 1]:
            out.append(f"{(values[i] / values[i - 1]) ** (1 / math.log2(sizes[i] / sizes[i - 1])):.2f}")
        else:
            out.append("-")
    return out


COLUMNS = [  # (key, header, format)
    ("tokens_per_s", "train tok/s", "{:,.0f}"),
    ("optimizer_share", "clip+opt", "{:.0%}"),
    ("train_peak_mib", "train MiB", "{:,.0f}"),
    ("prep_s_per_mrow", "prep s/Mrow", "{:.1f}"),
    ("prep_peak_mib", "prep MiB", "{:,.0f}"),
    ("prep_top_stage", "prep top stage", "{}"),
]
RATIO_OF = {"tokens_per_s", "train_peak_mib", "prep_s_per_mrow", "prep_peak_mib"}


def print_sweep(sweep: Sweep, rows: list[dict[str, Any]]) -> None:
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    headers = [sweep.name]
    for key, header, _ in columns:
        headers.append(header)
        if key in RATIO_OF:
            headers.append("x2")
    headers += ["log rows", "bundle items"]
    cells: list[list[str]] = [[f"{v:,}"] for v in sweep.values]
    for key, _, fmt in columns:
        values = [r.get(key) for r in rows]
        ratios = per_doubling([v or 0.0 for v in values], sweep.values) if key in RATIO_OF else None
        for i, value in enumerate(values):
            cells[i].append("-" if value is None else fmt.format(value))
            if ratios is not None:
                cells[i].append(ratios[i] if value is not None else "")
    for i, r in enumerate(rows):
        cells[i] += [f"{r['rows']:,}" if "rows" in r else "-", f"{r['bundle_items']:,}" if "bundle_items" in r else "-"]
    widths = [max(len(h), *(len(c[j]) for c in cells)) for j, h in enumerate(headers)]
    print("| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(x.rjust(w) for x, w in zip(c, widths)) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--items", type=ints, default=[10_000, 100_000, 1_000_000], help="catalogue sizes")
    parser.add_argument("--history", type=ints, default=[16, 64, 256], help="history lengths")
    parser.add_argument("--users", type=ints, default=[1_000, 2_000, 4_000], help="users in the synthetic log")
    parser.add_argument("--base-items", type=int, default=10_000, help="catalogue of the history and users sweeps")
    parser.add_argument("--base-history", type=int, default=32, help="history length of the items and users sweeps")
    parser.add_argument("--base-users", type=int, default=1_000, help="users of the items and history sweeps' logs")
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per point (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (0: torch's default)")
    parser.add_argument("--no-pipeline", action="store_true", help="training columns only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "POINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, point = args.child[0], json.loads(args.child[1])
        import torch

        if point.get("threads", 0) > 0:
            torch.set_num_threads(point["threads"])
        result = measure_training(point) if kind == "train" else measure_pipeline(point)
        print(json.dumps(result))
        return

    sweeps = [
        Sweep("items", args.items, train=True, pipeline=not args.no_pipeline),
        Sweep("history", args.history, train=True, pipeline=not args.no_pipeline),
        Sweep("users", args.users, train=False, pipeline=not args.no_pipeline),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model={args.model} batch={args.batch_size} device={args.device} steps={args.steps} threads={args.threads} "
        f"base: items={args.base_items:,} history={args.base_history} users={args.base_users:,}; "
        f"load average {load:.1f} on {os.cpu_count()} cores\n"
    )
    started = time.perf_counter()
    for sweep in sweeps:
        if not (sweep.train or sweep.pipeline):
            continue
        rows = []
        for value in sweep.values:
            point = {
                "items": args.base_items, "history": args.base_history, "users": args.base_users,
                "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "device": args.device,
                "threads": args.threads,
            }
            point[sweep.name] = value
            row: dict[str, Any] = {}
            if sweep.train:
                row.update(run_child("train", point, args.timeout))
            if sweep.pipeline:
                row.update(run_child("pipeline", point, args.timeout))
            rows.append(row)
            print(f"  {sweep.name}={value:,}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})}", file=sys.stderr)
        print_sweep(sweep, rows)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
