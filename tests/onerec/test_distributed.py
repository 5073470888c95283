"""``onerec-train`` under torchrun: 2 CPU processes (gloo) with sharded tables.

The same Hydra overrides drive one process (in this test process) and torchrun; with
dropout 0 and the same global batches, the two runs start from the same weights and see
the same data, so their losses agree (exactly until the tables' optimisers differ: fused
Adagrad on CPU under torchrun, AdamW in one process). A run killed after 4 steps and
resumed from its sharded checkpoint ends with exactly the weights of an uninterrupted run.
About 2 minutes on two shared cores (5 torchrun launches of ~25 s, mostly imports).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipeline.cli import CONF_DIR, UserError
from data_pipeline.prep import prepare
from onerec.checkpoint import BEST, LAST, load_run
from onerec.config import TrainConfig
from onerec.data import epoch_batches
from onerec.train import PLAN_FILE, SHARDED_LAST, Trainer
from tests.conftest import tiny_prep_config

STEPS = 8
OVERRIDES = [
    "model=tiny",
    "model.dropout=0",
    "trainer.batch_size=32",
    "trainer.log_every=1",
    "trainer.eval_every=100",  # validate once, at the end
    "trainer.eval_users=20",
    "trainer.warmup_steps=5",  # > the kill step: the first run's schedule equals the full run's
    "trainer.threads=1",  # one thread per process: OpenMP spinning across processes is ruinous
    "trainer.show_progress=false",
    "generation.beam_size=10",
]


def compose_train(bundle: Path, run_dir: Path, *extra: str) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="train_schema", node=TrainConfig)
        node = compose(config_name="train", overrides=[f"data_dir={bundle}", f"run_dir={run_dir}", *OVERRIDES, *extra])
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def torchrun(bundle: Path, run_dir: Path, *extra: str, processes: int = 2) -> None:
    """``torchrun --nproc-per-node 2 -m onerec.train ...`` (a free port: --standalone)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "onerec.train", f"data_dir={bundle}", f"run_dir={run_dir}", *OVERRIDES, *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.fixture(scope="module")
def two_rank_run(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("torchrun") / "straight"
    torchrun(tiny_bundle_dir, run_dir, f"trainer.max_steps={STEPS}")
    return run_dir


def test_ranks_take_columns_of_the_single_process_batches() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    single = epoch_batches(lengths, 64, seed=3, epoch=1)
    shares = [epoch_batches(lengths, 64, seed=3, epoch=1, rank=r, world_size=4) for r in range(4)]
    assert all(s.shape == (single.shape[0], 16) for s in shares)
    for step in range(single.shape[0]):
        assert sorted(np.concatenate([s[step] for s in shares]).tolist()) == sorted(single[step].tolist())
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(lengths, 30, seed=0, epoch=0, world_size=4)


def test_two_ranks_with_sharded_tables_match_one_process(two_rank_run: Path, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    single = Trainer(compose_train(tiny_bundle_dir, tmp_path / "single", f"trainer.max_steps={STEPS}"))
    single.run()
    one, two = train_losses(tmp_path / "single"), train_losses(two_rank_run)
    assert sorted(two) == list(range(1, STEPS + 1))
    # Same weights and global batch: the first two losses agree (the first table updates
    # of Adagrad and Adam are both lr * sign(gradient)).
    for step in (1, 2):
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    # Afterwards the tables' optimisers differ (fused Adagrad vs AdamW): a small drift.
    for step in range(1, STEPS + 1):
        assert two[step] == pytest.approx(one[step], rel=2e-2), step
    plan = (two_rank_run / PLAN_FILE).read_text()
    assert "item" in plan and ("row_wise" in plan or "table_wise" in plan)
    assert "rank:1" in plan, "the tables were not sharded over both ranks"
    # The run folder is read by later stages like a single-process one.
    run = load_run(two_rank_run)
    assert set(run.model.state_dict()) == set(single.model.state_dict())
    valid = [json.loads(l) for l in (two_rank_run / "metrics.jsonl").read_text().splitlines() if '"valid"' in l]
    assert [v["step"] for v in valid] == [STEPS] and valid[0]["legal_rate"] == 1.0


def test_a_checkpoint_saved_by_two_ranks_resumes_exactly(two_rank_run: Path, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    torchrun(tiny_bundle_dir, run_dir, "trainer.max_steps=4")
    assert (run_dir / SHARDED_LAST / ".metadata").is_file()
    assert torch.load(run_dir / LAST, weights_only=False)["step"] == 4
    torchrun(tiny_bundle_dir, run_dir, f"trainer.max_steps={STEPS}", "resume=true")

    straight = torch.load(two_rank_run / LAST, weights_only=False)
    resumed = torch.load(run_dir / LAST, weights_only=False)
    assert resumed["step"] == straight["step"] == STEPS
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert train_losses(run_dir) == pytest.approx(train_losses(two_rank_run), abs=1e-6)
    assert (run_dir / BEST).is_file()


def test_a_single_process_refuses_a_torchrun_checkpoint(two_rank_run: Path, tiny_bundle_dir: Path) -> None:
    cfg = compose_train(tiny_bundle_dir, two_rank_run, f"trainer.max_steps={STEPS + 1}", "resume=true")
    with pytest.raises(UserError, match="torchrun"):
        Trainer(cfg).run()


def test_ranks_read_only_their_own_shards(tmp_path: Path) -> None:
    """trainer.shard_examples: each rank trains from its own shards of a sharded bundle."""
    cfg = tiny_prep_config(tmp_path / "bundle")
    prepare(dataclasses.replace(cfg, examples=dataclasses.replace(cfg.examples, shard_rows=400)))
    assert len(list((tmp_path / "bundle").glob("train-*.parquet"))) >= 2
    torchrun(tmp_path / "bundle", tmp_path / "run", "trainer.max_steps=3", "trainer.shard_examples=true")
    assert sorted(train_losses(tmp_path / "run")) == [1, 2, 3]
    assert (tmp_path / "run" / BEST).is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF_DIR) / "trainer").glob("*.yaml")))
def test_every_trainer_config_composes(name: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "bundle", tmp_path / "run", f"trainer={name}")
    assert cfg.trainer.batch_size > 0 and cfg.trainer.table_optimizer == "auto"
    assert cfg.trainer.device == ("cpu" if name == "cpu" else "cuda")
