"""Unit tests for mice_index.candidates: tiny synthetic corpora, no model downloads."""

from __future__ import annotations

import numpy as np
import pytest

from mice_index.candidates import (
    BM25Config,
    BM25Index,
    CandidateGenerator,
    Candidates,
    DenseConfig,
    DenseIndex,
    DenseIndexBuilder,
    HybridConfig,
    fuse,
)
from mice_index.errors import IndexError_, SearchError

DOCS = [
    "The cat sat on the mat.",
    "Dogs are loyal animals and good companions.",
    "Quantum chromodynamics describes the strong interaction.",
    "A recipe for sourdough bread with rye flour.",
    "Running shoes for marathon training.",
    "The stock market fell sharply on Monday.",
    "Photosynthesis converts light energy into chemical energy.",
    "Cats and dogs: a guide to household pets.",
    "Ancient Rome and the fall of the republic.",
    "Glaciers are melting because of climate change.",
    "Neural networks learn representations from data.",
    "",  # empty document: indexed, never matched
]


def assert_padding_ok(c: Candidates) -> None:
    assert c.rows.dtype == np.int64 and c.scores.dtype == np.float32
    assert c.rows.shape == c.scores.shape
    valid = c.rows >= 0
    np.testing.assert_array_equal(valid, np.isfinite(c.scores))
    # padding only at the end of each row, scores non-increasing over the valid part
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()
    for r, s in zip(c.rows, c.scores):
        v = s[r >= 0]
        assert (np.diff(v) <= 1e-6).all()
        assert len(set(r[r >= 0].tolist())) == int((r >= 0).sum())


@pytest.fixture(scope="module")
def bm25() -> BM25Index:
    return BM25Index.build(iter(DOCS), BM25Config(), num_docs=len(DOCS))


# --------------------------------------------------------------------------------------- BM25


def test_bm25_exact_term_first(bm25: BM25Index) -> None:
    c = bm25.search(["photosynthesis", "sourdough rye", "marathon"], k=5)
    assert c.rows[:, 0].tolist() == [6, 3, 4]
    assert_padding_ok(c)
    # only matching docs are returned, the rest is padding
    assert (c.rows[0] >= 0).sum() == 1


def test_bm25_stemming_matches_inflections(bm25: BM25Index) -> None:
    c = bm25.search(["cat"], k=3)  # "cats" in doc 7 stems to "cat"
    assert set(c.rows[0][c.rows[0] >= 0].tolist()) == {0, 7}


def test_bm25_stopword_only_and_unknown_queries_are_padding(bm25: BM25Index) -> None:
    c = bm25.search(["the of and", "", "zzzunknownword", "cat"], k=4)
    assert_padding_ok(c)
    assert c.found.tolist() == [False, False, False, True]
    assert (c.rows[:3] == -1).all() and np.isneginf(c.scores[:3]).all()


def test_bm25_k_clamped_to_corpus(bm25: BM25Index) -> None:
    c = bm25.search(["energy"], k=1000)
    assert c.rows.shape == (1, len(DOCS))
    with pytest.raises(SearchError):
        bm25.search(["energy"], k=0)
    with pytest.raises(SearchError):
        bm25.search("energy", k=3)


def test_bm25_no_stemmer_no_stopwords() -> None:
    idx = BM25Index.build(DOCS, BM25Config(stemmer=None, stopwords=None))
    c = idx.search(["cat", "the"], k=3)
    assert c.rows[0, 0] == 0 and (c.rows[0] >= 0).sum() == 1  # "cats" no longer matches
    assert c.found[1]  # "the" is a normal term now


@pytest.mark.parametrize("mmap", [True, False])
def test_bm25_save_load_round_trip(bm25: BM25Index, tmp_path, mmap: bool) -> None:
    queries = ["cats and dogs", "energy of light", "the", "climate glaciers melting"]
    before = bm25.search(queries, k=6)
    bm25.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25", mmap=mmap)
    after = loaded.search(queries, k=6)
    np.testing.assert_array_equal(before.rows, after.rows)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert loaded.config == bm25.config and loaded.num_docs == len(DOCS)
    assert isinstance(loaded, CandidateGenerator)


def test_bm25_load_errors(tmp_path) -> None:
    with pytest.raises(IndexError_):
        BM25Index.load(tmp_path)
    DenseIndex.build(_unit(np.random.default_rng(0).normal(size=(5, 4)))).save(tmp_path / "d")
    with pytest.raises(IndexError_, match="dense"):
        BM25Index.load(tmp_path / "d")


