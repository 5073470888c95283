"""OneRec: an encoder-decoder that reads a user's history and generates the next session.

Encoder input, one position per history item (oldest first) after a user token::

    x[0]   = user_token (+ user-id and user-feature embeddings)
    x[1+t] = sum_l code_l(c_l(item_t)) (+ item(item_t)) + recency(len - 1 - t)

Decoder input, the session as ``[BOS, c1, c2, c3] × m`` (the last code of the last
item is never an input)::

    position p = j * (L + 1) + r:   r = 0 → BOS,  r ≥ 1 → code_{r-1}(c_{r-1}(item_j))

and the output at ``r`` (0 ≤ r < L) predicts code ``c_r`` of item ``j`` over level
``r``'s vocabulary only (one output head per level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from onerec.config import ModelConfig, MoEConfig
from onerec.data import Batch
from onerec.modules.attention import key_padding_mask
from onerec.modules.decoder import SessionDecoder
from onerec.modules.embeddings import INIT_STD, SparseFeatureEmbeddings
from onerec.modules.encoder import HistoryEncoder
from onerec.modules.moe import MoEArguments


@dataclass
class ModelOutput:
    """Attributes:
        logits: one ``[B, m, K_l]`` tensor per level.
        balance_loss: the MoE load-balancing loss summed over layers (a scalar).
        next_item_logits: ``[B, num_items]`` from the encoder's user token, when the
            auxiliary next-item loss is on (``model.next_item_loss > 0``), else None.
    """

    logits: List[Tensor]
    balance_loss: Tensor
    next_item_logits: Optional[Tensor] = None


def moe_arguments(model: ModelConfig, moe: MoEConfig) -> MoEArguments:
    return MoEArguments(
        hidden_size=model.d_model,
        ffn_hidden_size=moe.ffn_hidden_size,
        moe_num_experts=moe.num_experts,
        moe_top_k=moe.top_k,
        moe_loss_weight=moe.loss_weight,
        moe_normalize_expert_weights=moe.normalize_expert_weights,
        moe_jitter_eps=moe.jitter_eps,
        num_layers=model.decoder_layers,
        balancing=moe.balancing,
        bias_update_rate=moe.bias_update_rate,
        backend=moe.backend,
    )


class OneRec(nn.Module):
    """Args:
        config: model sizes.
        moe: the decoder's mixture-of-experts settings.
        codebook_sizes: codes per semantic-ID level (L levels).
        num_items: catalogue size (for the optional per-item history table).
        session_length: m, items per generated session.
        user_features: ``{name: cardinality}`` of categorical user features.
    """

    def __init__(
        self,
        config: ModelConfig,
        moe: MoEConfig,
        codebook_sizes: List[int],
        num_items: int,
        session_length: int,
        user_features: Dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.moe_config = moe
        self.codebook_sizes = list(codebook_sizes)
        self.num_levels = len(codebook_sizes)
        self.num_items = num_items
        self.session_length = session_length
        self.user_feature_names = list((user_features or {}).keys())
        d = config.d_model
        self.embeddings = SparseFeatureEmbeddings(
            d,
            codebook_sizes,
            num_items=num_items if config.history_item_embedding else 0,
            user_buckets=config.user_embedding_buckets,
            user_features=user_features,
        )
        self.user_token = nn.Parameter(torch.randn(d) * INIT_STD)
        self.bos = nn.Parameter(torch.randn(d) * INIT_STD)
        self.history_position = nn.Embedding(config.max_history, d)
        self.session_position = nn.Embedding(session_length * (self.num_levels + 1), d)
        nn.init.normal_(self.history_position.weight, std=INIT_STD)
        nn.init.normal_(self.session_position.weight, std=INIT_STD)
        self.input_dropout = nn.Dropout(config.dropout)
        self.encoder = HistoryEncoder(d, config.num_heads, config.encoder_ffn, config.encoder_layers, config.dropout)
        self.decoder = SessionDecoder(d, config.num_heads, config.decoder_layers, moe_arguments(config, moe), config.dropout)
        self.heads = nn.ModuleList([nn.Linear(d, size) for size in codebook_sizes])
        # A dense head (not tied to the item table, which torchrec may shard).
        self.next_item_head = nn.Linear(d, num_items) if config.next_item_loss > 0 else None

    # ----------------------------------------------------------------- encoder
    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Memory ``[B, 1 + T, D]`` and its key mask ``[B, 1, 1, 1 + T]`` (T = longest history)."""
        return self._encode(self.embeddings(batch.features), batch.history_lengths)

    def _encode(self, embedded: Dict[str, JaggedTensor], lengths: Tensor) -> tuple[Tensor, Tensor]:
        max_len = int(lengths.max().item()) if lengths.numel() else 0
        b = lengths.numel()
        d = self.config.d_model
        history = torch.zeros(b, max_len, d, device=lengths.device)
        keys = [f"hist_c{level}" for level in range(self.num_levels)]
        if self.config.history_item_embedding:
            keys.append("hist_item")
        for key in keys:
            # fbgemm's jagged_to_padded_dense: padding comes from the jagged lengths.
            history = history + embedded[key].to_padded_dense(desired_length=max_len)
        recency = (lengths[:, None] - 1 - torch.arange(max_len, device=lengths.device)).clamp(min=0)
        history = history + self.history_position(recency)
        user = self.user_token.expand(b, d)
        for key in (["user"] if self.config.user_embedding_buckets > 0 else []) + [f"uf_{n}" for n in self.user_feature_names]:
            user = user + embedded[key].values().view(b, d)
        x = torch.cat([user[:, None, :], history], dim=1)
        mask = key_padding_mask(lengths + 1, max_len + 1)
        return self.encoder(self.input_dropout(x), mask), mask

    # ----------------------------------------------------------------- decoder
    def session_inputs(self, code_embeddings: Tensor) -> Tensor:
        """``[B, m, L, D]`` embeddings of the target codes → decoder input ``[B, m(L+1) - 1, D]``."""
        b, m, levels, d = code_embeddings.shape
        bos = self.bos.expand(b, m, 1, d)
        tokens = torch.cat([bos, code_embeddings], dim=2).reshape(b, m * (levels + 1), d)[:, :-1]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return tokens + self.session_position(positions)[None]

    def forward(self, batch: Batch) -> ModelOutput:
        """Teacher-forced logits for every code of the target session."""
        embedded = self.embeddings(batch.features)
        memory, mask = self._encode(embedded, batch.history_lengths)
        b, m = batch.target_items.shape
        d = self.config.d_model
        codes = torch.stack(
            [embedded[f"tgt_c{level}"].values().view(b, m, d) for level in range(self.num_levels)], dim=2
        )  # (B, m, L, D)
        x = self.input_dropout(self.session_inputs(codes))
        hidden, balance_loss = self.decoder(x, memory, mask)
        # Pad the dropped last position back so the sequence folds into (m, L + 1) slots.
        hidden = F.pad(hidden, (0, 0, 0, 1)).view(b, m, self.num_levels + 1, d)
        logits = [self.heads[level](hidden[:, :, level]) for level in range(self.num_levels)]
        next_item = self.next_item_head(memory[:, 0]) if self.next_item_head is not None else None
        return ModelOutput(logits=logits, balance_loss=balance_loss, next_item_logits=next_item)

    def moe_layers(self) -> List[nn.Module]:
        return [layer.moe for layer in self.decoder.layers]
