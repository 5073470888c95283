"""Typed configuration of the model and its training stages.

Hydra composes YAML into these dataclasses (registered with its ConfigStore, so a typo or
a wrong type fails at the command line); modules receive the dataclasses, never a
DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Encoder-decoder sizes.

    Attributes:
        d_model: width of every token representation.
        num_heads: attention heads (d_model must divide by it).
        encoder_layers / decoder_layers: transformer depth.
        encoder_ffn: hidden size of the encoder's dense feed-forward layers.
        dropout: dropout on attention outputs, feed-forward outputs and embeddings.
        history_item_embedding: add a per-item embedding (torchrec table ``item``) to the
            sum of an item's code embeddings in the encoder's input.
        user_embedding_buckets: rows of a hashed user-id table (0: no user-id token).
        max_history: the encoder reads at most this many recent items.
        next_item_loss: weight of an auxiliary loss that predicts the target session's
            items with a softmax over the catalogue from the encoder's user token (0: off).
            It only shapes the encoder during training; generation never uses it.
    """

    d_model: int = 128
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    encoder_ffn: int = 512
    dropout: float = 0.1
    history_item_embedding: bool = True
    user_embedding_buckets: int = 0
    max_history: int = 256
    next_item_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.max_history < 1:
            raise ValueError(f"model.max_history must be >= 1, got {self.max_history}")


@dataclass
class MoEConfig:
    """The decoder's sparse mixture-of-experts feed-forward layers (megablocks names).

    Attributes:
        num_experts / top_k: experts per layer and experts per token.
        ffn_hidden_size: hidden size of each expert.
        loss_weight: weight of the load-balancing loss.
        balancing: ``aux_loss`` (megablocks' loss) or ``loss_free`` (routing bias).
        bias_update_rate: step of the loss-free routing-bias update.
        backend: ``torch`` (this project's grouped-matmul dMoE) or ``megablocks``.
    """

    num_experts: int = 4
    top_k: int = 2
    ffn_hidden_size: int = 256
    loss_weight: float = 0.01
    normalize_expert_weights: float | None = None
    jitter_eps: float | None = None
    balancing: str = "aux_loss"
    bias_update_rate: float = 1e-3
    backend: str = "torch"


@dataclass
class TrainerConfig:
    """Optimisation and bookkeeping.

    Attributes:
        batch_size: examples per optimiser step, over all processes: under torchrun each
            of N ranks takes ``batch_size / N`` of every batch (N must divide it), so a run
            sees the same global batches on any number of processes.
        max_steps: stop after this many optimiser steps (0: use max_epochs).
        max_epochs: stop after this many passes over the training examples.
        eval_every: validate every this many steps (0: once per epoch).
        eval_users: validate on at most this many users (0: all).
        patience: stop after this many validations without a better Recall@10 (0: never).
        checkpoint_every: write ``last.pt`` every this many steps (and at every validation).
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``bf16`` or ``fp32``.
        threads: torch intra-op threads on CPU (0: torch's default; use 1 per process
            when several processes share a few cores).
        table_optimizer: under torchrun, the optimiser of the embedding tables that
            torchrec shards (fused into their backward pass): ``auto`` (``adam`` on CUDA;
            ``adagrad`` on CPU, whose fused kernels have no Adam), ``adam``, ``adagrad``,
            ``rowwise_adagrad`` or ``sgd``. A single process trains them with AdamW.
        shard_examples: under torchrun, each rank reads only its own shards of the
            training split (a bundle made with ``examples.shard_rows``) and draws its
            batches from them; off, every rank reads the whole split and takes its columns
            of the single-process batches.
        label_smoothing: of the NTP cross-entropy (0: none).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            0.999: about the last 1,000 steps) and validate and save it instead of the raw
            weights (0: off). Single process only.
    """

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    max_steps: int = 0
    max_epochs: int = 10
    grad_clip: float = 1.0
    eval_every: int = 0
    eval_users: int = 0
    patience: int = 3
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    show_progress: bool = True
    table_optimizer: str = "auto"
    shard_examples: bool = False
    label_smoothing: float = 0.0
    ema_decay: float = 0.0


@dataclass
class GenerationConfig:
    """Beam search.

    Attributes:
        beam_size: beams kept at every step.
        num_items: m, items per generated session (0: the bundle's session length).
        constrained: walk only prefixes of real items (a trie of the semantic-ID table).
        batch_size: users per generation batch.
    """

    beam_size: int = 20
    num_items: int = 0
    constrained: bool = True
    batch_size: int = 256


@dataclass
class TrainConfig:
    """``onerec-train``."""

    data_dir: str = "???"
    run_dir: str = "runs/train"
    resume: bool = False
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
