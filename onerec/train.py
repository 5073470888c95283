"""``onerec-train``: next-token-prediction training of the generative model.

    onerec-train data_dir=BUNDLE run_dir=RUN [model=tiny|small|base] [experiment=NAME]
                 [trainer.max_steps=N] [resume=true]
    torchrun --nproc-per-node N -m onerec.train ...     # the same, on N processes

Reads top to bottom: set-up → (resume) → loop of steps with periodic validation and
checkpoints → summary. Each step's batch is a function of (seed, step) alone, and the
checkpoint holds every RNG state, so ``resume=true`` after a kill continues exactly where
an uninterrupted run would be.

Under torchrun (:mod:`onerec.distributed`) the embedding tables are sharded, each rank
takes its share of every global batch (``trainer.batch_size`` is the global batch),
metrics are reduced over ranks and rank 0 validates, logs and writes the run folder;
resumable state is the sharded ``last.dcp/``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.checkpoint import (
    BEST,
    LAST,
    build_model,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_atomic,
    save_run_config,
    session_length_of,
)
from onerec.config import TrainConfig, TrainerConfig
from onerec.data import BatchBuilder, ExampleSet, epoch_batches, iterate_batches
from onerec.distributed import ShardedModel, World, checkpoint_folder, is_main_process, process_group
from onerec.generate import SessionGenerator
from onerec.losses import next_item_loss, ntp_loss
from onerec.model import OneRec
from onerec.ranking import evaluate_rankings, rank_items
from onerec.run_log import RunLogger, truncate_metrics
from onerec.trie import SemanticIdTrie
from onerec.weight_average import WeightAverage

log = logging.getLogger(__name__)

# Resumable state of a torchrun run: torch.distributed.checkpoint's folder of shards.
SHARDED_LAST = "last.dcp"
PLAN_FILE = "sharding_plan.txt"  # torchrec's plan: which rank holds which rows of each table


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default; full fp32 on CPU (bf16 matmuls are slow there)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ValueError(f"trainer.precision={precision!r}; expected auto, bf16 or fp32")


def make_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    return adamw(model.named_parameters(), cfg)


def adamw(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW; biases, norms and embedding tables are not weight-decayed (standard practice:
    decay on them shrinks rare items' vectors toward zero)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embeddings" in name or "position" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates all parameters in one pass: ~25% faster steps
    # here, where the dense item table makes the optimiser a large share of a step.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    warmup = max(1, cfg.warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    step: int = 0
    best_metric: float = -1.0
    best_step: int = -1
    bad_validations: int = 0


class Trainer:
    """One NTP training run, in one process or as one rank of a torchrun job.

    Args:
        cfg: the run's configuration.
        world: this process's place among the ranks (:func:`onerec.distributed.process_group`);
            None: a single process on ``trainer.device``.
    """

    def __init__(self, cfg: TrainConfig, world: World | None = None) -> None:
        self.cfg = cfg
        tcfg = cfg.trainer
        if tcfg.threads > 0:
            torch.set_num_threads(tcfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.world = world or World(device=pick_device(tcfg.device))
        self.device = self.world.device
        self.amp_dtype = autocast_dtype(tcfg.precision, self.device)
        self.run_dir = Path(cfg.run_dir).expanduser()
        self.bundle = Bundle.open(cfg.data_dir)
        self.session_length = session_length_of(cfg, self.bundle)
        self.builder = BatchBuilder.for_bundle(self.bundle, cfg.model.history_item_embedding, cfg.model.user_embedding_buckets)
        own_shards = self.world.is_distributed and tcfg.shard_examples
        train = self.bundle.split("train", self.world.rank, self.world.size) if own_shards else self.bundle.split("train")
        self.train_set = ExampleSet(train, cfg.model.max_history, self.session_length)
        self.valid_set = ExampleSet(self.bundle.split("valid"), cfg.model.max_history, self.session_length)
        if tcfg.batch_size % self.world.size:
            raise ValueError(f"trainer.batch_size={tcfg.batch_size} must be divisible by the {self.world.size} processes")
        # Examples one process draws its batches from, and how many it takes per step.
        batch_rows = tcfg.batch_size // self.world.size if own_shards else tcfg.batch_size
        if len(self.train_set) < batch_rows:
            raise ValueError(
                f"{len(self.train_set)} training examples is fewer than trainer.batch_size={tcfg.batch_size}; lower it"
            )
        self.trie = SemanticIdTrie.from_codes(self.bundle.codes, self.bundle.codebook_sizes)
        self.item_codes = torch.as_tensor(self.bundle.codes)
        self.model: OneRec = build_model(cfg, self.bundle, self.session_length)
        self.steps_per_epoch = self.world.min(len(self.train_set) // batch_rows)
        self.total_steps = tcfg.max_steps if tcfg.max_steps > 0 else tcfg.max_epochs * self.steps_per_epoch
        self.eval_every = tcfg.eval_every if tcfg.eval_every > 0 else self.steps_per_epoch
        self.sharded: ShardedModel | None = None
        self.eval_model: OneRec | None = None  # rank 0's unsharded copy for validation
        if self.world.is_distributed:
            self.sharded = ShardedModel(self.model, self.world, tcfg, lambda named: adamw(named, tcfg))
            if self.world.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / PLAN_FILE).write_text(str(self.sharded.plan))
            self.network: torch.nn.Module = self.sharded.dmp
            self.optimizer: torch.optim.Optimizer = self.sharded.optimizer
            self.clipped = self.sharded.dense_parameters
            # Sharding consumed a rank-dependent share of the seeded stream; give every
            # rank its own dropout stream from here on.
            torch.manual_seed(cfg.seed + self.world.rank)
        else:
            self.model = self.model.to(self.device)
            self.network = self.model
            self.optimizer = make_optimizer(self.model, tcfg)
            self.clipped = list(self.model.parameters())
        self.scheduler = make_scheduler(self.optimizer, tcfg, self.total_steps)
        self.average: WeightAverage | None = None
        if tcfg.ema_decay > 0:
            if self.sharded is not None:
                raise UserError("trainer.ema_decay > 0 runs in a single process only; set trainer.ema_decay=0 under torchrun")
            self.average = WeightAverage(self.model, tcfg.ema_decay)
        self.state = TrainState()
        self.logger: RunLogger | None = None

    # ------------------------------------------------------------ checkpoints
    def served_model(self) -> OneRec:
        """The weights that are validated and saved as ``model``: the moving average when
        ``trainer.ema_decay`` > 0, else the trained weights themselves."""
        if self.average is None:
            return self.model
        return self.average.model(self.model)  # type: ignore[return-value]

    def checkpoint(self, name: str) -> None:
        if self.sharded is not None:
            self.sharded_checkpoint(name)
            return
        state: dict[str, Any] = {
            "model": self.served_model().state_dict(),  # what every later stage loads
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": self.state.__dict__,
            "rng": rng_state(),
            "step": self.state.step,
        }
        if self.average is not None:
            state["train_model"] = self.model.state_dict()  # the raw weights, to resume from
            state["weight_average"] = self.average.state()
        save_atomic(state, self.run_dir / name)

    def sharded_checkpoint(self, name: str) -> None:
        """The gathered weights as ``name`` (read by every later stage) and, for ``last``,
        the resumable sharded state; every rank must call it."""
        assert self.sharded is not None
        trainer_state = {"scheduler": self.scheduler.state_dict(), "state": self.state.__dict__, "step": self.state.step}
        weights = self.sharded.full_state_dict()
        if self.world.is_main:
            save_atomic({"model": weights, **trainer_state, "world_size": self.world.size}, self.run_dir / name)
        if name == LAST:
            self.sharded.save(self.run_dir / SHARDED_LAST, trainer_state, rng_state())

    def can_resume(self) -> bool:
        if self.sharded is None:
            return (self.run_dir / LAST).is_file()
        if checkpoint_folder(self.run_dir / SHARDED_LAST) is None and (self.run_dir / LAST).is_file():
            raise UserError(
                f"{self.run_dir} holds a single-process checkpoint ({LAST}, no {SHARDED_LAST}/); "
                "resume it without torchrun, or train into another run_dir"
            )
        return checkpoint_folder(self.run_dir / SHARDED_LAST) is not None

    def resume(self) -> None:
        if self.sharded is not None:
            trainer_state, rng = self.sharded.load(self.run_dir / SHARDED_LAST)
            self.scheduler.load_state_dict(trainer_state["scheduler"])
            # torchrec's optimisers do not save their param groups: put the scheduled
            # learning rates back (a torch optimiser's state dict would have carried them).
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr
            self.state = TrainState(**trainer_state["state"])
            if rng is not None:
                restore_rng(rng)
            if self.world.is_main:
                truncate_metrics(self.run_dir, self.state.step)
            log.info("resumed from %s at step %d", self.run_dir / SHARDED_LAST, self.state.step)
            return
        state = load_checkpoint(self.run_dir / LAST)
        if "optimizer" not in state:
            raise UserError(
                f"{self.run_dir / LAST} was written by a torchrun run of {state.get('world_size')} processes; "
                f"resume it under torchrun (its resumable state is {SHARDED_LAST}/)"
            )
        if self.average is None:
            if "weight_average" in state:
                raise UserError(
                    f"{self.run_dir / LAST} holds a weight average (decay {state['weight_average']['decay']}); "
                    "resume it with that trainer.ema_decay"
                )
            self.model.load_state_dict(state["model"])
        else:
            if "weight_average" not in state:
                raise UserError(
                    f"{self.run_dir / LAST} was saved without a weight average; resume it with trainer.ema_decay=0 "
                    "(the setting it was trained with)"
                )
            self.model.load_state_dict(state["train_model"])
            self.average.restore(state["model"], state["weight_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(**state["state"])
        restore_rng(state["rng"])
        truncate_metrics(self.run_dir, self.state.step)
        log.info("resumed from %s at step %d", self.run_dir / LAST, self.state.step)

    # ------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        if self.sharded is None:
            return self.validate_model(self.served_model())
        # Beam search looks tables up densely: rank 0 validates an unsharded copy.
        weights = self.sharded.full_state_dict()
        metrics = None
        if self.world.is_main:
            if self.eval_model is None:
                with torch.random.fork_rng(devices=[]):  # building it must not move the seeded stream
                    self.eval_model = build_model(self.cfg, self.bundle, self.session_length).to(self.device)
            self.eval_model.load_state_dict(weights)
            metrics = self.validate_model(self.eval_model)
        return self.world.broadcast(metrics)

    def validate_model(self, model: OneRec) -> dict[str, float]:
        model.eval()
        generator = SessionGenerator(model, self.trie, self.item_codes.to(self.device))
        rankings = rank_items(
            generator,
            self.builder,
            self.valid_set,
            top_k=10,
            beam_size=self.cfg.generation.beam_size,
            batch_size=self.cfg.generation.batch_size,
            limit=self.cfg.trainer.eval_users,
            device=self.device,
        )
        model.train()
        return evaluate_rankings(rankings, self.valid_set)

    # ------------------------------------------------------------ training
    def train_step(self, batch: Any) -> dict[str, float]:
        batch = batch.to(self.device)
        # Before the forward: torchrec's fused table optimiser takes the scheduled learning
        # rate at zero_grad(), and fbgemm's CPU kernel reads it during the forward.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            output = self.network(batch)
            ntp = ntp_loss(output.logits, batch.target_codes, self.cfg.trainer.label_smoothing)
            loss = ntp + output.balance_loss
            if output.next_item_logits is not None:
                loss = loss + self.cfg.model.next_item_loss * next_item_loss(output.next_item_logits, batch.target_items)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.clipped, self.cfg.trainer.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.model)
        if self.cfg.moe.balancing == "loss_free":
            for layer in self.model.moe_layers():
                # Every rank takes the same step: on the load summed over ranks.
                layer.update_routing_bias(self.world.sum(layer.tokens_per_expert))
        return {
            "loss": loss.item(),
            "ntp": ntp.item(),
            "balance": output.balance_loss.item(),
            "grad_norm": float(grad_norm),
        }

    def run(self) -> dict[str, Any]:
        cfg, tcfg = self.cfg, self.cfg.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume and self.world.broadcast(self.can_resume()):
            self.resume()
        elif cfg.resume:
            log.info("resume=true but %s has no %s: starting fresh", self.run_dir, LAST)
        if self.world.is_main:
            save_run_config(cfg, self.run_dir)
        self.logger = RunLogger(self.run_dir, enabled=self.world.is_main)
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="onerec-train",
            unit="step",
            disable=not (tcfg.show_progress and self.world.is_main),
        )
        tokens = examples = 0
        clock = time.perf_counter()
        stopped_early = False
        while self.state.step < self.total_steps and not stopped_early:
            epoch, first = divmod(self.state.step, self.steps_per_epoch)
            batches = self.epoch_batches(epoch)
            for batch in iterate_batches(self.builder, self.train_set, batches, first):
                metrics = self.train_step(batch)
                self.state.step += 1
                tokens += batch.num_tokens
                examples += batch.size
                bar.update(1)
                if self.state.step % tcfg.log_every == 0 or self.state.step == self.total_steps:
                    elapsed = max(time.perf_counter() - clock, 1e-9)
                    metrics.update(lr=self.scheduler.get_last_lr()[0], tokens_per_s=tokens / elapsed, examples_per_s=examples / elapsed, epoch=epoch)
                    metrics = self.world.reduce_metrics(metrics, sums=("tokens_per_s", "examples_per_s"))
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                    self.logger.log(self.state.step, "train", metrics)
                    tokens = examples = 0
                    clock = time.perf_counter()
                if self.state.step % self.eval_every == 0 or self.state.step == self.total_steps:
                    stopped_early = self.after_validation(self.validate())
                    clock = time.perf_counter()
                if self.state.step % tcfg.checkpoint_every == 0:
                    self.checkpoint(LAST)
                if self.state.step >= self.total_steps or stopped_early:
                    break
        self.checkpoint(LAST)
        if self.world.broadcast(not (self.run_dir / BEST).is_file()):
            self.checkpoint(BEST)
        bar.close()
        self.logger.close()
        summary = {
            "run_dir": str(self.run_dir),
            "steps": self.state.step,
            "best_step": self.state.best_step,
            "best_valid_recall@10": self.state.best_metric,
            "stopped_early": stopped_early,
        }
        if self.world.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """This process's ``[steps, rows]`` of ``epoch``: its columns of the global batches
        (all ranks together: the single-process batches), or, with
        ``trainer.shard_examples``, its own batches from its own shards."""
        tcfg, world = self.cfg.trainer, self.world
        if world.is_distributed and tcfg.shard_examples:
            rows = tcfg.batch_size // world.size
            return epoch_batches(self.train_set.history_lengths, rows, self.cfg.seed + world.rank, epoch)[: self.steps_per_epoch]
        return epoch_batches(self.train_set.history_lengths, tcfg.batch_size, self.cfg.seed, epoch, world.rank, world.size)

    def after_validation(self, metrics: dict[str, float]) -> bool:
        """Log, keep the best weights, and say whether to stop early."""
        assert self.logger is not None
        self.logger.log(self.state.step, "valid", metrics)
        log.info("step %d valid %s", self.state.step, {k: round(v, 4) for k, v in metrics.items()})
        if metrics["recall@10"] > self.state.best_metric:
            self.state.best_metric = metrics["recall@10"]
            self.state.best_step = self.state.step
            self.state.bad_validations = 0
            self.checkpoint(BEST)
        else:
            self.state.bad_validations += 1
        self.checkpoint(LAST)
        patience = self.cfg.trainer.patience
        return patience > 0 and self.state.bad_validations >= patience


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train in this process, or as one rank when started by torchrun."""
    with process_group(pick_device(cfg.trainer.device)) as world:
        return Trainer(cfg, world).run()


# --------------------------------------------------------------------------- CLI
def main() -> None:
    from onerec.stages import hydra_main

    def body(cfg: TrainConfig) -> None:
        summary = train(cfg)
        if is_main_process():
            print(json.dumps(summary, indent=2))

    hydra_main("train", "onerec-train", body)


if __name__ == "__main__":
    main()