def test_bm25_config_validation() -> None:
    with pytest.raises(SearchError):
        BM25Config(method="bogus")
    with pytest.raises(SearchError):
        BM25Config(stemmer="klingon")


# -------------------------------------------------------------------------------------- dense


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return _unit(rng.normal(size=(2000, 32))), _unit(rng.normal(size=(50, 32)))


def _brute(docs: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]


def test_dense_flat_is_exact(vectors) -> None:
    docs, queries = vectors
    c = DenseIndex.build(docs, DenseConfig(kind="flat")).search(queries, k=10)
    assert_padding_ok(c)
    np.testing.assert_array_equal(c.rows, _brute(docs, queries, 10))
    np.testing.assert_allclose(c.scores, np.take_along_axis(queries @ docs.T, c.rows, axis=1), atol=1e-5)


@pytest.mark.parametrize("config", [DenseConfig(kind="hnsw"), DenseConfig(kind="ivf", ivf_nlist=16, nprobe=8)])
def test_dense_approximate_recall(vectors, config: DenseConfig) -> None:
    docs, queries = vectors
    c = DenseIndex.build(docs, config).search(queries, k=10)
    assert_padding_ok(c)
    truth = _brute(docs, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(c.rows.tolist(), truth.tolist())])
    assert recall > 0.8, recall


def test_dense_streaming_builder_matches_one_shot(vectors, tmp_path) -> None:
    docs, queries = vectors
    for kind in ("flat", "ivf"):
        builder = DenseIndexBuilder(docs.shape[1], DenseConfig(kind=kind, ivf_nlist=8, nprobe=8), tmp_dir=tmp_path)
        for start in range(0, len(docs), 300):
            builder.add(docs[start : start + 300])
        streamed = builder.finish().search(queries, k=5)
        oneshot = DenseIndex.build(docs, DenseConfig(kind=kind, ivf_nlist=8, nprobe=8)).search(queries, k=5)
        np.testing.assert_array_equal(streamed.rows, oneshot.rows)
    assert list(tmp_path.iterdir()) == []  # IVF spool file removed


def test_auto_nlist() -> None:
    from mice_index.candidates.dense import auto_nlist

    assert auto_nlist(10) == 1 and auto_nlist(2000) == 51 and auto_nlist(1_000_000) == 4000


