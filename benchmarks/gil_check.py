"""Does a runtime release the GIL while it computes? TorchScript vs AOTInductor, in-process.

A worker thread runs one model call while the main thread counts in a Python loop. A runtime
that releases the GIL lets the counter run at full speed; one that keeps it starves the
counter, and on a server it also starves the HTTP event loop and the other worker threads.
AOTInductor is timed twice: through torch's loader (``load_package``) and through
:mod:`onerec.aoti_runner` (what the server uses). Then two threads call the same runtime at
once: a runtime that releases the GIL finishes both in about the time of one (2 cores).

    python -m benchmarks.gil_check [--artefact bench_out/serving/artefact] [--batch 16]

Prints, per runtime, the call's time and the main thread's loop iterations per millisecond
during it, against the same loop with no call running.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from benchmarks.bench_runtime_batch import random_histories
from onerec.artefact import load_artefact
from serving.model_backend import _TorchScriptRuntime


def count_while(work) -> tuple[float, float]:
    """Run ``work`` in a thread; return (its seconds, main-thread loop iterations per ms)."""
    done = threading.Event()
    seconds: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
        done.set()

    thread = threading.Thread(target=run)
    count = 0
    thread.start()
    while not done.is_set():
        count += 1
    thread.join()
    return seconds[0], count / (seconds[0] * 1e3)


def two_at_once(work) -> float:
    """Seconds for two threads each running ``work`` once, started together."""
    threads = [threading.Thread(target=work) for _ in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artefact", default="bench_out/serving/artefact")
    parser.add_argument("--batch", type=int, default=16)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    art = load_artefact(cli.artefact)
    history, lengths, features = random_histories(art.num_items, cli.batch, seed=0)
    _, idle_rate = count_while(lambda: time.sleep(0.2))
    print(f"batch {cli.batch}; main-thread loop with no model call running: {idle_rate:,.0f} iterations/ms")
    exclude = torch.full((cli.batch, 1), -1, dtype=torch.long)
    scripted = _TorchScriptRuntime(art)
    torch_loader = art.load_aoti(5, num_runners=2, gil_free=False)
    gil_free = art.load_aoti(5, num_runners=2)
    calls = {
        "torchscript": lambda: scripted.generate(history, lengths, features, 5, None),
        "aoti (torch's loader)": lambda: torch_loader(history, lengths, features, exclude),
        "aoti (GIL-free)": lambda: gil_free(history, lengths, features, exclude),
    }
    for name, call in calls.items():
        call()  # warm-up
        seconds, rate = count_while(call)
        both = two_at_once(call)
        print(f"{name:<22} call {seconds * 1e3:6.0f} ms; main thread meanwhile {rate:>9,.0f} iterations/ms "
              f"({rate / idle_rate:.0%} of idle); two threads at once {both * 1e3:6.0f} ms", flush=True)


if __name__ == "__main__":
    main()
