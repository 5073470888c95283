"""Training beyond one process: torchrun's process group and torchrec's sharded model.

``onerec-train`` runs unchanged under ``torchrun`` (one process per GPU, or several CPU
processes); without torchrun's environment (``WORLD_SIZE`` unset) it is one process::

    torchrun --nproc-per-node 8 -m onerec.train data_dir=BUNDLE run_dir=RUN trainer=multi_gpu
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m onerec.train data_dir=BUNDLE run_dir=RUN trainer=multi_gpu

What each part of training does across ranks:

==============  ==========================================================================
part            across ranks
==============  ==========================================================================
process group   from torchrun's environment: gloo on CPU, NCCL on GPU
tables          torchrec ``DistributedModelParallel``; its planner picks table-wise or
                row-wise shards; their optimiser is fused into the backward pass (fbgemm)
dense layers    replicated, gradients averaged by DDP (DMP wraps them), AdamW as in one
                process, clipped by the global norm
data            rank r takes columns ``r::N`` of every global batch (``epoch_batches``),
                or, with ``trainer.shard_examples``, batches from its own bundle shards
metrics         losses averaged, throughputs summed over ranks; rank 0 logs
validation      rank 0, on an unsharded copy of the model (the tables gathered to it)
checkpoints     ``last.dcp/``: torch.distributed.checkpoint of the sharded model and
                optimiser, every rank writing its own shards (and reading them back on
                any number of ranks); ``last.pt``/``best.pt``: the gathered weights, so
                that every later stage reads a torchrun run like a single-process one
==============  ==========================================================================

Why DCP and not torchrec's own path: DMP's ``state_dict()`` holds ``ShardedTensor`` views of
the fbgemm weights and the fused optimiser's state, which DCP writes shard by shard and
loads in place (checked on CPU/gloo here), so no rank ever holds the whole model or its
optimiser state; gathering everything to rank 0 would not scale with the tables.

Why the tables' optimiser differs from one process's AdamW: a sharded table's gradient is
never materialised (fbgemm applies the update inside the backward pass), and fbgemm's CPU
kernels fuse only Adagrad, row-wise Adagrad and SGD; Adam is CUDA-only. Both Adam and
Adagrad are invariant to the gradient's scale, which matters because a sharded row's
gradient is the *sum* of every rank's contribution while DDP *averages* the dense ones.
The fused update also runs before clipping, so the tables are not clipped.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from onerec.config import TrainerConfig

log = logging.getLogger(__name__)

# Rank 0 validates while the others wait at a collective: allow for a long validation
# (NCCL's default is 10 minutes).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)
TRAINER_FILE = "trainer.pt"
TABLES_PREFIX = "embeddings.collection.embeddings."

# trainer.table_optimizer → fbgemm's EmbOptimType member.
TABLE_OPTIMIZERS = {
    "adam": "ADAM",
    "adagrad": "EXACT_ADAGRAD",
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",
    "sgd": "EXACT_SGD",
}
CPU_TABLE_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd")


# --------------------------------------------------------------------------- process group
@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a single process: rank 0 of 1).

    Attributes:
        rank / size: global rank and number of processes.
        local_rank / local_size: the same on this machine.
        device: this rank's device (``cuda:<local_rank>`` on GPUs).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def min(self, value: int) -> int:
        """The smallest ``value`` over the ranks."""
        if not self.is_distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the ranks (``tensor`` itself in one process)."""
        if not self.is_distributed:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def reduce_metrics(self, metrics: dict[str, float], sums: Sequence[str] = ()) -> dict[str, float]:
        """Mean over the ranks of every metric, except ``sums`` (added: e.g. tokens/s)."""
        if not self.is_distributed:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return {k: v if k in sums else v / self.size for k, v in zip(keys, values.tolist())}


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (readable before the group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """The :class:`World` of this process, from torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with one process) nothing is initialised. Otherwise the
    default group is created (NCCL when ``device`` is CUDA, else gloo) and destroyed on
    exit, unless the caller had already created it. Non-zero ranks log warnings only.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World(device=device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    world = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local_rank,
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))),
        device=device,
    )
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        yield world
    finally:
        if created:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- torchrec adapter
def _not_fbgemm_table_log(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("[TBE=")


def _quiet_torchrec() -> None:
    """torchrec's planner and sharded modules warn about things that do not apply here
    (dry-run storage estimates, deprecated ShardedTensor, fx tracing), and fbgemm logs
    each kernel's arguments on the root logger: keep real errors, drop that noise, here."""
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    root = logging.getLogger()
    if _not_fbgemm_table_log not in root.filters:
        root.addFilter(_not_fbgemm_table_log)
    for module in ("torchrec", "torch.distributed", "torch.nn.parallel", "fbgemm_gpu"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)


def table_fused_params(cfg: TrainerConfig, device: torch.device) -> dict[str, Any]:
    """fbgemm's fused-optimiser settings for the sharded tables (no weight decay, as the
    single-process AdamW's embedding group)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    name = cfg.table_optimizer
    if name == "auto":
        name = "adam" if device.type == "cuda" else "adagrad"
    if name not in TABLE_OPTIMIZERS:
        raise ValueError(f"trainer.table_optimizer={name!r}; expected auto or one of {sorted(TABLE_OPTIMIZERS)}")
    if device.type != "cuda" and name not in CPU_TABLE_OPTIMIZERS:
        raise ValueError(
            f"trainer.table_optimizer={name} needs CUDA: fbgemm's CPU kernels fuse only {', '.join(CPU_TABLE_OPTIMIZERS)}"
        )
    beta1, beta2 = cfg.betas
    return {
        "optimizer": getattr(EmbOptimType, TABLE_OPTIMIZERS[name]),
        "learning_rate": cfg.lr,
        "eps": 1e-8,
        "beta1": beta1,
        "beta2": beta2,
        "weight_decay": 0.0,
    }


def _local_shards(value: Any) -> list[tuple[tuple[slice, ...], torch.Tensor]]:
    """``[(slices of the full tensor, local tensor)]`` of a state-dict entry: the local
    shards of a ShardedTensor, or the whole tensor of a replicated one."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(value, ShardedTensor):
        return [
            (tuple(slice(o, o + n) for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes)), s.tensor)
            for s in value.local_shards()
        ]
    return [(tuple(slice(None) for _ in value.shape), value)]