def test_dense_k_clamp_and_ivf_padding() -> None:
    docs = _unit(np.random.default_rng(1).normal(size=(12, 8)))
    c = DenseIndex.build(docs).search(docs[:2], k=50)
    assert c.rows.shape == (2, 12) and c.rows[:, 0].tolist() == [0, 1]
    # IVF probing 1 of 12 lists cannot fill k: faiss's -1 must become padding with -inf
    ivf = DenseIndex.build(docs, DenseConfig(kind="ivf", ivf_nlist=12, nprobe=1)).search(docs[:3], k=12)
    assert_padding_ok(ivf)
    assert (ivf.rows == -1).any() and np.isneginf(ivf.scores[ivf.rows == -1]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("mmap", [True, False])
def test_dense_save_load_round_trip(vectors, tmp_path, kind: str, mmap: bool) -> None:
    docs, queries = vectors
    index = DenseIndex.build(docs[:500], DenseConfig(kind=kind, nprobe=4))
    before = index.search(queries, k=7)
    index.save(tmp_path / kind)
    loaded = DenseIndex.load(tmp_path / kind, mmap=mmap)
    after = loaded.search(queries, k=7)
    np.testing.assert_array_equal(before.rows, after.rows)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert loaded.config == index.config and loaded.num_docs == 500


def test_dense_input_validation() -> None:
    index = DenseIndex.build(_unit(np.eye(4)))
    with pytest.raises(SearchError):
        index.search(np.ones((2, 5), dtype=np.float32), k=1)
    with pytest.raises(SearchError):
        index.search(np.full((1, 4), np.nan, dtype=np.float32), k=1)
    with pytest.raises(SearchError):
        DenseConfig(kind="lsh")
    with pytest.raises(IndexError_):
        DenseIndexBuilder(4).finish()


# ------------------------------------------------------------------------------------- fusion


def _cand(rows: list[list[int]], scores: list[list[float]]) -> Candidates:
    return Candidates(np.array(rows, dtype=np.int64), np.array(scores, dtype=np.float32))


A = _cand([[3, 1, 2, -1]], [[9.0, 5.0, 1.0, -np.inf]])
B = _cand([[1, 4, 3, 0]], [[0.9, 0.8, 0.5, 0.4]])


def test_rrf_by_hand() -> None:
    c = fuse(A, B, "rrf", k=10, rrf_k=60)
    expected = {
        3: 1 / 61 + 1 / 63,
        1: 1 / 62 + 1 / 61,
        2: 1 / 63,
        4: 1 / 62,
        0: 1 / 64,
    }
    ranked = sorted(expected, key=lambda r: (-expected[r], r))
    assert c.rows[0, :5].tolist() == ranked
    np.testing.assert_allclose(c.scores[0, :5], [expected[r] for r in ranked], rtol=1e-6)
    assert c.rows.shape == (1, 10) and (c.rows[0, 5:] == -1).all() and np.isneginf(c.scores[0, 5:]).all()


def test_zscore_and_minmax_by_hand() -> None:
    za = (np.array([9, 5, 1]) - 5) / np.std([9, 5, 1])  # rows 3, 1, 2
    sb = np.array([0.9, 0.8, 0.5, 0.4])
    zb = (sb - sb.mean()) / sb.std()  # rows 1, 4, 3, 0
    c = fuse(A, B, "zscore", k=5)
    got = dict(zip(c.rows[0].tolist(), c.scores[0].tolist()))
    expected = {3: za[0] + zb[2], 1: za[1] + zb[0], 2: za[2] + zb.min(), 4: za.min() + zb[1], 0: za.min() + zb[3]}
    for r, v in expected.items():
        assert got[r] == pytest.approx(v, rel=1e-5)
    cz = fuse(A, B, "zscore", k=5, missing="zero")
    assert dict(zip(cz.rows[0].tolist(), cz.scores[0].tolist()))[2] == pytest.approx(za[2], rel=1e-5)
    m = fuse(A, B, "minmax", k=5)
    got = dict(zip(m.rows[0].tolist(), m.scores[0].tolist()))
    assert got[3] == pytest.approx(1.0 + 0.2, rel=1e-5)  # (9-1)/8 + (0.5-0.4)/0.5
    assert got[1] == pytest.approx(0.5 + 1.0, rel=1e-5)
    assert m.rows[0, 0] == 1


def test_fusion_falls_back_to_other_list_and_truncates() -> None:
    empty = Candidates.empty(1, 4)
    for method in ("rrf", "zscore", "minmax"):
        c = fuse(empty, B, method, k=3)
        assert c.rows[0].tolist() == [1, 4, 3]
        c = fuse(A, empty, method, k=3)
        assert c.rows[0].tolist() == [3, 1, 2]
    both = fuse(empty, empty, "rrf", k=2)
    assert (both.rows == -1).all() and not both.found.any()


def test_fusion_single_entry_and_ties() -> None:
    one = _cand([[5]], [[3.0]])
    c = fuse(one, _cand([[7]], [[1.0]]), "zscore", k=3)  # std 0 -> both 0, tie -> lower row
    assert c.rows[0].tolist() == [5, 7, -1]
    c = fuse(one, one, "minmax", k=1)
    assert c.rows[0].tolist() == [5] and c.scores[0, 0] == pytest.approx(2.0)


def test_hybrid_config() -> None:
    cfg = HybridConfig()
    assert cfg.method in ("rrf", "zscore", "minmax")
    np.testing.assert_array_equal(cfg.fuse(A, B, k=4).rows, fuse(A, B, cfg.method, k=4).rows)
    with pytest.raises(SearchError):
        HybridConfig(method="borda")
    with pytest.raises(SearchError):
        fuse(A, _cand([[1], [2]], [[1.0], [1.0]]), "rrf", k=2)


def test_bm25_plus_dense_end_to_end(bm25: BM25Index) -> None:
    # dense "embeddings" = one-hot doc identity; query 0 targets doc 9, BM25 query is stopwords only
    dense = DenseIndex.build(np.eye(len(DOCS), dtype=np.float32))
    q = np.zeros((2, len(DOCS)), dtype=np.float32)
    q[0, 9] = 1.0
    q[1, 2] = 1.0
    fused = fuse(bm25.search(["the of", "quantum"], k=5), dense.search(q, k=5), "zscore", k=5)
    assert fused.rows[:, 0].tolist() == [9, 2]
