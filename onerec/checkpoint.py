"""Run folders and checkpoints: atomic writes, exact resume, loading a trained model.

A run folder (from ``onerec-train`` or ``onerec-align``) holds::

    config.yaml      the resolved configuration (model, moe, trainer, generation, data_dir)
    last.pt          model, optimiser, scheduler, step, RNG states (for resume=true)
    best.pt          the weights with the best validation Recall@10
    metrics.jsonl    one JSON object per logged step / validation
    tb/              TensorBoard events

Every later stage accepts such a folder (``run_dir=``, ``runs=[...]``, ``init_run=``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.config import TrainConfig
from onerec.model import OneRec

CONFIG_FILE = "config.yaml"
LAST = "last.pt"
BEST = "best.pt"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    # Checkpoints hold RNG states and numpy arrays besides tensors: full unpickling.
    return torch.load(path, map_location="cpu", weights_only=False)


def save_run_config(cfg: TrainConfig, run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    # A plain (untyped) node, so that a stage may record its own settings beside it.
    node = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(cfg)))
    if extra:
        node = OmegaConf.merge(node, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(node))


@dataclass
class LoadedRun:
    """A trained model and what it needs: its config and its bundle."""

    model: OneRec
    config: TrainConfig
    bundle: Bundle
    session_length: int
    path: Path
    checkpoint: str


def read_run_config(run_dir: Path) -> TrainConfig:
    file = run_dir / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); make one with onerec-train run_dir={run_dir}")
    loaded = OmegaConf.load(file)
    schema = OmegaConf.structured(TrainConfig)
    # `key in schema` is False for a "???" (missing) field, so compare key lists.
    fields = set(schema.keys())
    known = {k: loaded[k] for k in loaded.keys() if k in fields}
    return OmegaConf.to_object(OmegaConf.merge(schema, known))  # type: ignore[return-value]


def build_model(cfg: TrainConfig, bundle: Bundle, session_length: int) -> OneRec:
    return OneRec(
        cfg.model,
        cfg.moe,
        bundle.codebook_sizes,
        bundle.num_items,
        session_length,
        dict(zip(bundle.user_feature_names, bundle.user_feature_cardinalities)),
    )


def session_length_of(cfg: TrainConfig, bundle: Bundle) -> int:
    m = cfg.generation.num_items or bundle.target_items
    if m > bundle.target_items:
        raise UserError(f"generation.num_items={m} is longer than the bundle's sessions ({bundle.target_items} items)")
    return m


def load_run(run_dir: str | Path, data_dir: str | None = None, which: str = "best") -> LoadedRun:
    """Load a run folder's model (``best.pt``, falling back to ``last.pt``)."""
    path = Path(run_dir).expanduser()
    cfg = read_run_config(path)
    bundle = Bundle.open(data_dir or cfg.data_dir)
    m = session_length_of(cfg, bundle)
    model = build_model(cfg, bundle, m)
    file = path / (BEST if which == "best" else LAST)
    if not file.is_file() and which == "best":
        file = path / LAST
    state = load_checkpoint(file)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model=model, config=cfg, bundle=bundle, session_length=m, path=path, checkpoint=file.name)
