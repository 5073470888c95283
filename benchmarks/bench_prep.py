"""End-to-end time and peak memory of ``onerec-prep`` on a large synthetic log.

The log (10M rows, 200k items, 200 topics by default) is generated once, in a child
process and untimed, to a parquet file with the canonical column names; later runs reuse
it. The pipeline then runs in this process from that file, exactly as
``onerec-prep data=csv data.path=LOG.parquet '+data.columns.<label>=<label>' ...`` would
(the same Hydra config, composed here), so the synthetic ground truth plays no part.

Run from the repository root (target: under 2 minutes and 6 GiB on two CPU cores)::

    python -m benchmarks.bench_prep                      # 10M rows
    python -m benchmarks.bench_prep --rows 1000000       # a quicker run

Prints the wall time of each pipeline stage (the manifest's ``timings_s``) beside its CPU
time (user + system, all threads of this process), the totals, and the peak resident
memory (``ru_maxrss``) of the pipeline process; the generator child's peak is shown for
information only. On a machine shared with another job the wall times stretch and the
CPU times do not: read both, with the load average printed at the start.

OpenBLAS runs with one thread unless ``--blas-threads`` (or ``OPENBLAS_NUM_THREADS``) says
otherwise: the pipeline's dense products are tall and thin, a second thread gains little,
and on a machine shared with another job OpenBLAS's spinning workers made single products
20-100x slower (a 162k x 74 Gram matrix: 0.06 s with one thread, 0.2-6.5 s with two).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 120.0
TARGET_GIB = 6.0
LOG_COLUMNS = ["user_id", "item_id", "timestamp", "watch_time_ms", "duration_ms", "like", "follow", "share"]


def _gib(kib: int) -> float:
    return kib / 2**20  # ru_maxrss is in KiB on Linux


def generate_log(path: Path, rows: int, num_items: int, num_topics: int, seed: int) -> None:
    """Write the synthetic log (canonical columns, no row numbers) to ``path``."""
    from data_pipeline.sources.synthetic import SyntheticConfig

    source = SyntheticConfig(rows=rows, num_items=num_items, num_topics=num_topics, seed=seed).read()
    tmp = path.with_suffix(".tmp")
    source.interactions.select(LOG_COLUMNS).collect().write_parquet(tmp)
    tmp.replace(path)


def ensure_log(args: argparse.Namespace) -> tuple[Path, str]:
    """The log's path, generating it in a child process if it is not there yet."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"synthetic_{args.rows}r_{args.num_items}i_{args.num_topics}t_seed{args.seed}.parquet"
    if path.is_file() and not args.regenerate:
        return path, "reused"
    start = time.perf_counter()
    child = [
        sys.executable, "-m", "benchmarks.bench_prep", "--generate-to", str(path),
        "--rows", str(args.rows), "--num-items", str(args.num_items),
        "--num-topics", str(args.num_topics), "--seed", str(args.seed),
    ]
    subprocess.run(child, check=True)
    peak = _gib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return path, f"generated in {time.perf_counter() - start:.1f} s (untimed), generator peak RSS {peak:.2f} GiB"


class StageCpuClock:
    """Stands in for ``prepare``'s progress bar to read this process's CPU time (all
    threads) at the end of each step. CPU seconds, unlike wall seconds, do not grow when
    another job shares the cores."""

    last: "StageCpuClock | None" = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.cpu_s: dict[str, float] = {}
        self._step = ""
        self._mark = time.process_time()
        StageCpuClock.last = self

    def set_postfix_str(self, step: str) -> None:
        self._step = step

    def update(self, n: int = 1) -> None:
        now = time.process_time()
        self.cpu_s[self._step] = now - self._mark
        self._mark = now

    def close(self) -> None:
        pass


def run_pipeline(log_path: Path, out_dir: Path) -> tuple[dict, float, dict[str, float]]:
    """``onerec-prep data=csv`` on the log, in this process:
    ``(manifest, wall seconds, CPU seconds per stage)``."""
    from hydra import compose, initialize_config_dir

    import data_pipeline.prep
    from data_pipeline.cli import CONF_DIR
    from data_pipeline.prep import prepare
    from onerec.stages import register, to_dataclass

    overrides = [
        "data=csv",
        f"data.path={log_path}",
        f"out_dir={out_dir}",
        "show_progress=false",
        *[f"+data.columns.{c}={c}" for c in LOG_COLUMNS[3:]],
    ]
    register("prep")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_dataclass("prep", compose(config_name="prep", overrides=overrides))
    progress_bar = data_pipeline.prep.tqdm
    data_pipeline.prep.tqdm = StageCpuClock  # type: ignore[attr-defined,misc]
    try:
        start = time.perf_counter()
        manifest = prepare(cfg)
        wall = time.perf_counter() - start
    finally:
        data_pipeline.prep.tqdm = progress_bar  # type: ignore[misc]
    assert StageCpuClock.last is not None
    return manifest, wall, StageCpuClock.last.cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--num-items", type=int, default=200_000)
    parser.add_argument("--num-topics", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="/tmp/onerec_bench_prep", help="log and bundle go here")
    parser.add_argument("--regenerate", action="store_true", help="write the log again even if present")
    parser.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS threads (default 1)")
    parser.add_argument("--generate-to", help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    # Before numpy is first imported (data_pipeline is imported lazily below).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.blas_threads))
    if args.generate_to:
        generate_log(Path(args.generate_to), args.rows, args.num_items, args.num_topics, args.seed)
        return

    log_path, how = ensure_log(args)
    print(f"log: {log_path} ({how})")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"OpenBLAS threads: {os.environ['OPENBLAS_NUM_THREADS']}; CPUs: {os.cpu_count()}; load average {load}")
    manifest, wall, cpu_s = run_pipeline(log_path, Path(args.work_dir) / "bundle")
    peak = _gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    counts = manifest["counts"]
    print(
        f"rows {counts['rows_read']:,} read, {counts['rows_kept']:,} kept | users {counts['users']:,} | "
        f"items {counts['items']:,} | sessions {counts['sessions']:,} | examples "
        + json.dumps(counts["examples"])
    )
    print(f"{'stage':<14}{'wall s':>8}{'cpu s':>8}")
    for stage, seconds in manifest["timings_s"].items():
        print(f"{stage:<14}{seconds:>8.2f}{cpu_s.get(stage, float('nan')):>8.2f}")
    ok_time, ok_mem = wall < TARGET_S, peak < TARGET_GIB
    print(
        f"{'total':<14}{wall:>8.2f}{sum(cpu_s.values()):>8.2f}   "
        f"target < {TARGET_S:.0f} s wall: {'ok' if ok_time else 'MISSED'}"
    )
    print(f"peak RSS {peak:.2f} GiB (pipeline process)   target < {TARGET_GIB:.0f} GiB: {'ok' if ok_mem else 'MISSED'}")


if __name__ == "__main__":
    main()
