"""Sparse inputs through a torchrec ``EmbeddingCollection``.

One table per semantic-ID level (``code_<l>``) serves both the history (feature
``hist_c<l>``) and the decoder's teacher-forced session (``tgt_c<l>``); optional tables
hold a per-item embedding (``item``), a hashed user id (``user``) and each categorical user
feature (``uf_<name>``). Because the tables live in an EmbeddingCollection, torchrec's
DistributedModelParallel can shard them across processes when they outgrow one.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

INIT_STD = 0.02


class SparseFeatureEmbeddings(nn.Module):
    """Args:
        d_model: embedding size of every table.
        codebook_sizes: codes per semantic-ID level.
        num_items: rows of the per-item table (0: no such table).
        user_buckets: rows of the hashed user-id table (0: none).
        user_features: ``{name: cardinality}`` of categorical user features (0 = unknown).
        device: ``meta`` to build without allocating (torchrec sharding does this).
    """

    def __init__(
        self,
        d_model: int,
        codebook_sizes: list[int],
        num_items: int = 0,
        user_buckets: int = 0,
        user_features: Dict[str, int] | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_levels = len(codebook_sizes)
        tables = [
            EmbeddingConfig(
                name=f"code_{level}",
                embedding_dim=d_model,
                num_embeddings=size,
                feature_names=[f"hist_c{level}", f"tgt_c{level}"],
            )
            for level, size in enumerate(codebook_sizes)
        ]
        if num_items > 0:
            tables.append(EmbeddingConfig(name="item", embedding_dim=d_model, num_embeddings=num_items, feature_names=["hist_item"]))
        if user_buckets > 0:
            tables.append(EmbeddingConfig(name="user", embedding_dim=d_model, num_embeddings=user_buckets, feature_names=["user"]))
        self.user_feature_names = list((user_features or {}).keys())
        for name, cardinality in (user_features or {}).items():
            tables.append(
                EmbeddingConfig(name=f"uf_{name}", embedding_dim=d_model, num_embeddings=cardinality, feature_names=[f"uf_{name}"])
            )
        self.table_names = [t.name for t in tables]
        self.collection = EmbeddingCollection(tables=tables, device=device)
        if device is None or device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchrec's default init scales with 1/num_embeddings, which makes large tables
        # start near zero; a fixed small std (as in GPT-2/BERT) treats every table alike.
        for table in self.collection.embeddings.values():
            nn.init.normal_(table.weight, std=INIT_STD)

    def table(self, name: str) -> nn.Embedding:
        """The ``nn.Embedding`` behind a table (for dense lookups during generation)."""
        return self.collection.embeddings[name]  # type: ignore[return-value]

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        """Look up every feature: ``{feature name: JaggedTensor of [N_feature, D]}``."""
        return self.collection(features)
