"""Forward + backward time of the dropless MoE layer: sorted/grouped expert compute vs
the dense per-expert reference, in one process on the same weights.

Run from the repository root (well under a minute on two CPU cores)::

    python -m benchmarks.bench_moe [--iters 3] [--device cpu]

Prints one row per (size, implementation): median ms/iter and the speed-up over the
dense reference (E / k times the FLOPs of the sparse paths).
"""

import argparse
import dataclasses
import statistics
import time
from typing import Callable, List, Tuple

import torch

from onerec.modules.moe import MoEArguments, dMoE, grouped_mm_supported, reference_moe_forward

# (tokens, hidden): ffn = 4 * hidden, E = 8, k = 2.
SIZES: List[Tuple[int, int]] = [(4096, 128), (4096, 256)]
NUM_EXPERTS = 8
TOP_K = 2


def _time_ms(step: Callable[[], None], iters: int, device: torch.device) -> float:
    """Median wall time of ``step`` in ms after one warm-up call."""
    step()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _bench_size(tokens: int, hidden: int, iters: int, device: torch.device) -> List[Tuple[str, float]]:
    args = MoEArguments(
        hidden_size=hidden,
        ffn_hidden_size=4 * hidden,
        moe_num_experts=NUM_EXPERTS,
        moe_top_k=TOP_K,
    )
    torch.manual_seed(0)
    x = torch.randn(tokens, hidden, device=device, requires_grad=True)  # (T, D)
    rows: List[Tuple[str, float]] = []

    impls = ["loop"]
    if grouped_mm_supported(device, x.dtype, hidden, 4 * hidden):
        impls.insert(0, "grouped_mm")
    layer = None
    for impl in impls:
        layer = dMoE(dataclasses.replace(args, grouped_impl=impl)).to(device)

        def sparse_step(layer: dMoE = layer) -> None:
            y, lbl = layer(x)
            (y.square().mean() + lbl).backward()

        rows.append((f"dMoE {impl}", _time_ms(sparse_step, iters, device)))

    assert layer is not None
    mlp = layer.experts

    def dense_step() -> None:
        y, _, _ = reference_moe_forward(
            x, layer.router.layer.weight, mlp.mlp.w1, mlp.mlp.w2, mlp.bias, TOP_K
        )
        y.square().mean().backward()

    rows.append(("dense reference", _time_ms(dense_step, iters, device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per row")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    cli = parser.parse_args()
    device = torch.device(cli.device)

    print(
        f"torch {torch.__version__}, device={device}, threads={torch.get_num_threads()}, "
        f"E={NUM_EXPERTS}, k={TOP_K}, ffn=4*hidden, forward+backward, median of {cli.iters}"
    )
    print(f"{'tokens':>6} {'hidden':>6}  {'impl':<18} {'ms/iter':>9} {'vs dense':>9}")
    for tokens, hidden in SIZES:
        rows = _bench_size(tokens, hidden, cli.iters, device)
        dense_ms = rows[-1][1]
        for name, ms in rows:
            print(f"{tokens:>6} {hidden:>6}  {name:<18} {ms:>9.1f} {dense_ms / ms:>8.2f}x")


if __name__ == "__main__":
    main()
