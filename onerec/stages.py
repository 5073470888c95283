"""The ``onerec-*`` commands: config name → typed schema, registered with Hydra in one place.

Every stage's ``main()`` calls :func:`hydra_main`, so a config file and its dataclass can
never drift apart silently (a test composes and builds every one of them).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from hydra.core.config_store import ConfigStore

from data_pipeline.cli import CONF_DIR, clear_errors, setup_logging

# config name → "module:DataclassName"
STAGES: dict[str, str] = {
    "prep": "data_pipeline.prep:PrepConfig",
    "train": "onerec.config:TrainConfig",
    "eval": "onerec.evaluate:EvalConfig",
    "reward": "onerec.train_reward:RewardConfig",
    "align": "onerec.align:AlignConfig",
    "simulate": "onerec.simulate:SimulateConfig",
    "export": "onerec.export:ExportConfig",
    "serve": "serving.cli:ServeCommandConfig",
    "demo": "onerec.demo:DemoConfig",
}


def schema_class(stage: str) -> type:
    module, name = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), name)


def register(stage: str) -> None:
    """Store the stage's dataclass as ``<stage>_schema`` (its YAML lists it in defaults)."""
    ConfigStore.instance().store(name=f"{stage}_schema", node=schema_class(stage))


def hydra_main(stage: str, command: str, body: Callable[[Any], None]) -> None:
    """Run ``body(config_dataclass)`` as a Hydra app reading ``conf/<stage>.yaml``."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    register(stage)

    @hydra.main(config_path=CONF_DIR, config_name=stage, version_base="1.3")
    @clear_errors(command)
    def run(cfg: DictConfig) -> None:
        setup_logging()
        body(to_dataclass(stage, cfg))

    run()


def to_dataclass(stage: str, cfg: Any) -> Any:
    """A composed DictConfig → the stage's dataclass (``_target_`` nodes instantiated)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if stage == "prep":
        obj.data = instantiate(cfg.data, _convert_="all")
    return obj