class ShardedModel:
    """A model whose torchrec ``EmbeddingCollection`` is sharded over the ranks.

    Args:
        model: the model, built identically on every rank (same seed) and still on the
            CPU: its dense weights are DDP's starting point and its tables are copied into
            the shards, so that step 0 equals a single-process run's.
        world: the process group.
        cfg: learning rate, betas and ``table_optimizer`` for the sharded tables.
        dense_optimizer: ``[(name, parameter)]`` of everything that is not a sharded table
            → its optimiser (the single-process AdamW with its decay groups).

    Attributes:
        dmp: the ``DistributedModelParallel`` module; call it for the training forward.
        optimizer: the tables' fused optimiser and the dense one as one torchrec
            ``CombinedOptimizer`` (an ``Optimizer``: LR schedulers drive both).
        dense_parameters: the parameters whose gradients exist after backward (to clip).
        plan: torchrec's sharding plan (``print`` shows a table of shards per rank).

    Example::

        with process_group(torch.device("cpu")) as world:
            sharded = ShardedModel(model, world, cfg.trainer, lambda named: adamw(named, cfg.trainer))
            loss = ntp_loss(sharded.dmp(batch).logits, batch.target_codes)
            sharded.optimizer.zero_grad(); loss.backward(); sharded.optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        world: World,
        cfg: TrainerConfig,
        dense_optimizer: Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer],
    ) -> None:
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner
        from torchrec.distributed.planner.types import KernelConfig, TopologyFactory
        from torchrec.distributed.planner.types import TrainerConfig as PlannerTrainerConfig
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        if not world.is_distributed:
            raise ValueError("ShardedModel needs a process group of 2 or more ranks; run under torchrun")
        _quiet_torchrec()
        self.world = world
        # DMP re-creates the tables inside fbgemm kernels with their own initialisation;
        # keep the model's (seeded, identical on every rank) to copy into the shards.
        initial = {TABLES_PREFIX + f"{name}.weight": t.weight.detach() for name, t in model.embeddings.collection.embeddings.items()}
        sharders = [EmbeddingCollectionSharder(fused_params=table_fused_params(cfg, world.device))]
        topology = TopologyFactory.create_topology(
            trainer_config=PlannerTrainerConfig(world_size=world.size, local_world_size=world.local_size),
            kernel_config=KernelConfig(compute_device=world.device.type),
        )
        planner = EmbeddingShardingPlanner(topology=topology)
        self.plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        # static_graph=False: DDP's static-graph mode finds the output tensors with pytree,
        # which does not look inside ModelOutput, and then never all-reduces the first
        # step's gradients (every rank silently kept its own).
        self.dmp = DistributedModelParallel(
            model,
            device=world.device,
            plan=self.plan,
            sharders=sharders,
            data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
        )
        self._copy_tables(initial)
        del initial
        named_dense = dict(in_backward_optimizer_filter(self.dmp.named_parameters()))
        self.dense = KeyedOptimizerWrapper(named_dense, lambda _params: dense_optimizer(list(named_dense.items())))
        self.optimizer = CombinedOptimizer([("tables", self.dmp.fused_optimizer), ("dense", self.dense)])
        self.dense_parameters = list(named_dense.values())

    def _copy_tables(self, tables: dict[str, torch.Tensor]) -> None:
        state = self.dmp.state_dict()
        with torch.no_grad():
            for key, full in tables.items():
                if key not in state:
                    raise KeyError(f"table {key} is missing from the sharded model's state dict")
                # The state dict's local shards are views of the fbgemm weights.
                for slices, local in _local_shards(state[key]):
                    local.copy_(full[slices])

    # ------------------------------------------------------------------ weights
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The unsharded weights, on the CPU of rank 0 (None on the others).

        A collective: every rank must call it. Keys are a plain model's.
        """
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        full: dict[str, torch.Tensor] = {}
        for key, value in self.dmp.state_dict().items():
            if isinstance(value, ShardedTensor):
                out = torch.empty(value.size(), dtype=value.dtype, device=self.world.device) if self.world.is_main else None
                value.gather(dst=0, out=out)
                if out is not None:
                    full[key] = out.cpu()
            elif self.world.is_main:
                full[key] = value.detach().cpu().clone()
        return full if self.world.is_main else None

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: Path, trainer_state: dict[str, Any], rng: dict[str, Any]) -> None:
        """Write the sharded model and optimiser to ``folder`` with DCP (each rank its own
        shards), rank 0's ``trainer_state`` (scheduler, step ...) and each rank's ``rng``.

        The folder is written beside as ``<folder>.tmp`` and renamed when every rank is
        done, so a killed run keeps its previous checkpoint. All ranks must call it, and
        on several machines ``folder`` must be on a shared file system.
        """
        import torch.distributed.checkpoint as dcp

        tmp = folder.with_name(folder.name + ".tmp")
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.world.barrier()
        dcp.save({"model": self.dmp.state_dict(), "optimizer": self.optimizer.state_dict()}, checkpoint_id=tmp)
        torch.save(rng, tmp / f"rng-{self.world.rank}.pt")
        if self.world.is_main:
            torch.save({**trainer_state, "world_size": self.world.size}, tmp / TRAINER_FILE)
        self.world.barrier()
        if self.world.is_main:
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        self.world.barrier()

    def load(self, folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load a checkpoint written by :meth:`save` (on any number of ranks) in place.

        Returns:
            ``(trainer_state, rng)``; ``rng`` is None when the checkpoint was written by
            a different number of ranks (this rank had no stream there).
        """
        import torch.distributed.checkpoint as dcp

        found = checkpoint_folder(folder)
        if found is None:
            raise FileNotFoundError(f"no complete sharded checkpoint at {folder}")
        folder = found
        # DCP loads into existing tensors: create the dense optimiser's lazy state first
        # (a zero-gradient step; the weights it decays are overwritten by the load).
        self.dense.init_state()
        self.optimizer.zero_grad(set_to_none=True)
        state = {"model": self.dmp.state_dict(), "optimizer": self.optimizer.state_dict()}
        dcp.load(state, checkpoint_id=folder)
        self.dmp.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        trainer_state = torch.load(folder / TRAINER_FILE, map_location="cpu", weights_only=False)
        rng_file = folder / f"rng-{self.world.rank}.pt"
        same_world = trainer_state.get("world_size") == self.world.size
        rng = torch.load(rng_file, map_location="cpu", weights_only=False) if same_world and rng_file.is_file() else None
        return trainer_state, rng


def checkpoint_folder(folder: Path) -> Path | None:
    """The complete DCP checkpoint at ``folder`` (or the one a crash during the final
    rename left at ``<folder>.old``), or None."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / ".metadata").is_file() and (candidate / TRAINER_FILE).is_file():
            return candidate
    return None
