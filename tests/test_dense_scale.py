"""Dense index at scale: `auto` kind choice, the memory-bounded `ivfpq` kind (recall@100 vs flat,
exact re-scoring against memory-mapped stored vectors), the build-time recall in the manifest and
`mice-index info`, and bad values as one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from mice_index.build import BuildConfig
from mice_index.candidates import DenseConfig, DenseIndex, DenseIndexBuilder, StoredVectors
from mice_index.candidates import dense as dense_mod
from mice_index.candidates import vectors as vectors_mod
from mice_index.cli import app, main
from mice_index.codec import make_codec
from mice_index.encoder import EncodedWindow
from mice_index.errors import IndexError_, MiceIndexError, SearchError
from mice_index.sources import Document
from mice_index.store import IndexReader, ShardWriter, index_info
from mice_index.store import layout as L
from mice_index.store.candidates_build import build_candidates
from mice_index.store.manifest import Manifest, write_manifest

DIM = 32


def _clustered(n: int, seed: int = 0, clusters: int = 40, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around `clusters` random centres (a small stand-in for sentence embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    x = centres[rng.integers(0, clusters, size=n)] + spread * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _save_parts(tmp_path, x: np.ndarray, rows_per_part: int) -> list:
    paths = []
    for i, start in enumerate(range(0, len(x), rows_per_part)):
        paths.append(tmp_path / f"part{i}.npy")
        np.save(paths[-1], x[start : start + rows_per_part])
    return paths


def _full_recall(index: DenseIndex, x: np.ndarray, k: int = 100, step: int = 3) -> float:
    """recall@k with every `step`-th stored vector as a query, exact top-k by numpy (independent
    of faiss and of recall_vs_flat's query sample)."""
    q = x[::step]
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    got = index.search(q, k).rows
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(got, exact)]))


# ------------------------------------------------------------------------------ kind choice


def test_auto_picks_flat_up_to_the_threshold_then_ivfpq(monkeypatch) -> None:
    x = _clustered(401)
    cfg = DenseConfig(kind="auto", flat_max_docs=400)
    assert DenseIndex.build(x[:400], cfg).config.kind == "flat"
    big = DenseIndex.build(x, cfg)
    assert big.config.kind == "ivfpq" and big.config.nprobe == dense_mod.IVFPQ_NPROBE and big.config.pq_m == DIM // 4
    # the default threshold is the module constant, read when the config is resolved
    monkeypatch.setattr(dense_mod, "AUTO_FLAT_MAX_DOCS", 400)
    assert DenseConfig(kind="auto").resolved(400, DIM).kind == "flat"
    assert DenseConfig(kind="auto").resolved(401, DIM).kind == "ivfpq"
    # explicit kinds win whatever the size
    assert DenseConfig(kind="flat").resolved(10**7, DIM).kind == "flat"
    assert DenseConfig(kind="hnsw").resolved(10, DIM).kind == "hnsw"
    # the training sample cap bounds the number of lists (>= 39 training rows per list)
    assert DenseConfig(kind="ivfpq", train_max_rows=3900).resolved(10**6, DIM).ivf_nlist == 100


def test_bad_values_are_errors() -> None:
    with pytest.raises(SearchError, match="dense kind must be one of auto, flat, hnsw, ivf, ivfpq"):
        DenseConfig(kind="lsh")
    for field in ("nprobe", "refine_factor", "pq_m", "train_max_rows"):
        with pytest.raises(SearchError, match=field):
            DenseConfig(kind="ivfpq", **{field: 0})
    with pytest.raises(SearchError, match="ivfpq needs at least 256 documents, got 255"):
        DenseIndex.build(_clustered(255), DenseConfig(kind="ivfpq"))
    with pytest.raises(SearchError, match="pq_m=5 does not divide"):
        DenseConfig(kind="ivfpq", pq_m=5).resolved(1000, DIM)
    with pytest.raises(MiceIndexError, match="nprobe"):
        BuildConfig(dense_nprobe=0)


