"""Helpers for the data pipeline tests: the shared real data and running ``onerec-prep``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.examples import ExampleConfig
from data_pipeline.items import ItemEmbeddingConfig
from data_pipeline.prep import PrepConfig
from data_pipeline.semantic_ids import SemanticIdConfig
from data_pipeline.sessions import SessionConfig

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test when the shared data is not there."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file not found: {path}")
    return path


def run_prep(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``onerec-prep ARGS`` in a child process (the console script next to this python)."""
    script = Path(sys.executable).with_name("onerec-prep")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "data_pipeline"]
    # One BLAS thread: on a machine shared with other jobs OpenBLAS's spinning second
    # thread made the Beauty run 3x slower.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, *args, "show_progress=false"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def sequence_prep_config(data: object, out_dir: Path, history_length: int = 50, **overrides: object) -> PrepConfig:
    """The amazon_seq settings of conf/data/amazon_seq.yaml, with a small tokenizer."""
    return PrepConfig(
        data=data,
        out_dir=str(out_dir),
        sessions=SessionConfig(gap_ms=0, target_items=1, watch_time_quantile=0.0, require_engagement=False),
        examples=ExampleConfig(history_length=history_length),
        items=ItemEmbeddingConfig(dim=4, side_dim=2),
        semantic_ids=SemanticIdConfig(levels=2, codebook_size=4, iterations=5),
        show_progress=False,
        **overrides,  # type: ignore[arg-type]
    )
