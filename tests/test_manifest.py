"""The typed Manifest (format 3): round trip, format-2 indexes read and searched alike, `upgrade`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import IndexBusyError, IndexError_
from mice_index.model import MiceModel
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import sample_collection
from mice_index.store import layout as L
from mice_index.store.lock import IndexLock
from mice_index.store.manifest import FieldSpec, Manifest, Passages, Tombstones, index_info, read_manifest
from mice_index.store.upgrade import upgrade_index

from .conftest import write_tiny_bert
from .test_user_faults_inputs import cli_one_line

FP32 = ScorerConfig(dtype="fp32", quantize="none")


def format2_manifest(m: dict) -> dict:
    """Exactly what mice-index wrote as a complete index's manifest before format 3 (build.py's
    `_Builder.new_manifest` / `build_candidates` / `write_manifest` at commit 5783bac), from the
    format-3 manifest `m` of the same build: no tombstones, settings without fields / passages,
    `prune` recorded only when not "none"."""
    s = m["settings"]
    settings = {k: s[k] for k in ("codec", "max_doc_length", "dtype", "batch_tokens", "window_docs", "window_tokens",
                                  "shard_docs", "dense", "fit_tokens", "seed", "id_field", "text_field",
                                  "title_field")}
    if s["prune"] != "none":
        settings["prune"] = s["prune"]
    return {
        "format_version": 2, "library_version": m["library_version"], "complete": m["complete"],
        "generation": m["generation"], "corpus": m["corpus"],
        "model": {k: m["model"][k] for k in ("name", "fingerprint", "fusion_layer", "hidden_size", "family",
                                             "options")},
        "settings": settings,
        "codec": {k: m["codec"][k] for k in ("name", "config", "arrays", "columns", "bytes_per_token", "fingerprint")},
        "dense": m["dense"] and {k: m["dense"][k] for k in ("source", "backbone", "dim")},
        "shards": [{k: e[k] for k in ("name", "sha256", "start_row", "num_docs", "num_tokens", "truncated_docs",
                                      "empty_docs")} for e in m["shards"]],
        "counts": m["counts"],
        "candidates": {k: m["candidates"][k] for k in ("bm25", "dense", "dense_kind", "dense_nprobe", "dense_index",
                                                       "files")},
    }


def _write(path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm_dir):
    """The sample collection indexed (BM25 + dense) with a tiny random MICE model, fp32 states."""
    root = tmp_path_factory.mktemp("manifest")
    write_tiny_bert(root / "tiny", minilm_dir, seed=1)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=96, max_query_length=16)
    model_dir = model.save(root / "mice")
    build_index(sample_collection(), root / "idx",
                BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=16))
    return root / "idx", MiceModel.load(model_dir)


@pytest.fixture
def old(built, tmp_path):
    """A copy of the built index whose manifest is the format-2 one the old code wrote."""
    idx, _ = built
    path = tmp_path / "old"
    shutil.copytree(idx, path)
    _write(path / L.MANIFEST, format2_manifest(json.loads((idx / L.MANIFEST).read_text())))
    return path


def test_manifest_round_trip(built):
    idx, _ = built
    on_disk = json.loads((idx / L.MANIFEST).read_text())
    m = read_manifest(idx)
    assert m.format_version == L.FORMAT_VERSION == 3 and m.complete and m.dense is not None
    assert m.to_dict() == on_disk and Manifest.from_dict(on_disk) == m
    assert m.num_docs == on_disk["counts"]["num_docs"] == sum(s.num_docs for s in m.shards) > 16
    assert m.settings.fields == () and m.settings.passages is None and m.tombstones is None
    assert m.candidates.bm25 == "bm25" and m.candidates.dense == "dense" and m.candidates.files
    # the parts the other writers fill in survive a round trip through JSON
    full = replace(m, settings=replace(m.settings, fields=(FieldSpec("year", "int"), FieldSpec("src", "str")),
                                       passages=Passages(window=64, stride=32)),
                   tombstones=Tombstones(file="tombstones.npy", count=2, sha256="ab" * 32))
    again = Manifest.from_dict(json.loads(json.dumps(full.to_dict())))
    assert again == full and again != m
    assert again.to_dict()["settings"]["fields"] == [{"name": "year", "type": "int"}, {"name": "src", "type": "str"}]
    with pytest.raises(Exception):  # noqa: B017 - frozen
        m.complete = False


def test_format2_index_is_read_and_searched_identically(built, old):
    idx, model = built
    m2, m3 = read_manifest(old), read_manifest(idx)
    assert m2.format_version == 2 and replace(m2, format_version=3) == m3  # converted in memory
    assert index_info(old)["format_version"] == 2
    assert {k: v for k, v in index_info(old).items() if k not in ("path", "format_version", "disk_bytes")} == \
        {k: v for k, v in index_info(idx).items() if k not in ("path", "format_version", "disk_bytes")}
    for candidates in ("bm25", "dense", "hybrid"):
        cfg = SearchConfig(scorer=FP32, candidates=candidates, depth=12)
        a = Searcher.open(old, model=model, config=cfg).search("how do honey bees make honey", k=8)
        b = Searcher.open(idx, model=model, config=cfg).search("how do honey bees make honey", k=8)
        assert [h.doc_id for h in a] == [h.doc_id for h in b] and len(a) == 8
        np.testing.assert_array_equal([h.score for h in a], [h.score for h in b])


def test_upgrade_converts_then_is_a_no_op(built, old, monkeypatch, capsys):
    idx, model = built
    before = json.loads((old / L.MANIFEST).read_text())
    monkeypatch.setattr("sys.argv", ["mice-index", "upgrade", "--index", str(old)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert "format 2 → 3" in capsys.readouterr().out
    after = json.loads((old / L.MANIFEST).read_text())
    assert after == json.loads((idx / L.MANIFEST).read_text())  # what a format-3 build writes, same generation
    assert after["generation"] == before["generation"]
    assert not (old / (L.MANIFEST + ".tmp")).exists()
    cfg = SearchConfig(scorer=FP32, candidates="hybrid", depth=12)
    a = Searcher.open(old, model=model, config=cfg).search("coral reef bleaching", k=5)
    b = Searcher.open(idx, model=model, config=cfg).search("coral reef bleaching", k=5)
    assert [(h.doc_id, h.score) for h in a] == [(h.doc_id, h.score) for h in b]
    raw = (old / L.MANIFEST).read_bytes()
    stamp = (old / L.MANIFEST).stat().st_mtime_ns
    r = upgrade_index(old)
    assert (r.from_version, r.to_version, r.changed) == (3, 3, False)
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert "already current" in capsys.readouterr().out
    assert (old / L.MANIFEST).read_bytes() == raw and (old / L.MANIFEST).stat().st_mtime_ns == stamp


def test_upgrade_bad_input_is_one_line_and_writes_nothing(old, tmp_path, monkeypatch, capsys):
    cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(tmp_path / "nope")], "index folder not found")
    (tmp_path / "empty").mkdir()
    cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(tmp_path / "empty")], "missing index manifest")
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / L.MANIFEST, {"name": "some other tool"})
    cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(tmp_path / "other")], "not a mice-index manifest")
    raw = (old / L.MANIFEST).read_bytes()
    with IndexLock(old):  # another writer (a build, merge, add ...) holds the index
        with pytest.raises(IndexBusyError):
            upgrade_index(old)
        cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(old)], "holds the lock")
    assert (old / L.MANIFEST).read_bytes() == raw
    # a damaged shard (its shard.json no longer matches the manifest's checksum)
    meta = old / L.SHARDS_DIR / "00001" / L.SHARD_META
    saved = meta.read_bytes()
    meta.write_bytes(saved.replace(b'"num_docs"', b'"num_docs" ', 1))
    cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(old)], "00001", "checksum mismatch")
    assert (old / L.MANIFEST).read_bytes() == raw
    meta.write_bytes(saved)
    # a malformed manifest (model entry without its fingerprint)
    m = json.loads(raw)
    del m["model"]["fingerprint"]
    _write(old / L.MANIFEST, m)
    err = cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(old)], "malformed manifest", "fingerprint")
    assert "damaged" in err
    assert json.loads((old / L.MANIFEST).read_text()) == m
    # format 1 (no per-chunk checksums): cannot be upgraded in place
    m = json.loads(raw)
    m["format_version"] = 1
    _write(old / L.MANIFEST, m)
    cli_one_line(monkeypatch, capsys, ["upgrade", "--index", str(old)], "format 1 cannot be upgraded", "--overwrite")
    assert json.loads((old / L.MANIFEST).read_text()) == m
    with pytest.raises(IndexError_, match="format 1"):
        upgrade_index(old)


def test_unfinished_format2_build_resumes_after_upgrade(built, old, tmp_path):
    """An unfinished format-2 build is refused (naming upgrade); once upgraded, the same build
    finishes it through the format-3 code path."""
    idx, _ = built
    m = json.loads((old / L.MANIFEST).read_text())
    m["complete"], m["candidates"] = False, {}  # as the old build wrote it before the candidate indexes
    _write(old / L.MANIFEST, m)
    for name in ("bm25", "dense"):
        shutil.rmtree(old / name)
    model_dir = idx.parent / "mice"
    cfg = BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=16)
    with pytest.raises(IndexError_, match="format 2.*mice-index upgrade --index"):
        build_index(sample_collection(), old, cfg)
    assert upgrade_index(old).changed
    r = build_index(sample_collection(), old, cfg)
    assert r.encoded_docs == 0 and r.info["complete"] and r.info["format_version"] == 3
    assert read_manifest(old) == read_manifest(idx)
