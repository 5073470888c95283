"""Cost of one model call by batch size, TorchScript vs AOTInductor, in-process (no server).

Tells whether batching can raise a CPU server's throughput: if a call's time grows nearly
linearly with its batch, batching saves overhead, not compute. With ``--baseline`` it also
times a second artefact (e.g. one exported by an earlier version of the generator) in the
same loop, for before/after ratios.

Run from the repository root after ``python -m benchmarks.bench_serving`` has built its
artefact (or point ``--artefact`` at any artefact exported with AOTInductor)::

    python -m benchmarks.bench_runtime_batch [--artefact bench_out/serving/artefact]
        [--baseline OTHER_ARTEFACT] [--threads 1] [--repeats 5]

Every runtime is called in turn, round after round, so that a slow spell of the machine
hits all of them alike; prints the median per batch size (random histories of 50 items,
5-item sessions).
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


def random_histories(num_items: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` full histories of ``HISTORY`` random items of a catalogue of ``num_items``:
    ``history [B, HISTORY]``, ``lengths [B]`` and no user features, ``[B, 0]``."""
    history = torch.randint(0, num_items, (batch, HISTORY), generator=torch.Generator().manual_seed(seed))
    return history, torch.full((batch,), HISTORY), torch.zeros((batch, 0), dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artefact", default="bench_out/serving/artefact")
    parser.add_argument("--baseline", default=None, help="a second artefact, timed in the same loop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    runtimes = {}
    num_items = 0
    for label, path in (("", cli.artefact), ("baseline ", cli.baseline)):
        if path is None:
            continue
        art = load_artefact(path)
        num_items = num_items or art.num_items  # the measured artefact's catalogue
        runtimes[f"{label}torchscript"] = _TorchScriptRuntime(art)
        runtimes[f"{label}aoti"] = _AotiRuntime(art, 1)
        print(f"{label or 'artefact '}{path}: beam {art.beam_size}, threads {cli.threads}, "
              f"history {HISTORY}, {SESSION_ITEMS} items")
    for b in cli.batches:
        history, lengths, features = random_histories(num_items, b, seed=b)
        samples: dict[str, list[float]] = {name: [] for name in runtimes}
        with torch.no_grad():
            for runtime in runtimes.values():
                runtime.generate(history, lengths, features, SESSION_ITEMS, None)  # warm-up
            for _ in range(cli.repeats):
                for name, runtime in runtimes.items():
                    start = time.perf_counter()
                    runtime.generate(history, lengths, features, SESSION_ITEMS, None)
                    samples[name].append((time.perf_counter() - start) * 1e3)
        ms = {name: statistics.median(values) for name, values in samples.items()}
        line = f"batch {b:>3}: " + "  ".join(f"{name} {value:7.1f} ms" for name, value in ms.items())
        line += f"  torchscript/aoti {ms['torchscript'] / ms['aoti']:.2f}"
        if cli.baseline:
            line += (f"  speed-up vs baseline: torchscript {ms['baseline torchscript'] / ms['torchscript']:.2f}x"
                     f" aoti {ms['baseline aoti'] / ms['aoti']:.2f}x")
        print(line, flush=True)


if __name__ == "__main__":
    main()
