"""Balanced residual k-means, the dedup level and the codebook report."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.semantic_ids import (
    SemanticIdConfig,
    balanced_assign,
    balanced_kmeans,
    balanced_sizes,
    build_semantic_ids,
    dedup_codes,
    squared_distances,
)


@pytest.mark.parametrize("n, k", [(10, 3), (12, 4), (100, 7), (257, 16), (64, 64), (1000, 256)])
def test_balanced_kmeans_cluster_sizes_are_n_over_k_or_one_more(n: int, k: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, 5))
    assignment, centroids, _ = balanced_kmeans(x, k, iterations=5, tolerance=1e-3, rng=np.random.default_rng(0))
    sizes = np.bincount(assignment, minlength=k)
    assert set(sizes) <= {n // k, n // k + 1}
    assert (sizes == n // k + 1).sum() == n % k
    np.testing.assert_allclose(centroids[0], x[assignment == 0].mean(0))


def test_balanced_sizes() -> None:
    assert balanced_sizes(10, 3).tolist() == [4, 3, 3]
    assert balanced_sizes(9, 3).tolist() == [3, 3, 3]
    assert balanced_sizes(2, 4).tolist() == [1, 1, 0, 0]


def test_balanced_assign_by_hand() -> None:
    # Rows are items, columns clusters.
    distances = np.asfortranarray([[1.0, 5.0], [2.0, 1.0], [3.0, 2.0], [4.0, 9.0]])
    sizes = np.array([2, 2])
    # Cluster 0 first takes its two nearest (items 0, 1); cluster 1 gets the rest.
    assert balanced_assign(distances, sizes, np.array([0, 1])).tolist() == [0, 0, 1, 1]
    # Cluster 1 first takes items 1 and 2; cluster 0 is left with 0 and 3.
    assert balanced_assign(distances, sizes, np.array([1, 0])).tolist() == [0, 1, 1, 0]
    assert balanced_assign(distances, np.array([3, 1]), np.array([1, 0])).tolist() == [0, 1, 0, 0]


def test_squared_distances_match_the_definition() -> None:
    rng = np.random.default_rng(1)
    x, c = rng.standard_normal((7, 3)), rng.standard_normal((4, 3))
    d = squared_distances(x, c)
    assert d.shape == (7, 4) and d.flags.f_contiguous  # one cluster's column is contiguous
    np.testing.assert_allclose(d, ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)


def test_balanced_kmeans_finds_separated_blobs_and_converges() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (25, 2)) for c in centres])
    assignment, centroids, ran = balanced_kmeans(x, 4, iterations=20, tolerance=1e-3, rng=np.random.default_rng(0))
    assert ran < 20
    for blob in range(4):  # each cluster is exactly one blob
        assert len(set(assignment[blob * 25 : (blob + 1) * 25])) == 1
    np.testing.assert_allclose(np.sort(np.abs(centroids).max(1)), [10, 10, 10, 10], atol=0.5)


def test_balanced_kmeans_settles_on_unstructured_data() -> None:
    # The turn order is fixed per level, so the assignment settles (with a new order
    # every iteration it never did: ~60-85% of items changed cluster each time).
    x = np.random.default_rng(0).standard_normal((2000, 8))
    _, _, ran = balanced_kmeans(x, 16, iterations=200, tolerance=1e-3, rng=np.random.default_rng(0))
    assert ran < 200


def test_dedup_codes_rank_items_inside_collision_groups() -> None:
    codes = np.array([[0, 0], [0, 1], [0, 0], [1, 1], [0, 0], [0, 1]])
    rank, size = dedup_codes(codes)
    assert rank.tolist() == [0, 0, 1, 0, 2, 1]
    assert size.tolist() == [3, 2, 3, 1, 3, 2]


def test_dedup_level_makes_tuples_unique_and_report_counts_collisions() -> None:
    # 6 items, K = 2, one level: two clusters of 3, so every item collides.
    embeddings = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
    ids = build_semantic_ids(embeddings, SemanticIdConfig(levels=1, codebook_size=2, iterations=5))
    assert ids.dedup_level and ids.codebook_sizes == [2, 3]
    assert ids.codes.shape == (6, 2)
    assert len({tuple(row) for row in ids.codes}) == 6
    assert ids.codes[:3, 0].tolist() == [ids.codes[0, 0]] * 3 and sorted(ids.codes[:3, 1]) == [0, 1, 2]
    report = ids.report
    assert (report["items_sharing_a_tuple"], report["collision_rate"], report["largest_collision_group"]) == (6, 1.0, 3)
    level = report["levels"][0]
    assert (level["codes_used"], level["min_cluster"], level["max_cluster"]) == (2, 3, 3)


def test_no_dedup_level_without_collisions_and_codebook_capped_at_n() -> None:
    embeddings = np.random.default_rng(0).standard_normal((5, 3))
    ids = build_semantic_ids(embeddings, SemanticIdConfig(levels=2, codebook_size=8, iterations=5))
    # K is capped at 5 items: every cluster holds one item, so level 1 is already unique.
    assert ids.codebook_sizes == [5, 5]
    assert sorted(ids.codes[:, 0]) == [0, 1, 2, 3, 4]
    assert not ids.dedup_level and ids.codes.shape == (5, 2)
    assert (ids.report["collision_rate"], ids.report["largest_collision_group"]) == (0.0, 1)
    assert [len(c) for c in ids.centroids] == [5, 5]


def test_codebook_usage_report_on_uneven_clusters() -> None:
    embeddings = np.random.default_rng(3).standard_normal((10, 4))
    ids = build_semantic_ids(embeddings, SemanticIdConfig(levels=2, codebook_size=4, iterations=5))
    for level in ids.report["levels"]:  # 10 items into 4 clusters: sizes 3, 3, 2, 2
        assert (level["codes_used"], level["min_cluster"], level["max_cluster"]) == (4, 2, 3)
    assert ids.report["items"] == 10
    assert len({tuple(row) for row in ids.codes}) == 10


def test_semantic_id_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="semantic_ids.codebook_size must be >= 2, got 1"):
        SemanticIdConfig(codebook_size=1)
    with pytest.raises(ValueError, match="at least 2 items, got 1"):
        build_semantic_ids(np.zeros((1, 3)), SemanticIdConfig())
