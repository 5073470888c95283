"""Cost of one model call by batch size, TorchScript vs AOTInductor, in-process (no server).

Tells whether batching can raise a CPU server's throughput: if a call's time grows nearly
linearly with its batch, batching saves overhead, not compute.

Run from the repository root after ``python -m benchmarks.bench_serving`` has built its
artefact (or point ``--artefact`` at any artefact exported with AOTInductor)::

    python -m benchmarks.bench_runtime_batch [--artefact bench_out/serving/artefact] [--threads 1]

Prints the median of 5 calls per batch size (random histories of 50 items, 5-item sessions).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from onerec.artefact import load_artefact
from serving.model_backend import _AotiRuntime, _TorchScriptRuntime

HISTORY = 50
SESSION_ITEMS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artefact", default="bench_out/serving/artefact")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    art = load_artefact(cli.artefact)
    runtimes = {"torchscript": _TorchScriptRuntime(art), "aoti": _AotiRuntime(art, 1)}
    print(f"{cli.artefact}: beam {art.beam_size}, threads {cli.threads}, history {HISTORY}, {SESSION_ITEMS} items")
    for b in cli.batches:
        gen = torch.Generator().manual_seed(b)
        history = torch.randint(0, art.num_items, (b, HISTORY), generator=gen)
        lengths = torch.full((b,), HISTORY)
        features = torch.zeros((b, 0), dtype=torch.long)
        ms = {}
        for name, runtime in runtimes.items():
            runtime.generate(history, lengths, features, SESSION_ITEMS, None)  # warm-up
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                runtime.generate(history, lengths, features, SESSION_ITEMS, None)
                samples.append((time.perf_counter() - start) * 1e3)
            ms[name] = statistics.median(samples)
        print(f"batch {b:>3}: torchscript {ms['torchscript']:7.1f} ms  aoti {ms['aoti']:7.1f} ms  "
              f"torchscript/aoti {ms['torchscript'] / ms['aoti']:.2f}", flush=True)


if __name__ == "__main__":
    main()
