"""Store: shard writing/commit, random access by row (memory-mapped and zarr paths), verify."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mice_index.codec import make_codec
from mice_index.encoder import EncodedWindow
from mice_index.errors import IndexError_
from mice_index.sources import Document
from mice_index.store import IndexReader, ShardWriter, index_info, read_manifest, verify_shards
from mice_index.store import layout as L
from mice_index.store import writer as W

D = 8


def _window(rng, start, lengths):
    lengths = np.asarray(lengths, np.int32)
    docs = [Document(f"doc{start + i}", f"text {start + i}", f"title {start + i}" if i % 2 else "")
            for i in range(len(lengths))]
    return EncodedWindow(start, docs, lengths, rng.standard_normal((int(lengths.sum()), D)).astype(np.float32),
                         rng.standard_normal((len(lengths), 4)).astype(np.float32), lengths > 60)


def _write_index(root, codec, windows_per_shard, complete=True):
    """Write shards from synthetic windows + a manifest; return the concatenated per-doc states."""
    config, arrays = codec.to_params()
    (root / L.CODEC_DIR).mkdir(parents=True)
    for k, a in arrays.items():
        np.save(root / L.CODEC_DIR / f"{k}.npy", a)
    shards, states = [], []
    for i, wins in enumerate(windows_per_shard):
        w = ShardWriter(root, i, wins[0].start_row, codec)
        for win in wins:
            w.add(win)
            states.extend(np.split(win.states, np.cumsum(win.lengths)[:-1]))
        meta = w.commit()
        shards.append({"name": L.shard_name(i), "sha256": L.sha256_file(w.final / L.SHARD_META),
                       **{k: meta[k] for k in ("start_row", "num_docs", "num_tokens", "truncated_docs", "empty_docs")}})
    manifest = {"format_version": L.FORMAT_VERSION, "complete": complete, "shards": shards,
                "model": {"hidden_size": D, "fusion_layer": 1, "name": "x", "fingerprint": "f"},
                "settings": {"max_doc_length": 64}, "dense": {"dim": 4},
                "codec": {"name": codec.name, "config": config, "arrays": sorted(arrays),
                          "columns": sorted(codec.columns()), "bytes_per_token": codec.bytes_per_token}}
    L.write_json_atomic(root / L.MANIFEST, manifest)
    return states


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "ZARR_SHARD_TOKENS", 64)  # many zarr shards per column
    monkeypatch.setattr(W, "ZARR_CHUNK_TOKENS", 16)
    rng = np.random.default_rng(0)
    lens = rng.integers(2, 70, size=30)
    wins = [[_window(rng, 0, lens[:7]), _window(rng, 7, lens[7:12])],
            [_window(rng, 12, lens[12:25])], [_window(rng, 25, lens[25:])]]
    root = tmp_path / "idx"
    states = _write_index(root, make_codec("fp32", D), wins)
    return root, states


def test_roundtrip_random_access(built):
    root, states = built
    r = IndexReader.open(root)
    assert r.num_docs == 30 and r.num_tokens == sum(s.shape[0] for s in states)
    rows = [29, 0, 13, 12, 11, 7, 13]
    for row, got in zip(rows, r.get_states(rows)):
        assert np.array_equal(got, states[row])
    enc = r.get_encoded([3])
    assert list(enc[0]) == ["values"] and np.array_equal(enc[0]["values"], states[3])
    assert all(c.maps is not None for s in r._shards for c in s.columns.values())  # memory-mapped path
    assert r.doc_ids[12] == "doc12" and r.doc_id(12) == "doc12" and r.row_of("doc25") == 25
    assert r.texts([1, 2]) == [("title 1", "text 1"), ("", "text 2")]
    assert list(r.lengths([0, 29])) == [states[0].shape[0], states[29].shape[0]]
    assert r.dense_vectors().shape == (30, 4) and r.dense_vectors([5]).shape == (1, 4)
    assert len(list(r.iter_texts())) == 30
    r.verify()
    with pytest.raises(IndexError_, match="row 30 out of range"):
        r.get_states([30])
    with pytest.raises(IndexError_, match="no document with id"):
        r.row_of("nope")


def test_zarr_fallback_path_equals_mmap(built):
    root, states = built
    r = IndexReader.open(root)
    for s in r._shards:
        for c in s.columns.values():
            c.maps = None
    rows = list(range(30))[::-1]
    for row, got in zip(rows, r.get_states(rows)):
        assert np.array_equal(got, states[row])


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "rq"])
@pytest.mark.parametrize("mapped", [True, False])
def test_read_padded_equals_get_states(tmp_path, monkeypatch, codec, mapped):
    """The scorer's read path (decoded straight into a reused [B,T,D] buffer) gives exactly the
    decoded states of `get_states`, and zeroes every padding position (the buffer is reused)."""
    monkeypatch.setattr(W, "ZARR_SHARD_TOKENS", 64)
    monkeypatch.setattr(W, "ZARR_CHUNK_TOKENS", 16)  # documents span chunks and zarr shards
    rng = np.random.default_rng(1)
    lens = rng.integers(2, 70, size=24)
    c = make_codec(codec, D, **({"M": 4, "nbits": 4, "n_centroids": 16} if codec == "rq" else {}))
    if c.needs_fit:
        c = c.fit(rng.standard_normal((4096, D)).astype(np.float32), seed=0)
    _write_index(tmp_path / "i", c, [[_window(rng, 0, lens[:10])], [_window(rng, 10, lens[10:])]])
    r = IndexReader.open(tmp_path / "i")
    if not mapped:
        for s in r._shards:
            for col in s.columns.values():
                col.maps = None
    rows = [23, 0, 11, 10, 9, 5, 11]
    want = r.get_states(rows)
    out = torch.full((len(rows), 80, D), float("nan"))  # stale values must not survive
    lengths = r.read_padded(rows, out)
    out = out.numpy()
    assert lengths.tolist() == [s.shape[0] for s in want]
    for i, s in enumerate(want):
        np.testing.assert_array_equal(out[i, : len(s)], s)
        assert (out[i, len(s):] == 0).all()


def test_zarr_arrays_readable_with_plain_zarr(built):
    import zarr

    root, states = built
    g = zarr.open_group(str(root / "shards" / "00001" / "states.zarr"), mode="r")
    off = g["offsets"][:]
    assert np.array_equal(g["values"][off[0]: off[1]], states[12])
    assert int(g["lengths"][0]) == states[12].shape[0]


def test_checksum_mismatch_names_file(built):
    root, _ = built
    f = next(p for p in (root / "shards" / "00001" / "states.zarr" / "values" / "c").rglob("*") if p.is_file())
    data = bytearray(f.read_bytes())
    data[3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match=r"shards/00001/states.zarr/values/c/.*checksum mismatch"):
        IndexReader.open(root).verify()


def test_tampered_shard_meta_detected(built):
    root, _ = built
    p = root / "shards" / "00002" / "shard.json"
    p.write_text(p.read_text().replace('"num_docs"', '"num_docs" ', 1))
    with pytest.raises(IndexError_, match="00002/shard.json: checksum mismatch"):
        verify_shards(root, read_manifest(root))


def test_incomplete_index_refused_but_info_works(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "idx"
    _write_index(root, make_codec("fp16", D), [[_window(rng, 0, [3, 4])]], complete=False)
    with pytest.raises(IndexError_, match="incomplete.*re-run"):
        IndexReader.open(root)
    info = index_info(root)
    assert info["complete"] is False and info["num_docs"] == 2 and info["num_tokens"] == 7
    assert IndexReader.open(root, allow_incomplete=True).get_states([1])[0].shape == (4, D)


def test_not_an_index(tmp_path):
    with pytest.raises(IndexError_, match="not found"):
        IndexReader.open(tmp_path / "missing")
    with pytest.raises(IndexError_, match="missing index manifest"):
        IndexReader.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(IndexError_, match="format version"):
        IndexReader.open(tmp_path)


def test_uncommitted_shard_is_invisible(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "idx"
    root.mkdir()  # the writer never creates the index folder (one removed while writing is an error)
    w = ShardWriter(root, 0, 0, make_codec("fp32", D))
    w.add(_window(rng, 0, [5, 6]))
    assert w.tmp.is_dir() and not w.final.exists()
    w.abort()
    assert not w.tmp.exists()


def test_ids_and_texts_read_only_their_row_groups(built, monkeypatch):
    from mice_index.store.reader import _Shard

    root, _ = built
    r = IndexReader.open(root)
    assert list(r._shards[0].group_starts) == [0, 7, 12]  # one Parquet row group per written window
    rows = [29, 0, 13, 8, 12, 7, 0]
    assert r.doc_ids_of(rows) == [f"doc{i}" for i in rows]
    assert r.texts(rows) == [(f"title {i}" if (i - w) % 2 else "", f"text {i}")
                             for i, w in zip(rows, [25, 0, 12, 7, 12, 7, 0])]
    reads, real = [], _Shard.table
    monkeypatch.setattr(_Shard, "table", lambda self, cols, group=None: reads.append((self.name, group))
                        or real(self, cols, group))
    fresh = IndexReader.open(root)
    assert fresh.doc_ids_of([8, 9]) == ["doc8", "doc9"] and reads == [("00000", 1)]  # one row group, once
    assert fresh.doc_id(10) == "doc10" and reads == [("00000", 1)]  # cached
    assert fresh.texts([26]) == [("title 26", "text 26")] and reads[-1] == ("00002", 0)


def test_row_of_is_exact_under_hash_collisions(built, monkeypatch):
    from mice_index.sources import seen

    root, _ = built
    monkeypatch.setattr(seen, "id_hash", lambda key: len(key))  # doc0..doc9 collide, so do doc10..doc29
    r = IndexReader.open(root)
    assert [r.row_of(f"doc{i}") for i in range(30)] == list(range(30))
    with pytest.raises(IndexError_, match="no document with id 'doc30'"):
        r.row_of("doc30")
