"""``onerec-prep``: interaction logs → dataset bundle.

    onerec-prep data=<synthetic|amazon_seq|kuairand|movielens|csv> [data.path=FILE] out_dir=BUNDLE
"""

from __future__ import annotations

from data_pipeline.prep import PrepConfig, prepare, summary


def run(cfg: PrepConfig) -> None:
    print(summary(prepare(cfg), cfg.out_dir))


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("prep", "onerec-prep", run)


if __name__ == "__main__":
    main()
