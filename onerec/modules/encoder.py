"""The history encoder: a pre-norm transformer over the user's positive items."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from onerec.modules.attention import MultiHeadAttention


class EncoderLayer(nn.Module):
    """``x + attn(LN(x))`` then ``x + FFN(LN(x))`` (pre-norm, as in GPT-2 / T5)."""

    def __init__(self, d_model: int, num_heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn_in = nn.Linear(d_model, ffn)
        self.ffn_out = nn.Linear(ffn, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, T, D]``, ``mask [B, 1, 1, T]`` (True = real token) → ``[B, T, D]``."""
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, h, mask))
        h = self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return x + self.dropout(h)


class HistoryEncoder(nn.Module):
    """A stack of :class:`EncoderLayer` and a final LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ffn: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(d_model, num_heads, ffn, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, T, D]`` embedded history, ``mask [B, 1, 1, T]`` → memory ``[B, T, D]``."""
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)
