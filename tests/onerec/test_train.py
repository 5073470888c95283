"""NTP training: smoke runs of every model size, checkpoints, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipeline.cli import CONF_DIR
from onerec.checkpoint import BEST, LAST, load_run
from onerec.config import TrainConfig
from onerec.train import Trainer
from tests.onerec.helpers import tiny_train_config


class Crash(RuntimeError):
    pass


def test_training_reduces_the_loss_and_writes_a_run_folder(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(tiny_bundle_dir, tmp_path / "run", max_steps=40, lr=3e-3, eval_every=20)
    summary = Trainer(cfg).run()
    assert summary["steps"] == 40
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert train[-1]["ntp"] < train[0]["ntp"] - 0.3
    assert [r["step"] for r in valid] == [20, 40]
    assert all(r["legal_rate"] == 1.0 for r in valid)
    assert train[-1]["tokens_per_s"] > 0
    for name in (BEST, LAST, "config.yaml", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    # The run folder is self-describing: it loads without the training config.
    run = load_run(tmp_path / "run")
    assert run.model.config.d_model == cfg.model.d_model and not run.model.training


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = Trainer(tiny_train_config(tiny_bundle_dir, tmp_path / "a", max_steps=12, eval_every=100, checkpoint_every=4))
    straight.run()

    crashing = Trainer(tiny_train_config(tiny_bundle_dir, tmp_path / "b", max_steps=12, eval_every=100, checkpoint_every=4))
    original = Trainer.train_step

    def step_then_crash(self: Trainer, batch):  # type: ignore[no-untyped-def]
        if self.state.step == 6:  # dies after step 6; the last checkpoint is step 4
            raise Crash("killed")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step_then_crash)
    with pytest.raises(Crash):
        crashing.run()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert torch.load(tmp_path / "b" / LAST, weights_only=False)["step"] == 4

    cfg = tiny_train_config(tiny_bundle_dir, tmp_path / "b", max_steps=12, eval_every=100, checkpoint_every=4)
    cfg.resume = True
    resumed = Trainer(cfg)
    resumed.run()
    assert resumed.state.step == 12
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "steps redone after the resume must not be logged twice"


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_every_model_config_trains_a_few_steps(size: str, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="train_schema", node=TrainConfig)
        node = compose(
            config_name="train",
            overrides=[
                f"data_dir={tiny_bundle_dir}", f"run_dir={tmp_path / size}", f"model={size}",
                "trainer.max_steps=2", "trainer.batch_size=8", "trainer.eval_users=8", "trainer.show_progress=false",
                "generation.beam_size=10",
            ],
        )
    cfg: TrainConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    summary = Trainer(cfg).run()
    assert summary["steps"] == 2
    assert (tmp_path / size / BEST).is_file()
