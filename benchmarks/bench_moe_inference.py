"""The serving MoE's two paths in TorchScript: dense (every expert on every row) vs sorted per expert.

:class:`onerec.export.DenseMoE` computes the decoder's mixture of experts either densely (two
matmuls over all E experts, weighted by the router's top-k: E / k times the FLOPs, no
data-dependent shapes) or sorted (each expert on its own rows). This prints both, scripted,
on one thread, by number of rows (a beam-search step has batch × beam rows), and the ratio;
``onerec.export.TORCHSCRIPT_SPARSE_MIN_ROWS`` is chosen from it.

    python -m benchmarks.bench_moe_inference [--rows 16 32 64 128 256 512] [--threads 1]

The layer is the ``small`` model's (d_model 128, 4 experts of 256, top-2), randomly initialised.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from onerec.export import DenseMoE
from onerec.modules.moe import MoEArguments, dMoE


def median_us(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    layer = dMoE(MoEArguments(hidden_size=128, ffn_hidden_size=256, moe_num_experts=4, moe_top_k=2)).eval()
    dense = torch.jit.script(DenseMoE(layer, sparse_min_rows=0))
    sorted_ = torch.jit.script(DenseMoE(layer, sparse_min_rows=1))
    print(f"TorchScript, {cli.threads} thread(s), d_model 128, 4 experts x 256, top-2; median of {cli.repeats}")
    with torch.no_grad():
        for rows in cli.rows:
            x = torch.randn(rows, 128)
            torch.testing.assert_close(dense(x)[0], sorted_(x)[0], rtol=1e-4, atol=1e-5)
            d = median_us(lambda: dense(x), cli.repeats)
            s = median_us(lambda: sorted_(x), cli.repeats)
            print(f"rows {rows:>4}: dense {d:8.0f} us  sorted {s:8.0f} us  dense/sorted {d / s:.2f}", flush=True)


if __name__ == "__main__":
    main()
