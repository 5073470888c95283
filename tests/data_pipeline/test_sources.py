"""Every source adapter on small inputs: real KuaiRand rows, files the tests write, and
the synthetic generator with its ground truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_pipeline.bundle import Bundle
from data_pipeline.ground_truth import GroundTruth, _sigmoid
from data_pipeline.ingest import ingest
from data_pipeline.items import ItemEmbeddingConfig
from data_pipeline.prep import PrepConfig, prepare
from data_pipeline.schema import TooManyRejectsError
from data_pipeline.semantic_ids import SemanticIdConfig
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from data_pipeline.sources.kuairand import KuaiRandConfig
from data_pipeline.sources.synthetic import SyntheticConfig
from data_pipeline.sources.tabular import MovieLensConfig, TabularConfig
from tests.data_pipeline.conftest import run_prep, sequence_prep_config, shared_file


def _events(ingested) -> list[tuple]:  # type: ignore[no-untyped-def]
    """(user_id, item_id, timestamp, ...) rows in log order, with the original ids."""
    return (
        ingested.interactions.join(ingested.users, on="user_idx")
        .join(ingested.items, on="item_idx")
        .sort("user_idx", "timestamp")
        .select("user_id", "item_id", pl.exclude("user_id", "item_id", "user_idx", "item_idx"))
        .rows()
    )


# ---------------------------------------------------------------- Amazon sequence files

AMAZON = "1 10 11 12 13\n2 11 12 x 14\n3\n4 10 13 12\n"


def test_amazon_seq_reads_positions_and_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text(AMAZON)
    source = AmazonSeqConfig(path=str(path)).read()
    assert source.sequence_only
    ingested = ingest(source, max_reject_share=0.2)
    # 11 tokens after the user ids + 1 line without items = 12 rows; 2 rejected (2/12 < 20%).
    assert (ingested.report.rows_read, ingested.report.rows_kept) == (12, 10)
    assert ingested.rejects.rows() == [
        (2, "non_integer_id", '{"line":"2 11 12 x 14"}'),
        (3, "line_without_items", '{"line":"3"}'),
    ]
    # The timestamp is the position in the line: the bad token keeps its slot (2).
    assert _events(ingested) == [
        ("1", "10", 0), ("1", "11", 1), ("1", "12", 2), ("1", "13", 3),
        ("2", "11", 0), ("2", "12", 1), ("2", "14", 3),
        ("4", "10", 0), ("4", "13", 1), ("4", "12", 2),
    ]  # fmt: skip
    with pytest.raises(TooManyRejectsError, match="16.7% of rows rejected"):
        ingest(source, max_reject_share=0.1)


def test_amazon_seq_run_continues_under_the_reject_limit(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text(AMAZON)
    manifest = prepare(sequence_prep_config(AmazonSeqConfig(path=str(path)), tmp_path / "bundle", max_reject_share=0.2))
    assert manifest["rejects"]["by_reason"] == {"line_without_items": 1, "non_integer_id": 1}
    assert manifest["counts"]["examples"] == {"train": 1, "valid": 3, "test": 3}
    rejects = pl.read_csv(tmp_path / "bundle" / "rejects.csv")
    assert rejects["row_number"].to_list() == [2, 3]


def test_amazon_seq_over_the_reject_limit_stops_the_command(tmp_path: Path) -> None:
    (tmp_path / "seq.txt").write_text(AMAZON)
    result = run_prep(["data=amazon_seq", "data.path=seq.txt", "max_reject_share=0.1", "out_dir=bundle"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("onerec-prep: error: seq.txt: 16.7% of rows rejected (limit 10.0%)")
    assert "'line_without_items' (1 rows)" in result.stderr  # a tie, broken alphabetically
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- KuaiRand

KUAIRAND = "kuairand/log_random_4_22_to_5_08_1k.csv"
# Data rows 1-20 (user 0) and 40968-40993 (user 940), which hold the source's one
# duplicate row: 40984 repeats 40983.
KUAIRAND_ROWS = list(range(1, 21)) + list(range(40968, 40994))


@pytest.fixture
def kuairand_log(tmp_path: Path) -> Path:
    lines = shared_file(KUAIRAND).read_text().splitlines()
    path = tmp_path / "log.csv"
    path.write_text("\n".join([lines[0]] + [lines[r] for r in KUAIRAND_ROWS]) + "\n")
    return path


def test_kuairand_maps_columns_and_rejects_the_duplicate(kuairand_log: Path) -> None:
    source = KuaiRandConfig(path=str(kuairand_log)).read()
    assert source.columns == [
        "user_id", "item_id", "timestamp", "watch_time_ms", "duration_ms", "like", "follow", "share", "comment"
    ]  # fmt: skip
    ingested = ingest(source, max_reject_share=0.05)
    assert ingested.report.rows_read == 46
    assert ingested.report.rejected_by_reason == {"duplicate_event": 1}
    # Rows 40983 and 40984 of the source are rows 36 and 37 here; the second copy goes.
    (row_number, reason, raw), = ingested.rejects.rows()
    assert (row_number, reason) == (37, "duplicate_event")
    assert '"user_id":"940","item_id":"4121"' in raw
    # The first row of the log, by hand: 0,5543,...,time_ms 1651314030792, play 863, duration 30066.
    assert _events(ingested)[0] == ("0", "5543", 1651314030792, 863.0, 30066.0, 0, 0, 0, 0)
    assert ingested.users["user_id"].to_list() == ["0", "940"]


def test_kuairand_side_features_reach_the_bundle(kuairand_log: Path, tmp_path: Path) -> None:
    config = KuaiRandConfig(
        path=str(kuairand_log),
        video_features=str(shared_file("kuairand/video_features_basic_pure.csv")),
        user_features=str(shared_file("kuairand/user_features_pure.csv")),
    )
    source = config.read()
    videos = source.item_features
    assert videos is not None and videos.height == 7583
    video_1836 = videos.filter(pl.col("item_id") == "1836").row(0, named=True)
    assert video_1836["tags"] == ["62", "4"] and video_1836["duration_ms"] == 132433.0
    assert video_1836["author_id"] == "1006864"

    manifest = prepare(
        PrepConfig(
            data=config,
            out_dir=str(tmp_path / "bundle"),
            max_reject_share=0.05,
            items=ItemEmbeddingConfig(dim=4, side_dim=4),
            semantic_ids=SemanticIdConfig(levels=2, codebook_size=8, iterations=5),
            show_progress=False,
        ),
        source=source,
    )
    bundle = Bundle.open(tmp_path / "bundle", verify=True)
    # user 0 registered 730+ days ago, user 940 181-365: codes by sorted value, 0 = unknown.
    users = bundle.users.sort("user_idx")
    assert users["user_id"].to_list() == ["0", "940"]
    assert users["uf_register_days_range"].to_list() == [2, 1]
    assert users["uf_user_active_degree"].to_list() == [1, 1]  # both full_active
    assert manifest["user_features"]["register_days_range"] == 3
    items = bundle.items
    assert items.filter(pl.col("item_id") == "5543")["duration_ms"].item() == 30066.0  # as in the log
    assert manifest["item_embeddings"]["side_features"] > 0


# ---------------------------------------------------------------- MovieLens and generic tables

MOVIELENS_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964982224\n2,10,5.0,964983000\n"
MOVIELENS_DAT = "1::10::4.0::964982703\n1::20::3.5::964982224\n2::10::5.0::964983000\n3::30\n"
MOVIELENS_EVENTS = [
    ("1", "20", 964982224000, 3.5),  # seconds -> ms, in time order
    ("1", "10", 964982703000, 4.0),
    ("2", "10", 964983000000, 5.0),
]


def test_movielens_csv_and_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(MOVIELENS_CSV)
    (tmp_path / "ratings.dat").write_text(MOVIELENS_DAT)
    from_csv = ingest(MovieLensConfig(path=str(tmp_path / "ratings.csv")).read(), max_reject_share=0.0)
    from_dat = ingest(MovieLensConfig(path=str(tmp_path / "ratings.dat")).read(), max_reject_share=0.3)
    assert _events(from_csv) == MOVIELENS_EVENTS
    assert _events(from_dat) == MOVIELENS_EVENTS
    assert from_dat.rejects.select("row_number", "reason").rows() == [(4, "bad_timestamp")]


def test_csv_with_a_column_map_and_seconds(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("uid,iid,ts,play,extra\na,x,1.5,100,zzz\na,y,2,200,\nb,x,soon,50,\n")
    config = TabularConfig(
        path=str(path),
        columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts", "watch_time_ms": "play"},
        timestamp_unit="s",
    )
    ingested = ingest(config.read(), max_reject_share=0.5)
    assert ingested.interactions.columns == ["user_idx", "item_idx", "timestamp", "watch_time_ms"]
    assert _events(ingested) == [("a", "x", 1500, 100.0), ("a", "y", 2000, 200.0)]
    (row_number, reason, raw), = ingested.rejects.rows()
    assert (row_number, reason) == (3, "bad_timestamp")
    assert '"timestamp":"soon"' in raw  # scaling leaves an unparsable value as read


def test_parquet_keeps_its_types_and_is_still_validated(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "user": [7, 7, 8, 8],
            "item": [1, 2, 1, 3],
            "when": [dt.datetime(2022, 4, 8, 0, 0, s) for s in (1, 2, 3, 4)],
            "secs": [1, 2, 3, 4],
            "liked": [0.0, 1.0, 0.5, 1.0],
            "follow": [0, 1, 1, 300],
        },
        schema_overrides={"follow": pl.Int16},
    ).write_parquet(path)
    by_date = TabularConfig(
        path=str(path), columns={"user_id": "user", "item_id": "item", "timestamp": "when", "like": "liked"}
    )
    ingested = ingest(by_date.read(), max_reject_share=0.5)
    start = 1_649_376_000_000  # 2022-04-08 in ms since the epoch
    assert _events(ingested) == [("7", "1", start + 1000, 0), ("7", "2", start + 2000, 1), ("8", "3", start + 4000, 1)]
    assert ingested.rejects.select("row_number", "reason").rows() == [(3, "bad_like")]  # 0.5 is not a flag

    in_seconds = TabularConfig(
        path=str(path),
        columns={"user_id": "user", "item_id": "item", "timestamp": "secs", "follow": "follow"},
        timestamp_unit="s",
    )
    ingested = ingest(in_seconds.read(), max_reject_share=0.5)
    assert [row[2] for row in _events(ingested)] == [1000, 2000, 3000]
    assert ingested.rejects.select("row_number", "reason").rows() == [(4, "bad_follow")]  # 300 is not a flag


# ---------------------------------------------------------------- synthetic

SMALL_WORLD = {"num_users": 60, "num_items": 80, "num_topics": 4, "seed": 7}


def test_synthetic_log_is_deterministic_in_its_seed() -> None:
    first = SyntheticConfig(**SMALL_WORLD).read().interactions.collect()
    again = SyntheticConfig(**SMALL_WORLD).read().interactions.collect()
    other = SyntheticConfig(**{**SMALL_WORLD, "seed": 8}).read().interactions.collect()
    assert first.equals(again)
    assert not first.equals(other)
    assert first["user_id"].n_unique() == 60 and first["item_id"].max() < 80


def test_synthetic_rows_sets_the_log_size() -> None:
    log = SyntheticConfig(rows=4000, num_items=80, num_topics=4).read().interactions.collect()
    assert log["user_id"].n_unique() == 50  # 4000 / (10 sessions * 8 items)
    assert 3600 < log.height < 4400


def test_synthetic_watch_times_follow_the_ground_truth() -> None:
    source = SyntheticConfig(**SMALL_WORLD).read()
    truth = source.ground_truth
    assert truth is not None
    log = source.interactions.collect()
    users, items = log["user_id"].to_numpy(), log["item_id"].to_numpy()

    # The logged watch times average to the ground truth's expectations (z-score of the
    # mean difference; the log is fixed by its seed).
    diff = log["watch_time_ms"].to_numpy() - truth.expected_watch_ms(users, items)
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size)
    likes = log["like"].to_numpy() - truth.engagement_prob(users, items, "like")
    assert abs(likes.mean()) < 4 * likes.std() / np.sqrt(likes.size)

    # For one pair, the quadrature expectation matches many draws of the response model.
    user, item = users[0], items[0]
    eps = np.random.default_rng(0).standard_normal(200_000)
    z = truth.watch_logit(np.array([user]), np.array([item]))[0]
    draws = truth.duration_ms[item] * _sigmoid(z + truth.coefficients.watch_noise * eps)
    expected = truth.expected_watch_ms(np.array([user]), np.array([item]))[0]
    assert abs(draws.mean() - expected) < 4 * draws.std() / np.sqrt(draws.size)
    assert 0 < expected < truth.duration_ms[item]


def test_ground_truth_save_load_round_trip(tmp_path: Path) -> None:
    truth = SyntheticConfig(**SMALL_WORLD).read().ground_truth
    assert truth is not None
    truth.save(tmp_path / "truth.npz")
    loaded = GroundTruth.load(tmp_path / "truth.npz")
    for name in ("user_vec", "item_vec", "item_quality", "duration_ms"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(truth, name))
    assert loaded.coefficients == truth.coefficients
    users, items = np.arange(5), np.arange(5)
    np.testing.assert_array_equal(loaded.expected_watch_ms(users, items), truth.expected_watch_ms(users, items))


def test_bundle_ground_truth_is_indexed_like_the_bundle(tmp_path: Path) -> None:
    config = SyntheticConfig(**SMALL_WORLD)
    truth = config.read().ground_truth
    assert truth is not None
    prepare(
        PrepConfig(
            data=config,
            out_dir=str(tmp_path / "bundle"),
            items=ItemEmbeddingConfig(dim=4, side_dim=2),
            semantic_ids=SemanticIdConfig(levels=2, codebook_size=8, iterations=3),
            show_progress=False,
        )
    )
    bundle = Bundle.open(tmp_path / "bundle")
    reindexed = bundle.ground_truth()
    # Bundle user k is generator user int(user_id[k]) ('10' sorts before '2').
    generator_users = np.array([int(u) for u in bundle.user_ids()])
    generator_items = np.array([int(i) for i in bundle.item_ids()])
    assert list(generator_users[:3]) == [0, 1, 10]
    np.testing.assert_array_equal(reindexed.user_vec, truth.user_vec[generator_users])
    np.testing.assert_array_equal(reindexed.duration_ms, truth.duration_ms[generator_items])
