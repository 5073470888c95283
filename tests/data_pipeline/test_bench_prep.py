"""The prep benchmark's path on a tiny log: parquet in, bundle out, no ground truth."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from benchmarks.bench_prep import LOG_COLUMNS, generate_log, run_pipeline
from data_pipeline.bundle import Bundle


def test_benchmark_path_runs_from_the_parquet_log_alone(tmp_path: Path) -> None:
    log = tmp_path / "log.parquet"
    generate_log(log, rows=2000, num_items=300, num_topics=8, seed=0)
    frame = pl.read_parquet(log)
    assert frame.columns == LOG_COLUMNS

    manifest, wall, cpu_s = run_pipeline(log, tmp_path / "bundle")
    bundle = Bundle.open(tmp_path / "bundle", verify=True)
    assert manifest["counts"]["rows_read"] == frame.height
    assert manifest["source_config"]["type"] == "TabularConfig"
    assert not bundle.has_ground_truth  # the synthetic ground truth plays no part
    assert set(cpu_s) == set(manifest["timings_s"]) and wall > 0
    assert manifest["config"]["semantic_ids"]["codebook_size"] == 256  # conf/prep.yaml, as onerec-prep
