"""NTP training: smoke runs of every model size, checkpoints, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipeline.cli import CONF_DIR, UserError
from onerec.checkpoint import BEST, LAST, load_run
from onerec.config import TrainConfig
from onerec.train import Trainer
from onerec.weight_average import WeightAverage
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


def test_weight_average_by_hand() -> None:
    layer = torch.nn.Linear(1, 1, bias=False)
    layer.register_buffer("counts", torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, decay=0.9)
    average.update(layer)  # the first update copies: 0
    for expected in (0.1, 0.19, 0.271):  # 0.9 · previous + 0.1 · 1
        with torch.no_grad():
            layer.weight.fill_(1.0)
        average.update(layer)
        assert average.model(layer).weight.item() == pytest.approx(expected)
    assert average.updates == 4
    layer.counts += 3  # buffers are the live model's, not averaged
    assert average.model(layer).counts.tolist() == [3, 3]
    assert layer.weight.item() == 1.0  # the live weights are untouched
    with pytest.raises(ValueError, match="decay=1.0"):
        WeightAverage(layer, decay=1.0)


@pytest.mark.parametrize("ema_decay", [0.0, 0.8])
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    ema_decay: float, tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed mid-way and resumed from its last checkpoint ends where an uninterrupted
    run does. With a weight average, raw and averaged weights both continue exactly; ``model``
    in the checkpoints (what later stages load) is the average, and the average is what
    validation scores."""
    def config(run: str):  # type: ignore[no-untyped-def]
        return tiny_train_config(tiny_bundle_dir, tmp_path / run, max_steps=10, eval_every=5, checkpoint_every=3, ema_decay=ema_decay)

    straight = Trainer(config("a"))
    straight.run()
    crashing = Trainer(config("b"))
    original = Trainer.train_step

    def step_then_crash(self: Trainer, batch):  # type: ignore[no-untyped-def]
        if self.state.step == 7:  # dies after step 7; the last checkpoint is step 6
            raise Crash("killed")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step_then_crash)
    with pytest.raises(Crash):
        crashing.run()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert torch.load(tmp_path / "b" / LAST, weights_only=False)["step"] == 6
    cfg = config("b")
    cfg.resume = True
    resumed = Trainer(cfg)
    resumed.run()
    assert resumed.state.step == 10
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "steps redone after the resume must not be logged twice"
    for mine, theirs in ((resumed.model, straight.model), (resumed.served_model(), straight.served_model())):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    saved = torch.load(tmp_path / "b" / LAST, weights_only=False)
    served = straight.served_model().state_dict()
    for key, value in saved["model"].items():
        torch.testing.assert_close(value, served[key], rtol=0, atol=1e-6, msg=key)
    if ema_decay > 0:
        assert saved["weight_average"] == {"decay": ema_decay, "updates": 10}
        raw = straight.model.state_dict()
        assert any(not torch.equal(saved["model"][k], raw[k]) for k in raw), "the average differs from the raw weights"
        for key, value in saved["train_model"].items():
            torch.testing.assert_close(value, raw[key], rtol=0, atol=1e-6, msg=key)
        # Validation scored the average: the same metric again from the saved weights.
        run = load_run(tmp_path / "a", which="last")
        logged = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
        last_valid = [r for r in logged if r["kind"] == "valid"][-1]
        assert last_valid["recall@10"] == pytest.approx(straight.validate_model(run.model)["recall@10"])
    else:
        assert "weight_average" not in saved and "train_model" not in saved


def test_a_weight_average_run_resumes_only_with_its_setting(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    Trainer(tiny_train_config(tiny_bundle_dir, tmp_path / "run", max_steps=3, eval_every=100, ema_decay=0.9)).run()
    cfg = tiny_train_config(tiny_bundle_dir, tmp_path / "run", max_steps=6, eval_every=100)
    cfg.resume = True
    with pytest.raises(UserError, match="ema_decay"):
        Trainer(cfg).run()
