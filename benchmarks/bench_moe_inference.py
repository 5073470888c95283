"""The serving MoE's two paths: dense (every expert on every row) vs per expert (each on its rows).

:class:`onerec.export.DenseMoE` computes the decoder's mixture of experts either densely (two
matmuls over all E experts, weighted by the router's top-k: E / k times the FLOPs, no
data-dependent shapes) or per expert (each expert's rows gathered and run through its own
matmuls). This prints both by number of rows (a beam-search step has batch × beam rows), one
thread, in TorchScript and, with ``--aoti``, compiled by AOTInductor (about a minute of C++
per path); ``onerec.export.TORCHSCRIPT_SPARSE_MIN_ROWS`` and ``AOTI_SPARSE_MIN_ROWS`` are
chosen from it.

    python -m benchmarks.bench_moe_inference [--rows 16 32 64 128 256 512] [--threads 1] [--aoti]

The layer is the ``small`` model's (d_model 128, 4 experts of 256, top-2), randomly initialised.
Both paths of a runtime are timed in turn, call after call, so a slow spell hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from onerec.export import AOTI_OPTIONS, DenseMoE
from onerec.modules.moe import MoEArguments, dMoE


class _OutputOnly(nn.Module):
    """The layer's output alone (what an exported program returns)."""

    def __init__(self, moe: DenseMoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: Tensor) -> Tensor:
        return self.moe(x)[0]


def compiled(layer: DenseMoE, workdir: Path, name: str) -> Callable[[Tensor], Tensor]:
    """torch.export (dynamic rows) + AOTInductor of ``layer``, loaded GIL-free."""
    from torch._inductor import aot_compile
    from torch._inductor.package import package_aoti

    from onerec.aoti_runner import load_gil_free

    example = torch.randn(64, layer.hidden_size)
    program = torch.export.export(
        _OutputOnly(layer).eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}}, strict=False
    )
    files = aot_compile(program.module(), (example,), {}, options={**AOTI_OPTIONS, "aot_inductor.package": True})
    path = workdir / f"{name}.pt2"
    package_aoti(str(path), {name: files})
    runner = load_gil_free(path, name)
    assert runner is not None
    return lambda x: runner(x)[0]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median microseconds of each function, called in turn ``repeats`` times after a warm-up."""
    for fn in fns.values():
        for _ in range(10):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--aoti", action="store_true", help="also compile both paths with AOTInductor")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    layer = dMoE(MoEArguments(hidden_size=128, ffn_hidden_size=256, moe_num_experts=4, moe_top_k=2)).eval()
    dense, per_expert = DenseMoE(layer, sparse_min_rows=0).eval(), DenseMoE(layer, sparse_min_rows=1).eval()
    runtimes: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {}
    scripted_dense, scripted_sparse = torch.jit.script(dense), torch.jit.script(per_expert)
    runtimes["TorchScript"] = (lambda x: scripted_dense(x)[0], lambda x: scripted_sparse(x)[0])
    workdir = Path(tempfile.mkdtemp(prefix="bench-moe-"))
    if cli.aoti:
        print("[bench] compiling both paths with AOTInductor (about a minute each)", flush=True)
        runtimes["AOTInductor"] = (compiled(dense, workdir, "dense"), compiled(per_expert, workdir, "per_expert"))
    print(f"{cli.threads} thread(s), d_model 128, 4 experts x 256, top-2; median of {cli.repeats}")
    with torch.no_grad():
        for name, (run_dense, run_sparse) in runtimes.items():
            for rows in cli.rows:
                x = torch.randn(rows, 128)
                expected, _ = layer(x)
                torch.testing.assert_close(run_dense(x), expected, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(run_sparse(x), expected, rtol=1e-4, atol=1e-5)
                us = interleaved_medians({"dense": lambda: run_dense(x), "per_expert": lambda: run_sparse(x)}, cli.repeats)
                print(f"{name:<12} rows {rows:>4}: dense {us['dense']:8.0f} us  per expert {us['per_expert']:8.0f} us  "
                      f"dense/per-expert {us['dense'] / us['per_expert']:.2f}", flush=True)


if __name__ == "__main__":
    main()
