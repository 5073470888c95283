"""``onerec-prep``: interaction logs → dataset bundle.

    onerec-prep data=<synthetic|amazon_seq|kuairand|movielens|csv> [data.path=FILE] out_dir=BUNDLE
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data_pipeline.cli import CONF_DIR, clear_errors, setup_logging
from data_pipeline.prep import PrepConfig, prepare, summary

ConfigStore.instance().store(name="prep_schema", node=PrepConfig)


def build_config(cfg: DictConfig) -> PrepConfig:
    """DictConfig (validated against :class:`PrepConfig`) → dataclasses, source built."""
    prep: PrepConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    prep.data = instantiate(cfg.data, _convert_="all")
    return prep


@hydra.main(config_path=CONF_DIR, config_name="prep", version_base="1.3")
@clear_errors("onerec-prep")
def main(cfg: DictConfig) -> None:
    setup_logging()
    prep = build_config(cfg)
    manifest = prepare(prep)
    print(summary(manifest, prep.out_dir))


if __name__ == "__main__":
    main()
