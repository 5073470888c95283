"""Shared fixtures: small bundles built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from data_pipeline.examples import ExampleConfig
from data_pipeline.items import ItemEmbeddingConfig
from data_pipeline.prep import PrepConfig, prepare
from data_pipeline.semantic_ids import SemanticIdConfig
from data_pipeline.sessions import SessionConfig
from data_pipeline.sources.synthetic import SyntheticConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_prep_config(out_dir: Path, **synthetic: int) -> PrepConfig:
    """A synthetic log of a few hundred users: a bundle in about a second."""
    return PrepConfig(
        data=SyntheticConfig(num_users=synthetic.get("num_users", 400), num_items=synthetic.get("num_items", 300), num_topics=8, seed=synthetic.get("seed", 0)),
        out_dir=str(out_dir),
        sessions=SessionConfig(target_items=3, watch_time_quantile=0.2, require_engagement=False),
        examples=ExampleConfig(history_length=32),
        items=ItemEmbeddingConfig(dim=16, side_dim=4),
        semantic_ids=SemanticIdConfig(levels=3, codebook_size=16, iterations=10),
        show_progress=False,
    )


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Beam search on tiny tensors: one intra-op thread is faster, and on a busy 2-core machine
    OpenMP's barriers make two threads many times slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_bundle")
    prepare(tiny_prep_config(out))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
