"""The session decoder: causal self-attention, cross-attention to the history, sparse MoE.

Training runs the whole teacher-forced session at once (:meth:`SessionDecoder.forward`);
generation runs a few tokens at a time with a self-attention KV cache and cross-attention
keys projected once per user and shared by the user's beams (:meth:`SessionDecoder.step`).
Both paths share every weight, and a test checks that stepping reproduces the full forward
pass.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from onerec.modules.attention import MultiHeadAttention
from onerec.modules.moe import MoEArguments, build_moe


class DecoderLayer(nn.Module):
    """Pre-norm block: self-attention, cross-attention, mixture-of-experts FFN."""

    def __init__(self, d_model: int, num_heads: int, moe_args: MoEArguments, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.moe = build_moe(moe_args)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory_k: Tensor, memory_v: Tensor, memory_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """``x [B, T, D]``; memory keys/values ``[B, H, S, Dh]``; ``memory_mask [B, 1, 1, S]``.

        Returns the new ``x`` and this layer's load-balancing loss (a scalar).
        """
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attn(h, h, None, True))
        h = self.cross_norm(x)
        x = x + self.dropout(self.cross_attn.attend(h, memory_k, memory_v, memory_mask, False))
        h, balance_loss = self.moe(self.ffn_norm(x))
        return x + self.dropout(h), balance_loss

    def step(
        self,
        x: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        memory_k: Tensor,
        memory_v: Tensor,
        memory_mask: Tensor,
        self_mask: Optional[Tensor],
        beams: int,
        last_only: bool = False,
        cache_rows: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """New tokens ``x [N, T, D]`` given cached keys/values ``[M, H, t, Dh]``.

        ``N = B * beams`` sequences whose memory ``[B, H, S, Dh]`` (mask ``[B, 1, 1, S]``) is
        shared by each group of ``beams`` consecutive rows. ``self_mask`` (bool, broadcastable
        to ``[N, H, T, t + T]``) is required when ``T > 1``: new token i sees the cache and new
        tokens 0..i. ``cache_rows [N]``: the cache row each sequence continues (a beam
        search's reorder; None: row n, M = N). Returns the new ``x`` and the caches grown to
        ``[N, H, t + T, Dh]``; with ``last_only`` the new ``x`` is the last token's alone,
        ``[N, 1, D]`` (the others still add their keys and values to the cache).
        """
        h = self.self_norm(x)
        k, v = self.self_attn.project_kv(h)
        if cache_rows is not None:
            # Gathered here, feeding the concatenation alone: compiled, the reorder and the
            # append become one copy of the cache per step instead of two.
            self_k = self_k.index_select(0, cache_rows)
            self_v = self_v.index_select(0, cache_rows)
        self_k = torch.cat([self_k, k], dim=2)
        self_v = torch.cat([self_v, v], dim=2)
        if last_only and x.shape[1] > 1:
            # The last token sees every key, so no mask: attention, cross-attention and the
            # experts run on one token instead of T.
            x = x[:, -1:]
            h = h[:, -1:]
            self_mask = None
        x = x + self.self_attn.attend_cached(h, self_k, self_v, self_mask)
        h = self.cross_norm(x)
        x = x + self.cross_attn.attend_beams(h, memory_k, memory_v, memory_mask, beams)
        h, _ = self.moe(self.ffn_norm(x))
        return x + h, self_k, self_v


class SessionDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` and a final LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, num_layers: int, moe_args: MoEArguments, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.layers = nn.ModuleList([DecoderLayer(d_model, num_heads, moe_args, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def memory_kv(self, memory: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Cross-attention keys and values of every layer, ``[B, H, S, Dh]`` each."""
        keys: List[Tensor] = []
        values: List[Tensor] = []
        for layer in self.layers:
            k, v = layer.cross_attn.project_kv(memory)
            keys.append(k)
            values.append(v)
        return keys, values

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Teacher-forced pass: ``x [B, T, D]``, ``memory [B, S, D]`` → ``([B, T, D], loss)``."""
        balance_loss = torch.zeros((), device=x.device, dtype=torch.float32)
        for layer in self.layers:
            k, v = layer.cross_attn.project_kv(memory)
            x, layer_loss = layer(x, k, v, memory_mask)
            balance_loss = balance_loss + layer_loss.float()
        return self.norm(x), balance_loss

    def empty_cache(self, n: int, device: torch.device, dtype: torch.dtype) -> Tuple[List[Tensor], List[Tensor]]:
        """Zero-length self-attention caches for ``n`` sequences."""
        shape = (n, self.num_heads, 0, self.head_dim)
        keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        return keys, values

    def step(
        self,
        x: Tensor,
        self_keys: List[Tensor],
        self_values: List[Tensor],
        memory_keys: List[Tensor],
        memory_values: List[Tensor],
        memory_mask: Tensor,
        beams: int = 1,
        last_only: bool = False,
        cache_rows: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        """``T`` new tokens per sequence: ``x [N, T, D]`` → ``([N, T, D], grown caches)``.

        Caches are ``[M, H, t, Dh]`` (M = N without ``cache_rows``); memory keys/values
        ``[N / beams, H, S, Dh]``, shared by each group of ``beams`` consecutive sequences
        (see :meth:`DecoderLayer.step`). ``last_only``: return the last token's output alone,
        ``[N, 1, D]`` (what a search reads); the top layer then skips the other tokens'
        attention and experts, which nothing reads (the lower layers still compute them: they
        feed the keys above). ``cache_rows [N]``: the cache row each sequence continues (the
        grown caches are ``[N, H, t + T, Dh]``).
        """
        new_tokens = x.shape[1]
        self_mask: Optional[Tensor] = None
        if new_tokens > 1:
            cached = self_keys[0].shape[2]
            query = torch.arange(new_tokens, device=x.device)[:, None] + cached
            self_mask = torch.arange(cached + new_tokens, device=x.device)[None, :] <= query  # (T, t + T)
        new_keys: List[Tensor] = []
        new_values: List[Tensor] = []
        i = 0
        top = len(self.layers) - 1
        for layer in self.layers:
            x, k, v = layer.step(
                x, self_keys[i], self_values[i], memory_keys[i], memory_values[i], memory_mask, self_mask, beams,
                last_only and i == top, cache_rows,
            )
            new_keys.append(k)
            new_values.append(v)
            i += 1
        return self.norm(x), new_keys, new_values
