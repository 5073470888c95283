"""Page faults and time per model call with glibc's malloc defaults vs the server's setting.

``onerec-serve`` raises glibc's mmap and trim thresholds at start-up (``malloc_keep_mb``,
:mod:`serving.allocator`) so that a call's buffers stay mapped for the next call. This
measures what that buys for one runtime, in-process (no server): each measurement is a fresh
child process (the thresholds cannot be put back once set), alternating default / kept, that
loads the artefact and times ``--calls`` calls on each of ``--workers`` threads calling at
once (as the server's batcher workers do), with the minor page faults they cause.

Run from the repository root after ``python -m benchmarks.bench_serving`` has built its
artefact::

    python -m benchmarks.bench_malloc [--artefact bench_out/serving/artefact] [--runtime aoti]
        [--batch 8] [--workers 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

from benchmarks.bench_runtime_batch import SESSION_ITEMS, random_histories


def measure(artefact: str, runtime: str, batch: int, calls: int, workers: int, keep_mb: int) -> dict[str, float]:
    """One child's measurement: ms per call (each worker's calls, averaged over workers) and
    minor faults per call, after one warm-up call per worker."""
    import torch

    from onerec.artefact import load_artefact
    from serving.allocator import keep_freed_memory
    from serving.model_backend import _AotiRuntime, _TorchScriptRuntime

    keep_freed_memory(keep_mb)
    torch.set_num_threads(1)
    art = load_artefact(artefact)
    model = _AotiRuntime(art, workers) if runtime == "aoti" else _TorchScriptRuntime(art)
    history, lengths, features = random_histories(art.num_items, batch, seed=batch)
    warm = threading.Barrier(workers + 1)
    go = threading.Barrier(workers + 1)
    seconds: list[float] = []

    def run() -> None:  # on worker threads, like the server's batcher
        with torch.no_grad():
            model.generate(history, lengths, features, SESSION_ITEMS, None)
            warm.wait()
            go.wait()
            start = time.perf_counter()
            for _ in range(calls):
                model.generate(history, lengths, features, SESSION_ITEMS, None)
            seconds.append(time.perf_counter() - start)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    warm.wait()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    go.wait()
    for thread in threads:
        thread.join()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": statistics.mean(seconds) / calls * 1e3, "faults": faults / (calls * workers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artefact", default="bench_out/serving/artefact")
    parser.add_argument("--runtime", default="aoti", choices=["aoti", "torchscript"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=8, help="timed calls per worker")
    parser.add_argument("--workers", type=int, default=2, help="threads calling at once (conf/serve.yaml's num_workers)")
    parser.add_argument("--rounds", type=int, default=4, help="child processes per setting, alternating")
    parser.add_argument("--keep-mb", type=int, default=1024, help="the kept setting (conf/serve.yaml's malloc_keep_mb)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child is not None:
        print(json.dumps(measure(cli.artefact, cli.runtime, cli.batch, cli.calls, cli.workers, cli.child)))
        return
    settings = {"glibc defaults": 0, f"keep {cli.keep_mb} MB": cli.keep_mb}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(cli.rounds):
        for name, keep_mb in settings.items():
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_malloc", "--artefact", cli.artefact, "--runtime", cli.runtime,
                 "--batch", str(cli.batch), "--calls", str(cli.calls), "--workers", str(cli.workers),
                 "--child", str(keep_mb)],
                check=True, capture_output=True, text=True,
            ).stdout
            samples[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{cli.runtime}, batch {cli.batch}, {cli.calls} calls on each of {cli.workers} worker threads at once, "
          f"{cli.rounds} processes per setting (medians)")
    ms = {}
    for name, runs in samples.items():
        ms[name] = statistics.median(r["ms"] for r in runs)
        faults = statistics.median(r["faults"] for r in runs)
        each = " ".join(f"{r['ms']:.0f}" for r in runs)
        print(f"{name:<16} {ms[name]:7.1f} ms per call ({each})  {faults:8.0f} minor faults per call")
    default, kept = ms.values()
    print(f"defaults / kept: {default / kept:.2f}x")


if __name__ == "__main__":
    main()
