"""Item embeddings: co-occurrence counts and PPMI by hand, the randomised SVD, and the
training cutoff that keeps evaluation sessions out of the embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from data_pipeline.bundle import Bundle
from data_pipeline.items import cooccurrence, orthonormal_basis, ppmi, randomized_svd
from data_pipeline.prep import prepare
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from tests.data_pipeline.conftest import sequence_prep_config


def _positives(sequences: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(user, item) for user, items in sequences.items() for item in items]
    return pl.DataFrame(rows, schema={"user_idx": pl.Int32, "item_idx": pl.Int32}, orient="row")


def test_cooccurrence_by_hand() -> None:
    # User 0: 0 1 2 0, user 1: 2 3.
    #   distance 1: (0,1) (1,2) (2,0) and (2,3): weight 1 each
    #   distance 2: (0,2) (1,0): weight 1/2 each
    #   distance 3: (0,0): an item never pairs with itself
    #   user 0's last item and user 1's first are not neighbours.
    counts = cooccurrence(_positives({0: [0, 1, 2, 0], 1: [2, 3]}), num_items=4, window=3).toarray()
    expected = np.array(
        [
            [0.0, 1.5, 1.5, 0.0],
            [1.5, 0.0, 1.0, 0.0],
            [1.5, 1.0, 0.0, 1.0],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )
    np.testing.assert_allclose(counts, expected)
    window_1 = cooccurrence(_positives({0: [0, 1, 2, 0], 1: [2, 3]}), num_items=4, window=1).toarray()
    np.testing.assert_allclose(window_1, [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]])


def test_cooccurrence_does_not_need_users_contiguous() -> None:
    # The same two sequences, their rows interleaved (each user's still in time order).
    interleaved = pl.DataFrame(
        {"user_idx": [0, 1, 0, 1, 0, 0], "item_idx": [0, 2, 1, 3, 2, 0]},
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32},
    )
    contiguous = _positives({0: [0, 1, 2, 0], 1: [2, 3]})
    np.testing.assert_allclose(
        cooccurrence(interleaved, 4, 3).toarray(), cooccurrence(contiguous, 4, 3).toarray()
    )


def test_ppmi_by_hand() -> None:
    # total 12, row sums 6, 3, 3: PMI(0,0) = log(4*12/36), PMI(0,1) = log(12/18) < 0 (dropped),
    # PMI(1,2) = log(2*12/9).
    counts = sp.csr_matrix(np.array([[4.0, 1.0, 1.0], [1.0, 0.0, 2.0], [1.0, 2.0, 0.0]]))
    expected = np.array([[np.log(4 / 3), 0.0, 0.0], [0.0, 0.0, np.log(8 / 3)], [0.0, np.log(8 / 3), 0.0]])
    result = ppmi(counts)
    np.testing.assert_allclose(result.toarray(), expected)
    assert result.nnz == 3  # negative PMI entries are not stored
    assert ppmi(sp.csr_matrix((3, 3))).nnz == 0


def test_orthonormal_basis_spans_the_columns() -> None:
    y = np.random.default_rng(0).standard_normal((500, 12))
    q = orthonormal_basis(y)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-12)
    np.testing.assert_allclose(q @ (q.T @ y), y, atol=1e-10)  # same column space
    # A rank-deficient block falls back to Householder QR and is still orthonormal.
    deficient = np.concatenate([y[:, :5], y[:, :1]], axis=1)
    q = orthonormal_basis(deficient)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-10)


def test_randomized_svd_matches_the_exact_one() -> None:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((200, 6)))
    dense = basis @ np.diag([10.0, 8.0, 6.0, 4.0, 2.0, 1.0]) @ basis.T + 1e-3 * rng.standard_normal((200, 200))
    u, s = randomized_svd(sp.csr_matrix(dense), rank=4, power_iterations=4, seed=0)
    u_exact, s_exact, _ = np.linalg.svd(dense)
    np.testing.assert_allclose(s, s_exact[:4], rtol=1e-4)
    np.testing.assert_allclose(np.abs((u * u_exact[:, :4]).sum(0)), np.ones(4), atol=1e-4)


def test_only_training_interactions_shape_the_embeddings(tmp_path: Path) -> None:
    # User 1: 10 11 12 13 -> 12 is its validation target, 13 its test target.
    # User 2: 10 11 14    -> 11 validation, 14 test.
    # Training positives: user 1 [10, 11], user 2 [10]: only the pair (10, 11) co-occurs;
    # 12 and 13 (neighbours in the full log) and 14 never enter the counts.
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11 12 13\n2 10 11 14\n")
    manifest = prepare(sequence_prep_config(AmazonSeqConfig(path=str(path)), tmp_path / "bundle"))
    bundle = Bundle.open(tmp_path / "bundle")
    assert manifest["item_embeddings"]["items_without_cooccurrence"] == 3
    train_count = dict(bundle.items.select("item_id", "train_count").iter_rows())
    assert train_count == {"10": 2, "11": 1, "12": 0, "13": 0, "14": 0}
    # Items without any signal get random directions on the scale of the others, so
    # that k-means spreads them instead of stacking them at the origin.
    embeddings = np.load(tmp_path / "bundle" / "item_embeddings.npy")
    norms = np.linalg.norm(embeddings, axis=1)
    assert norms[2:] == pytest.approx(np.median(norms[:2]), rel=1e-5)
    assert len({tuple(np.round(row, 6)) for row in embeddings[2:]}) == 3
