"""Serving latency: eager PyTorch vs TorchScript vs AOTInductor behind the real HTTP server.

Run from the repository root::

    python -m benchmarks.bench_serving [--duration 20] [--concurrency 1 4 16] [--json-out FILE]

What it does, all on loopback:

1. Builds (once, cached under ``--work-dir``; ``--rebuild`` exports again) a synthetic
   bundle with sessions of 5 items, a randomly initialised ``small`` model
   (``conf/model/small.yaml``: d_model 128, 2 + 2 layers, 4 experts top-2; latency does not
   depend on training) and its artefact with ``onerec-export`` (beam 16, an AOTInductor
   program for 5 items: minutes of C++ compiling the first time).
2. For each runtime, starts ``python -m serving artefact=... runtime=...`` in its own
   subprocess with ``conf/serve.yaml``'s settings, warms it up, and drives it with
   :mod:`benchmarks.load_generator` (closed loop, one keep-alive connection per client) at each
   concurrency: every request carries a history of 50 known items and asks for 5.
3. Prints p50 / p99 latency and requests/s per runtime and concurrency, the ratios against
   eager, and the targets (p99 < 50 ms at concurrency 1; ≥ 2× eager's throughput at 16).

The load generator shares the machine with the server: on 2 cores its threads take CPU from
the server it measures, for every runtime alike.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.load_generator import LoadReport, run_load

#: Rows of the table: name -> (runtime, extra onerec-serve overrides). ``eager_unbatched`` is the
#: naive server (one request per model call), for what dynamic batching itself buys. ``aoti``
#: runs every batch on AOTInductor (conf/serve.yaml's ``aoti_max_batch: 0``); ``aoti_lone``
#: only lone requests, batches on TorchScript (``aoti_max_batch=1``); ``aoti_malloc_default``
#: leaves glibc's malloc thresholds at their defaults (``malloc_keep_mb=0``).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "eager": ("eager", []),
    "torchscript": ("torchscript", []),
    "aoti": ("aoti", []),
    "aoti_lone": ("aoti", ["aoti_max_batch=1"]),
    "aoti_malloc_default": ("aoti", ["malloc_keep_mb=0"]),
    "eager_unbatched": ("eager", ["max_batch_size=1"]),
}
HISTORY_LENGTH = 50
NUM_ITEMS = 5
BEAM_SIZE = 16


# ---------------------------------------------------------------------------------------
# The artefact.


def build_artefact(work: Path, rebuild: bool = False) -> Path:
    """Bundle → random small model run → artefact, each step skipped when already there
    (``rebuild``: export the artefact again, e.g. after a change to the generator)."""
    import torch

    from data_pipeline.bundle import Bundle
    from data_pipeline.prep import PrepConfig, prepare
    from data_pipeline.sessions import SessionConfig
    from data_pipeline.sources.synthetic import SyntheticConfig
    from onerec.checkpoint import BEST, build_model, save_atomic, save_run_config, session_length_of
    from onerec.config import ModelConfig, MoEConfig, TrainConfig
    from onerec.export import ExportConfig, export_run

    from data_pipeline.bundle import BundleError

    bundle_dir, run_dir, artefact_dir = work / "bundle", work / "run", work / "artefact"
    try:
        Bundle.open(bundle_dir)
    except BundleError as err:  # absent, or made by an older data pipeline: start over
        if bundle_dir.exists():
            print(f"[bench] rebuilding everything: {err}", flush=True)
        for stale in (bundle_dir, run_dir, artefact_dir):
            shutil.rmtree(stale, ignore_errors=True)
    if not (bundle_dir / "manifest.json").is_file():
        print(f"[bench] preparing a synthetic bundle in {bundle_dir}", flush=True)
        prepare(PrepConfig(data=SyntheticConfig(), out_dir=str(bundle_dir),
                           sessions=SessionConfig(target_items=NUM_ITEMS), show_progress=False))
    if not (run_dir / BEST).is_file():
        print(f"[bench] saving a randomly initialised small model in {run_dir}", flush=True)
        cfg = TrainConfig(data_dir=str(bundle_dir), run_dir=str(run_dir), model=ModelConfig(), moe=MoEConfig())
        bundle = Bundle.open(bundle_dir)
        torch.manual_seed(0)
        model = build_model(cfg, bundle, session_length_of(cfg, bundle))
        save_run_config(cfg, run_dir)
        save_atomic({"model": model.state_dict()}, run_dir / BEST)
    if rebuild:
        shutil.rmtree(artefact_dir, ignore_errors=True)
    if not (artefact_dir / "manifest.json").is_file():
        print(f"[bench] exporting to {artefact_dir} (TorchScript, then torch.export + AOTInductor: minutes)", flush=True)
        start = time.perf_counter()
        export_run(ExportConfig(run_dir=str(run_dir), out_dir=str(artefact_dir), beam_size=BEAM_SIZE,
                                aoti=True, aoti_num_items=[NUM_ITEMS], overwrite=True))
        print(f"[bench] exported in {time.perf_counter() - start:.0f} s", flush=True)
    return artefact_dir


def catalogue(artefact: Path) -> list[str]:
    import polars as pl

    return [str(i) for i in pl.read_parquet(artefact / "items.parquet")["item_id"].to_list()]


# ---------------------------------------------------------------------------------------
# One server per runtime.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m serving artefact=... runtime=...`` on a free loopback port."""

    def __init__(self, artefact: Path, runtime: str, log_file: Path, overrides: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        command = [sys.executable, "-m", "serving", f"artefact={artefact}", f"runtime={runtime}",
                   "host=127.0.0.1", f"port={self.port}", "log_level=warning", *overrides]
        self._log = open(log_file, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the server was not ready within {timeout_s} s; see {self.log_file}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def payloads(item_ids: list[str], seed: int = 0) -> Any:
    """Request ``i``: 50 distinct known items (deterministic in ``i``), 5 items asked for."""

    def factory(index: int) -> dict[str, Any]:
        rng = random.Random(seed * 1_000_003 + index)
        return {"history": rng.sample(item_ids, HISTORY_LENGTH), "num_items": NUM_ITEMS}

    return factory


def bench_runtime(
    artefact: Path, variant: str, item_ids: list[str], levels: list[int], duration_s: float, work: Path,
    overrides: list[str],
) -> dict[int, LoadReport]:
    runtime, extra = VARIANTS[variant]
    server = ServerProcess(artefact, runtime, work / f"server_{variant}.log", [*overrides, *extra])
    try:
        server.wait_ready()
        url = server.url + "/v1/recommend"
        # Warm-up: TorchScript's profiling executor optimises on the first calls of each shape.
        run_load(url, payloads(item_ids, seed=99), concurrency=max(levels), total_requests=8 * max(levels))
        run_load(url, payloads(item_ids, seed=98), concurrency=1, total_requests=10)
        reports: dict[int, LoadReport] = {}
        for level in levels:
            report = run_load(url, payloads(item_ids, seed=level), concurrency=level, duration_s=duration_s)
            bad = {k: v for k, v in report.status_counts.items() if k != "200"}
            if bad:
                raise RuntimeError(f"{variant} at concurrency {level}: non-200 answers {bad}; see {server.log_file}")
            reports[level] = report
            print(f"[bench] {variant:<15} c={level:<3} p50 {report.latency_ms['p50']:7.1f} ms  "
                  f"p99 {report.latency_ms['p99']:7.1f} ms  {report.requests_per_s:7.1f} req/s", flush=True)
        return reports
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# The table.


def format_table(results: dict[str, dict[int, LoadReport]]) -> str:
    levels = sorted({level for reports in results.values() for level in reports})
    head = f"{'runtime':<16}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'p50 vs eager':>14}{'req/s vs eager':>16}"
    lines = [head, "-" * len(head)]
    eager = results.get("eager", {})
    for runtime, reports in results.items():
        for level in levels:
            r = reports[level]
            p50, p99 = r.latency_ms["p50"] or 0.0, r.latency_ms["p99"] or 0.0
            base = eager.get(level)
            speed = f"{(base.latency_ms['p50'] or 0.0) / p50:.2f}x" if base and p50 else "-"
            rate = f"{r.requests_per_s / base.requests_per_s:.2f}x" if base and base.requests_per_s else "-"
            lines.append(f"{runtime:<16}{level:>5}{p50:>9.1f}{p99:>9.1f}{r.requests_per_s:>9.1f}{speed:>14}{rate:>16}")
    return "\n".join(lines)


def format_targets(results: dict[str, dict[int, LoadReport]]) -> str:
    lines = []
    eager = results.get("eager", {})
    for runtime, reports in results.items():
        parts = []
        if 1 in reports:
            p99 = reports[1].latency_ms["p99"] or 0.0
            parts.append(f"p99 at c=1 {p99:.1f} ms ({'met' if p99 < 50 else 'MISSED'}: < 50 ms)")
        if 16 in reports and 16 in eager and eager[16].requests_per_s:
            ratio = reports[16].requests_per_s / eager[16].requests_per_s
            parts.append(f"throughput at c=16 {ratio:.2f}x eager ({'met' if ratio >= 2 else 'MISSED'}: >= 2x)")
        lines.append(f"{runtime:<16}" + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="bench_out/serving", help="bundle, run, artefact and server logs")
    parser.add_argument("--runtimes", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per concurrency level")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--rebuild", action="store_true", help="export the artefact again (minutes)")
    parser.add_argument("serve_overrides", nargs="*", help="extra onerec-serve overrides, e.g. max_batch_size=16")
    args = parser.parse_args(argv)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    artefact = build_artefact(work, rebuild=args.rebuild)
    manifest = json.loads((artefact / "manifest.json").read_text())
    item_ids = catalogue(artefact)
    print(f"[bench] artefact {artefact} model_version={manifest['model_version']} items={len(item_ids)} "
          f"beam={manifest['beam_size']} exported {manifest['created']}, aoti compile {manifest['timings'].get('aoti_compile_s')} s; "
          f"cpus={os.cpu_count()}", flush=True)

    results: dict[str, dict[int, LoadReport]] = {}
    for variant in args.runtimes:
        results[variant] = bench_runtime(artefact, variant, item_ids, args.concurrency, args.duration, work,
                                         args.serve_overrides)
    print()
    print(f"small model, history {HISTORY_LENGTH}, beam {BEAM_SIZE}, {NUM_ITEMS} items; "
          f"{args.duration:.0f} s per level; server: conf/serve.yaml {' '.join(args.serve_overrides)}")
    print(format_table(results))
    print(format_targets(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {rt: {str(c): r.to_dict() for c, r in reports.items()} for rt, reports in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
