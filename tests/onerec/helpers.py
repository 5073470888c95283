"""Small builders shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_pipeline.bundle import Bundle
from onerec.config import ModelConfig, MoEConfig, TrainConfig
from onerec.data import BatchBuilder, ExampleSet
from onerec.model import OneRec

TINY_MODEL = ModelConfig(d_model=32, num_heads=2, encoder_layers=1, decoder_layers=2, encoder_ffn=64, dropout=0.0, max_history=32)
TINY_MOE = MoEConfig(num_experts=4, top_k=2, ffn_hidden_size=32)


def tiny_model(bundle: Bundle, session_length: int = 3, seed: int = 0, **overrides: object) -> OneRec:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY_MODEL.__dict__, **overrides})
    return OneRec(cfg, TINY_MOE, bundle.codebook_sizes, bundle.num_items, session_length)


def tiny_train_config(bundle_dir: Path, run_dir: Path, **trainer: object) -> TrainConfig:
    cfg = TrainConfig(data_dir=str(bundle_dir), run_dir=str(run_dir), model=ModelConfig(**TINY_MODEL.__dict__), moe=MoEConfig(**TINY_MOE.__dict__))
    cfg.model.dropout = 0.1
    cfg.trainer.batch_size = 32
    cfg.trainer.show_progress = False
    cfg.trainer.log_every = 5
    cfg.trainer.eval_users = 50
    cfg.trainer.warmup_steps = 5
    cfg.generation.beam_size = 10
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def examples_and_builder(bundle: Bundle, model: OneRec, split: str = "train") -> tuple[ExampleSet, BatchBuilder]:
    examples = ExampleSet(bundle.split(split), model.config.max_history, model.session_length)
    builder = BatchBuilder.for_bundle(bundle, model.config.history_item_embedding, model.config.user_embedding_buckets)
    return examples, builder


def rows_with_distinct_lengths(examples: ExampleSet, count: int) -> np.ndarray:
    """Example rows whose histories all have different lengths (for masking tests)."""
    lengths = examples.history_lengths
    _, first = np.unique(lengths, return_index=True)
    return np.sort(first)[:count]