@pytest.mark.parametrize("args, needle", [(["--dense-kind", "lsh"], "dense kind must be one of"),
                                          (["--dense-nprobe", "0"], "nprobe must be >= 1")])
def test_cli_bad_dense_values_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, needle) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n')
    monkeypatch.setattr("sys.argv", ["mice-index", "build", "--corpus", str(corpus), "--index", str(tmp_path / "i"),
                                     "--quiet", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "i").exists()


# ------------------------------------------------------------------------------ ivfpq


def test_ivfpq_recall_is_high_and_scores_are_exact() -> None:
    x = _clustered(3000)
    index = DenseIndex.build(x, DenseConfig(kind="ivfpq"))
    full = _full_recall(index, x)
    assert full >= 0.9, full
    measured = index.recall_vs_flat(x)  # 200 sampled stored vectors, faiss's chunked exact scan
    assert measured["queries"] == 200 and measured["k"] == 100 and not measured["exact"]
    assert abs(measured["recall_at_100"] - full) < 0.03, (measured, full)
    c = index.search(x[:5], k=20)
    np.testing.assert_allclose(c.scores, np.take_along_axis(x[:5] @ x.T, c.rows, axis=1), atol=1e-5)
    assert (np.diff(c.scores, axis=1) <= 0).all() and (c.rows[:, 0] == np.arange(5)).all()
    # re-scoring more candidates cannot lose neighbours found with fewer
    wider = DenseIndex(index.index, DenseConfig(**{**index.config.__dict__, "refine_factor": 8}), index.vectors)
    assert _full_recall(wider, x) >= full
    assert DenseIndex.build(x, DenseConfig(kind="flat")).recall_vs_flat(x)["recall_at_100"] == 1.0


def test_ivfpq_keeps_file_references_and_survives_a_folder_rename(tmp_path) -> None:
    x = _clustered(2000, seed=1)
    root = tmp_path / "idx"
    root.mkdir()
    paths = _save_parts(root, x, 700)
    index = DenseIndex.build(StoredVectors.open(paths), DenseConfig(kind="ivfpq"))
    before = index.search(x[:7], k=30)
    index.save(root / "dense")
    meta = json.loads((root / "dense" / "candidates.json").read_text())
    assert meta["vectors"] == {"files": ["../part0.npy", "../part1.npy", "../part2.npy"], "rows": [700, 700, 600]}
    assert sorted(p.name for p in (root / "dense").iterdir()) == ["candidates.json", "dense.faiss"]  # no copy
    moved = root.rename(tmp_path / "moved")
    after = DenseIndex.load(moved / "dense").search(x[:7], k=30)
    np.testing.assert_array_equal(before.rows, after.rows)
    np.testing.assert_allclose(before.scores, after.scores, atol=1e-6)
    (moved / "part1.npy").unlink()
    with pytest.raises(IndexError_, match="part1.npy: cannot read stored dense vectors"):
        DenseIndex.load(moved / "dense")
    # built from an in-memory matrix: saves its own copy, which load() maps
    DenseIndex.build(x, DenseConfig(kind="ivfpq")).save(tmp_path / "own")
    assert (tmp_path / "own" / "vectors.npy").is_file()
    np.testing.assert_array_equal(DenseIndex.load(tmp_path / "own").search(x[:7], k=30).rows, before.rows)
    with pytest.raises(SearchError, match="no stored vectors"):
        DenseIndex(index.index, index.config).search(x[:1], k=5)


class _SpyVectors(StoredVectors):
    """Records the largest array handed out (take / chunks)."""

    largest = 0
    taken: list[int] = []

    def take(self, rows):
        out = super().take(rows)
        _SpyVectors.taken.append(out.shape[0])
        _SpyVectors.largest = max(_SpyVectors.largest, out.shape[0])
        return out

    def chunks(self, size):
        for c in super().chunks(size):
            _SpyVectors.largest = max(_SpyVectors.largest, c.shape[0])
            yield c


def test_ivfpq_build_reads_bounded_pieces_of_memory_mapped_parts(tmp_path, monkeypatch) -> None:
    x = _clustered(3000, seed=2)
    monkeypatch.setattr(dense_mod, "ADD_CHUNK", 256)
    opened = StoredVectors.open(_save_parts(tmp_path, x, 1100))
    assert all(isinstance(p, np.memmap) for p in opened._parts)
    spy = _SpyVectors(opened._parts, opened.paths)
    _SpyVectors.largest, _SpyVectors.taken = 0, []
    index = DenseIndex.build(spy, DenseConfig(kind="ivfpq", train_max_rows=700))
    assert _SpyVectors.taken == [700]  # the training sample: capped, evenly spaced rows
    assert _SpyVectors.largest == 700 < len(x)  # never all N vectors at once
    measured = index.recall_vs_flat(spy, num_queries=50)  # reads the same files without maps, in chunks
    assert _SpyVectors.largest == 700
    assert measured["recall_at_100"] >= 0.85, measured
    # the chunks cross part boundaries, cover every row once, in order, and are read into fresh
    # buffers (not views of the map, whose touched pages would stay in the process's RSS)
    chunks = list(opened.chunks(256))
    assert not any(isinstance(c, np.memmap) or c.base is not None and isinstance(c.base, np.memmap) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), x)
    rows = np.array([2999, 0, 1100, 1099, 5, 5])
    np.testing.assert_array_equal(opened.take(rows), x[rows])
    read = StoredVectors.open(opened.paths, mmap=False)  # file reads, one per run of consecutive rows
    rows = np.array([2999, 0, 1100, 1099, 5, 5, 6, 7, 2200, 1098])
    for source in (opened, read):
        got = source.take(rows)
        assert not isinstance(got, np.memmap) and got.flags.owndata
        np.testing.assert_array_equal(got, x[rows])
    monkeypatch.setattr(vectors_mod, "BULK_ROWS", 3)  # the same rows through the sequential path
    np.testing.assert_array_equal(opened.take(rows), x[rows])


