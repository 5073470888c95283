"""Every primary config composes against its typed schema and builds its dataclass."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipeline.cli import CONF_DIR
from onerec.stages import STAGES, register, schema_class, to_dataclass

# Values for the fields a user must give (``???`` in the YAML).
REQUIRED = {
    "prep": [],
    "train": ["data_dir=/tmp/bundle"],
    "eval": ["run_dir=/tmp/run"],
    "reward": ["data_dir=/tmp/bundle"],
    "align": ["data_dir=/tmp/bundle", "init_run=/tmp/run", "reward_run=/tmp/reward"],
    "simulate": ["data_dir=/tmp/bundle", "runs=[/tmp/run]"],
    "export": ["run_dir=/tmp/run", "out_dir=/tmp/artefact"],
    "serve": ["artefact=/tmp/artefact"],
    "demo": [],
}


def test_every_stage_has_a_config_file() -> None:
    files = {p.stem for p in Path(CONF_DIR).glob("*.yaml")} - {"hydra_defaults"}
    assert files == set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_config_composes_and_builds(stage: str) -> None:
    register(stage)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=stage, overrides=REQUIRED[stage])
    assert not OmegaConf.missing_keys(cfg), f"{stage}: unset required values {OmegaConf.missing_keys(cfg)}"
    built = to_dataclass(stage, cfg)
    assert isinstance(built, schema_class(stage))


@pytest.mark.parametrize("source", ["synthetic", "amazon_seq", "kuairand", "movielens", "csv"])
def test_every_data_source_instantiates(source: str) -> None:
    register("prep")
    overrides = [f"data={source}"] + ([] if source == "synthetic" else ["data.path=/tmp/log.csv"])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="prep", overrides=overrides)
    prep = to_dataclass("prep", cfg)
    assert callable(getattr(prep.data, "read"))
    if source == "amazon_seq":
        # A source may override session defaults: Amazon sessions are single items.
        assert prep.sessions.target_items == 1 and prep.sessions.gap_ms == 0


@pytest.mark.parametrize("experiment", [p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")])
def test_experiments_compose(experiment: str) -> None:
    register("train")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data_dir=/tmp/bundle", f"experiment={experiment}"])
    assert isinstance(to_dataclass("train", cfg), schema_class("train"))
