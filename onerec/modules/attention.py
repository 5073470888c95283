"""Multi-head attention on torch's fused ``scaled_dot_product_attention``.

Keys and values are projected separately from queries so that a decoder can project the
encoder's memory once per generation and grow a self-attention KV cache step by step.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """Args:
        d_model: model width D.
        num_heads: H; each head has D / H dimensions.
        dropout: attention-probability dropout (training only).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        # Inference only (see attend_cached): set by onerec.export for the AOTInductor programs.
        self.broadcast_cached: bool = False
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, source: Tensor) -> Tuple[Tensor, Tensor]:
        """``source [B, S, D]`` → keys and values ``[B, H, S, Dh]``."""
        k, v = self.key_value(source).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def attend(self, x: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor], is_causal: bool) -> Tensor:
        """Queries from ``x [B, T, D]`` over ``keys/values [B, H, S, Dh]``.

        Args:
            mask: bool, broadcastable to ``[B, H, T, S]``; True = may attend.
            is_causal: token t attends to keys 0..t only (T == S).
        """
        q = self._split(self.query(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self._merge(y)

    def _merge(self, y: Tensor) -> Tensor:
        """Per-head outputs ``[B, H, T, Dh]`` → the output projection of their concatenation, ``[B, T, D]``."""
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def attend_cached(self, x: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Queries of a few new tokens, ``x [B, T, D]``, over a KV cache ``[B, H, S, Dh]``.

        :meth:`attend`, or, with ``broadcast_cached``, the same attention written as a
        broadcast product and sums (``[B, H, T, S, Dh]`` never materialised once compiled):
        for one or two queries per row over a short cache, Inductor fuses that into a
        couple of loops, about half the time of its SDPA kernel there (128 rows, 4 heads,
        12 / 22 keys, torch.compile: 206 / 188 us vs 559 / 353 us, ``python -m
        benchmarks.bench_compiled_forms``). Eager and TorchScript keep SDPA (they would
        materialise the product).

        Args:
            mask: bool, broadcastable to ``[B, H, T, S]``; True = may attend.
        """
        if not self.broadcast_cached:
            return self.attend(x, keys, values, mask, False)
        return self._merge(broadcast_attention(self._split(self.query(x)), keys, values, mask))

    def attend_beams(self, x: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor], beams: int) -> Tensor:
        """Queries of ``beams`` beams per source row over that row's keys, read once.

        A beam search keeps ``beams`` hypotheses per user, all attending to the same encoder
        memory. Rather than repeating the memory per beam (``beams`` times the memory reads
        at every step), the beams of a user become ``beams * T`` queries of one attention
        call: the same result, 1/beams of the key/value traffic.

        Args:
            x: ``[B * beams, T, D]``, rows ``b * beams .. b * beams + beams - 1`` are row
                ``b``'s beams.
            keys / values: ``[B, H, S, Dh]``.
            mask: bool ``[B, 1, 1, S]`` or None; True = may attend.
        """
        n, t, d = x.shape
        # Projections act per token, so a user's beams are just more query rows of its own.
        return self.attend(x.reshape(n // beams, beams * t, d), keys, values, mask, False).view(n, t, d)

    def forward(self, x: Tensor, source: Tensor, mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        keys, values = self.project_kv(source)
        return self.attend(x, keys, values, mask, is_causal)


def broadcast_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Scaled dot-product attention as a broadcast product and sums, for few queries.

    ``q [B, H, T, Dh]`` over ``keys / values [B, H, S, Dh]`` → ``[B, H, T, Dh]``; ``mask``
    bool, broadcastable to ``[B, H, T, S]``, True = may attend. The same values as
    ``scaled_dot_product_attention``; see :meth:`MultiHeadAttention.attend_cached` for when.
    """
    q = q * (q.shape[-1] ** -0.5)
    scores = (q[:, :, :, None, :] * keys[:, :, None, :, :]).sum(-1)  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, -float("inf"))
    weights = scores.softmax(-1)
    return (weights[:, :, :, :, None] * values[:, :, None, :, :]).sum(3)  # (B, H, T, Dh)


def key_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``lengths [B]`` → bool ``[B, 1, 1, max_len]``, True on real (non-padded) keys."""
    positions = torch.arange(max_len, device=lengths.device)
    return (positions[None, :] < lengths[:, None])[:, None, None, :]