def test_streaming_builder_auto_matches_one_shot(tmp_path) -> None:
    x = _clustered(1500, seed=3)
    cfg = DenseConfig(kind="auto", flat_max_docs=1000)
    builder = DenseIndexBuilder(DIM, cfg, tmp_dir=tmp_path)
    for start in range(0, len(x), 400):
        builder.add(x[start : start + 400])
    streamed = builder.finish()
    assert streamed.config.kind == "ivfpq" and list(tmp_path.iterdir()) == []  # spool removed
    oneshot = DenseIndex.build(x, cfg)
    np.testing.assert_array_equal(streamed.search(x[:9], k=25).rows, oneshot.search(x[:9], k=25).rows)


# ------------------------------------------------------------------------------ in the build


def _fake_index(root, x: np.ndarray, shard_docs: int) -> dict:
    """An index folder (fp32 codec, 2 tokens per document) whose build shards store `x` as their
    dense vectors; returns its manifest (complete=False, candidates not built)."""
    rng = np.random.default_rng(0)
    codec = make_codec("fp32", 4)
    config, arrays = codec.to_params()
    (root / L.CODEC_DIR).mkdir(parents=True)
    for k, a in arrays.items():
        np.save(root / L.CODEC_DIR / f"{k}.npy", a)
    shards = []
    for i, start in enumerate(range(0, len(x), shard_docs)):
        n = min(shard_docs, len(x) - start)
        lengths = np.full(n, 2, np.int32)
        docs = [Document(f"d{start + j}", f"text {start + j}", "") for j in range(n)]
        w = ShardWriter(root, i, start, codec)
        w.add(EncodedWindow(start, docs, lengths, rng.standard_normal((2 * n, 4)).astype(np.float32),
                            x[start : start + n], np.zeros(n, bool)))
        meta = w.commit()
        shards.append({"name": L.shard_name(i), "sha256": L.sha256_file(w.final / L.SHARD_META),
                       **{k: meta[k] for k in ("start_row", "num_docs", "num_tokens", "truncated_docs", "empty_docs")}})
    m = {"format_version": L.FORMAT_VERSION, "complete": False, "shards": shards, "corpus": "c.jsonl",
         "model": {"hidden_size": 4, "fusion_layer": 1, "name": "x", "fingerprint": "f"},
         "settings": {"max_doc_length": 64}, "dense": {"dim": DIM, "source": "tower", "backbone": "b"},
         "codec": {"name": codec.name, "config": config, "arrays": sorted(arrays), "columns": sorted(codec.columns()),
                   "bytes_per_token": codec.bytes_per_token}, "candidates": {}}
    L.write_json_atomic(root / L.MANIFEST, m)
    return m


