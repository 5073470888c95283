"""Which way of writing the search's small kernels Inductor compiles fastest (CPU, one thread).

The AOTInductor programs are compiled from :func:`onerec.export.aoti_generator`, which writes
two pieces of the decoder differently from eager (same maths, checked here and in the tests):

- the decoding steps' self-attention (one or two queries per row over a short KV cache) as a
  broadcast product and sums instead of ``scaled_dot_product_attention``;
- the experts' GELU (tanh form) as ``x * sigmoid(2 u)`` instead of ``tanh``.

Cross-attention (16 or 32 queries per user over 51 memory keys) is timed too, as the form that
stayed on SDPA. Each form is compiled with ``torch.compile`` (the same Inductor C++ kernels as
AOTInductor, plus its Python call overhead, which is in every number) and timed in turn with
the others, call after call::

    python -m benchmarks.bench_compiled_forms [--repeats 300]

Shapes are the ``small`` model's at a batch of 8 users x beam 16 (128 rows, 4 heads of 32).
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.bench_moe_inference import interleaved_medians
from onerec.export import gelu_through_sigmoid
from onerec.modules.moe import expert_activation
from onerec.modules.attention import broadcast_attention


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=300)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    torch._inductor.config.cpp.threads = 1  # as the AOTInductor programs (onerec.export.AOTI_OPTIONS)
    torch.manual_seed(0)
    attention = {"sdpa": torch.compile(sdpa), "broadcast": torch.compile(broadcast_attention)}
    cases = {
        "self-attention, 1 query over 12 cached keys": ((128, 4, 1, 32), (128, 4, 12, 32), False),
        "self-attention, 1 query over 22 cached keys": ((128, 4, 1, 32), (128, 4, 22, 32), False),
        "cross-attention, 16 queries over 51 keys": ((8, 4, 16, 32), (8, 4, 51, 32), True),
    }
    with torch.no_grad():
        for name, (q_shape, k_shape, padded) in cases.items():
            q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(k_shape)
            mask = None
            if padded:  # 40 real keys of 51, as a history shorter than the longest in the batch
                mask = (torch.arange(k_shape[2]) < 40)[None, None, None, :].expand(k_shape[0], 1, 1, k_shape[2]).contiguous()
            expected = sdpa(q, k, v, mask)
            for fn in attention.values():
                torch.testing.assert_close(fn(q, k, v, mask), expected, rtol=1e-4, atol=1e-5)
            us = interleaved_medians({n: (lambda fn=fn: fn(q, k, v, mask)) for n, fn in attention.items()}, cli.repeats)
            print(f"{name:<46} sdpa {us['sdpa']:6.0f} us  broadcast {us['broadcast']:6.0f} us  "
                  f"sdpa/broadcast {us['sdpa'] / us['broadcast']:.2f}", flush=True)
        x = torch.randn(256, 256) * 3
        gelu = {"tanh": torch.compile(expert_activation), "sigmoid": torch.compile(gelu_through_sigmoid)}
        gap = (gelu["tanh"](x) - gelu["sigmoid"](x)).abs().max().item()
        us = interleaved_medians({n: (lambda fn=fn: fn(x)) for n, fn in gelu.items()}, cli.repeats)
        print(f"{'expert GELU, 256 x 256':<46} tanh {us['tanh']:6.0f} us  sigmoid   {us['sigmoid']:6.0f} us  "
              f"tanh/sigmoid   {us['tanh'] / us['sigmoid']:.2f}  (max difference {gap:.1e})", flush=True)


if __name__ == "__main__":
    main()
