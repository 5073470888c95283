"""The offline simulation report: a smoke run, determinism, and its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onerec.simulate import SimulateConfig, expand_runs, simulate
from onerec.train import Trainer
from tests.onerec.helpers import tiny_train_config


@pytest.fixture(scope="module")
def ntp_run(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("simulate")
    Trainer(tiny_train_config(tiny_bundle_dir, root / "ntp", max_steps=20, eval_every=100)).run()
    return root / "ntp"


def _config(bundle: Path, run: Path, out: Path) -> SimulateConfig:
    return SimulateConfig(
        data_dir=str(bundle), runs=[str(run)], out_dir=str(out), baselines=["popularity", "random"],
        simulator="ground_truth", users=40, sessions_per_user=3, beam_size=4, n_resamples=200, show_progress=False,
    )


def test_report_is_complete_and_deterministic(tiny_bundle_dir: Path, ntp_run: Path, tmp_path: Path) -> None:
    first = simulate(_config(tiny_bundle_dir, ntp_run, tmp_path / "a"))
    second = simulate(_config(tiny_bundle_dir, ntp_run, tmp_path / "b"))
    assert first["models"] == second["models"] and first["gains"] == second["gains"]
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["baseline"] == "ntp" and saved["simulator"] == "ground_truth"
    assert set(saved["models"]) == {"ntp", "popularity", "random"}
    assert set(saved["gains"]) == {"popularity", "random"}
    for name, row in saved["models"].items():
        assert row["legal_rate"] == 1.0
        assert row["swt_max"] >= row["swt_mean"] > 0, name
        assert 0 <= row["vtr_mean"] <= 1 and 0 <= row["ltr_mean"] <= 1
    # Baselines serve one session: their mean and max coincide.
    assert saved["models"]["random"]["swt_mean"] == pytest.approx(saved["models"]["random"]["swt_max"])
    gain = saved["gains"]["random"]
    assert gain["ci95"][0] <= gain["swt_rel"] <= gain["ci95"][1]
    for plot in saved["plots"]:
        assert (tmp_path / "a" / plot).stat().st_size > 1000
    assert "| ntp | (baseline)" in (tmp_path / "a" / "report.md").read_text()


def test_the_random_baseline_scores_what_the_ground_truth_says(tiny_bundle_dir: Path, ntp_run: Path, tmp_path: Path) -> None:
    """Cross-check one row by hand: the random sessions' expected watch time, recomputed
    from the bundle's ground truth, equals the report's swt_mean."""
    from data_pipeline.bundle import Bundle
    from onerec.simulate import baseline_sessions, simulated_users

    cfg = _config(tiny_bundle_dir, ntp_run, tmp_path / "r")
    report = simulate(cfg)
    bundle = Bundle.open(tiny_bundle_dir)
    examples = simulated_users(bundle, bundle.history_length, bundle.target_items, cfg.users, cfg.seed)
    sessions = baseline_sessions("random", bundle, examples, cfg, bundle.target_items)[:, 0]
    truth = bundle.ground_truth()
    expected = truth.session_watch_ms(examples.users, sessions).mean()
    assert report["models"]["random"]["swt_mean"] == pytest.approx(expected, rel=1e-9)


def test_align_runs_expand_into_iterations(tmp_path: Path) -> None:
    for k in (0, 1, 2):
        (tmp_path / "ipa" / f"iter_{k}").mkdir(parents=True)
    (tmp_path / "ntp").mkdir()
    names = [n for n, _ in expand_runs([str(tmp_path / "ntp"), str(tmp_path / "ipa")], True)]
    assert names == ["ntp", "ipa/iter_1", "ipa/iter_2"]
    assert [n for n, _ in expand_runs([str(tmp_path / "ipa")], True)] == ["ipa/iter_0", "ipa/iter_1", "ipa/iter_2"]
    assert np.all([n for n, _ in expand_runs([str(tmp_path / "ipa")], False)] == ["ipa"])