def _build_candidates(root, m, **cfg) -> Manifest:
    m = build_candidates(root, Manifest.from_dict(m), bm25=False, dense=BuildConfig(**cfg).dense_config())
    m = replace(m, complete=True)
    write_manifest(root, m)
    return m


def test_build_auto_writes_recall_to_manifest_and_info(tmp_path, monkeypatch) -> None:
    x = _clustered(2500, seed=4)
    monkeypatch.setattr(dense_mod, "AUTO_FLAT_MAX_DOCS", 2000)
    root = tmp_path / "idx"
    m = _build_candidates(root, _fake_index(root, x, 1000))  # BuildConfig's default: auto
    d = m.candidates.dense_index
    assert m.candidates.dense_kind == "auto" and d["kind"] == "ivfpq" and d["queries"] == 200
    reader = IndexReader.open(root)
    searched = DenseIndex.load(reader.dense_path)  # as the searcher opens it: refers to the shards' dense.npy
    assert json.loads((root / "dense" / "candidates.json").read_text())["vectors"]["files"][0] == \
        "../shards/00000/dense.npy"
    recomputed = searched.recall_vs_flat(x)
    assert d["recall_at_100"] == recomputed["recall_at_100"] >= 0.9
    assert abs(d["recall_at_100"] - _full_recall(searched, x)) < 0.03
    info = index_info(root)
    assert info["dense_index"] == d
    out = CliRunner().invoke(app, ["info", "--index", str(root)])
    assert out.exit_code == 0, out.output
    assert f"recall@100 vs flat {d['recall_at_100']:.3f}" in out.stdout and "ivfpq" in out.stdout
    assert "--dense-kind" not in L.rebuild_command(root)


def test_build_explicit_kind_wins_over_auto(tmp_path, monkeypatch) -> None:
    x = _clustered(600, seed=5)
    monkeypatch.setattr(dense_mod, "AUTO_FLAT_MAX_DOCS", 100)  # auto would pick ivfpq
    root = tmp_path / "idx"
    m = _build_candidates(root, _fake_index(root, x, 250), dense_kind="flat")
    assert m.candidates.dense_index == {"kind": "flat", "recall_at_100": 1.0, "queries": 0, "k": 100,
                                              "query_source": "stored document vectors (in-distribution)",
                                              "exact": True}
    assert "exact (recall@100 vs flat 1.0)" in CliRunner().invoke(app, ["info", "--index", str(root)]).stdout
    assert "--dense-kind flat" in L.rebuild_command(root)
    root2 = tmp_path / "idx2"
    m2 = _build_candidates(root2, _fake_index(root2, x, 250), dense_kind="ivfpq", dense_nprobe=3)
    assert m2.candidates.dense_index["nprobe"] == 3
    assert DenseIndex.load(root2 / "dense").config.nprobe == 3
    assert "--dense-kind ivfpq --dense-nprobe 3" in L.rebuild_command(root2)


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """faiss's OpenMP threads spin-wait: on a shared 2-core machine one thread is much faster."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
