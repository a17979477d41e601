"""Issue 13 faults 4, 5, 8, 10: --overwrite keeps the old index until the new one is complete, one
writer per index (lock), operating-system errors as one line, damaged index files as one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mice_index.build import KILL_ENV, BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import IndexBusyError, IndexError_, SearchError, StorageError
from mice_index.search import SearchConfig, Searcher
from mice_index.store import IndexReader, index_info
from mice_index.store import layout as L
from mice_index.store.lock import IndexLock, is_locked
from tests.conftest import write_tiny_bert

CORPUS3 = [
    {"_id": "d1", "title": "Apples", "text": "Red apples grow in cool orchards and ripen in autumn."},
    {"_id": "d2", "title": "Trains", "text": "Night trains carry sleeping passengers across the plains."},
    {"_id": "d3", "title": "Tides", "text": "The moon pulls the sea and causes two tides a day."},
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _write(path: Path, docs) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, minilm_dir):
    from mice_index.model import MiceModel

    d = tmp_path_factory.mktemp("faults")
    write_tiny_bert(d / "tiny-bert", minilm_dir)
    model = MiceModel.from_pretrained(d / "tiny-bert", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64, max_query_length=16)
    mice_dir = model.save(d / "mice")
    corpus = _write(d / "corpus3.jsonl", CORPUS3)
    bad = _write(d / "bad.jsonl", [CORPUS3[0], {"_id": "d2", "title": "Trains"}, CORPUS3[2]])
    template = d / "template"
    build_index(corpus, template, _cfg(mice_dir), model=model)
    return {"dir": d, "model": model, "mice_dir": mice_dir, "corpus": corpus, "bad": bad, "template": template}


def _cfg(mice_dir, **kw) -> BuildConfig:
    return BuildConfig(**{"model": str(mice_dir), "codec": "int8-dim", "shard_docs": 2, "dense": "none",
                          "dtype": "fp32", **kw})


@pytest.fixture
def idx3(files, tmp_path) -> Path:
    """A fresh copy of the built corpus3 index (2 build shards: d1 d2 | d3)."""
    return Path(shutil.copytree(files["template"], tmp_path / "idx3"))


def _search(idx, files, query="apples trains moon", candidates="bm25"):  # matches every document
    searcher = Searcher.open(idx, model=files["model"], config=SearchConfig(candidates=candidates))
    return searcher.search(query, k=searcher.reader.num_docs)


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _cli_build(files, idx, *extra, corpus=None) -> list[str]:
    return [sys.executable, "-c", "from mice_index.cli import main; main()", "build", "--corpus",
            str(corpus or files["corpus"]), "--index", str(idx), "--model", str(files["mice_dir"]), "--codec",
            "int8-dim", "--dense", "none", "--dtype", "fp32", "--quiet", *extra]


# ---------------------------------------------------------------- 4: --overwrite is atomic

def test_overwrite_with_bad_corpus_keeps_old_index_searchable(files, idx3, monkeypatch, capsys):
    before = _search(idx3, files)
    code, _, err = _cli(monkeypatch, capsys, "build", "--corpus", files["bad"], "--index", idx3, "--model",
                        files["mice_dir"], "--codec", "int8-dim", "--shard-docs", 2, "--dense", "none", "--dtype",
                        "fp32", "--quiet", "--overwrite")
    assert code == 2
    assert "bad.jsonl:2" in _one_error_line(err) and "text" in err
    assert index_info(idx3)["complete"] and IndexReader.open(idx3).doc_ids == ["d1", "d2", "d3"]
    assert [(h.doc_id, h.score) for h in _search(idx3, files)] == [(h.doc_id, h.score) for h in before]
    IndexReader.open(idx3).verify()
    assert not L.staging_dir(idx3).exists() and sorted(p.name for p in idx3.parent.iterdir()) == ["idx3"]


def test_overwrite_replaces_only_when_complete(files, idx3):
    two = _write(files["dir"] / "two.jsonl", CORPUS3[1:])
    result = build_index(two, idx3, _cfg(files["mice_dir"], overwrite=True), model=files["model"])
    assert result.info["num_docs"] == 2 and IndexReader.open(idx3).doc_ids == ["d2", "d3"]
    assert sorted(h.doc_id for h in _search(idx3, files)) == ["d2", "d3"]
    assert sorted(p.name for p in idx3.parent.iterdir()) == ["idx3"]  # no staging / old folder left


def test_overwrite_killed_midway_keeps_old_then_reruns(files, idx3):
    proc = subprocess.run(_cli_build(files, idx3, "--shard-docs", "2", "--overwrite"),
                          env={**ENV, KILL_ENV: "commit:1"}, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert L.staging_dir(idx3).is_dir()  # the half-built replacement, beside the index
    assert index_info(idx3)["complete"] and sorted(h.doc_id for h in _search(idx3, files)) == ["d1", "d2", "d3"]
    build_index(files["corpus"], idx3, _cfg(files["mice_dir"], overwrite=True), model=files["model"])
    assert not L.staging_dir(idx3).exists() and IndexReader.open(idx3).doc_ids == ["d1", "d2", "d3"]


def test_folder_missing_after_interrupted_swap_is_explained(files, idx3):
    staging = L.staging_dir(idx3)
    os.rename(idx3, staging)  # what a kill between replace_dir's two renames leaves
    with pytest.raises(IndexError_, match=f"holds its rebuilt copy.*rename {staging}"):
        IndexReader.open(idx3)


# ---------------------------------------------------------------- 5: one writer per index

def test_two_concurrent_builds_one_wins(files, tmp_path):
    idx = tmp_path / "idx5"
    cmd = _cli_build(files, idx, "--shard-docs", "1")
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        second = subprocess.run(cmd, env=ENV, capture_output=True, timeout=300)
    finally:
        out1, err1 = first.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (err1.decode()[-1500:], second.stderr.decode()[-1500:])
    loser = (err1 if first.returncode == 2 else second.stderr).decode()
    line = _one_error_line(loser)
    # started together: the lock; started after the winner finished: "already complete"
    assert "another process is building this index" in line or "already holds a complete index" in line
    assert index_info(idx)["complete"] and IndexReader.open(idx).doc_ids == ["d1", "d2", "d3"]
    IndexReader.open(idx).verify()


def test_build_while_locked_is_one_line_exit_2(files, idx3, monkeypatch, capsys, tmp_path):
    with IndexLock(idx3):
        code, _, err = _cli(monkeypatch, capsys, "build", "--corpus", files["corpus"], "--index", idx3, "--model",
                            files["mice_dir"], "--dense", "none", "--quiet", "--overwrite")
        assert code == 2 and f"holds the lock {idx3 / '.lock'}" in _one_error_line(err)
        with pytest.raises(IndexBusyError):
            build_index(files["corpus"], idx3, _cfg(files["mice_dir"], overwrite=True), model=files["model"])
    assert index_info(idx3)["complete"]


def test_reader_tells_being_built_from_interrupted_and_kill_leaves_no_lock(files, tmp_path):
    idx = tmp_path / "idx"
    proc = subprocess.run(_cli_build(files, idx, "--shard-docs", "1"), env={**ENV, KILL_ENV: "commit:1"},
                          capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not is_locked(idx)  # the OS dropped the killed builder's flock
    with pytest.raises(IndexError_, match=r"interrupted or failed\); re-run") as exc:
        IndexReader.open(idx)
    assert not isinstance(exc.value, IndexBusyError)
    with IndexLock(idx):  # another build is running
        with pytest.raises(IndexBusyError, match="being built .*another process holds the lock"):
            IndexReader.open(idx)
        assert index_info(idx)["building"] is True
    assert index_info(idx)["building"] is False
    result = build_index(files["corpus"], idx, _cfg(files["mice_dir"], shard_docs=1), model=files["model"])
    assert result.encoded_docs == 2 and result.info["complete"]


def test_static_slices_share_the_lock_but_exclude_builds(files, tmp_path):
    from mice_index.distributed.static import build_slice, merge_index

    idx = tmp_path / "sliced"
    idx.mkdir()
    cfg = _cfg(files["mice_dir"], shard_docs=1)
    with IndexLock(idx, shared=True):  # another slice is running: slices may run together
        build_slice(files["corpus"], idx, cfg, 2, 0, model=files["model"])
        with pytest.raises(IndexBusyError):  # ... but not a plain build
            build_index(files["corpus"], idx, cfg, model=files["model"])
        with pytest.raises(IndexBusyError):  # ... nor a merge
            merge_index(idx)
    with IndexLock(idx, path=idx / ".lock-slice-00001-of-00002"):  # slice 1 already running elsewhere
        with pytest.raises(IndexBusyError, match="slice 1 of 2 is already being built"):
            build_slice(files["corpus"], idx, cfg, 2, 1, model=files["model"])
    build_slice(files["corpus"], idx, cfg, 2, 1, model=files["model"])
    assert merge_index(idx)["complete"]
    assert not list(idx.glob(".lock-slice-*"))
    assert IndexReader.open(idx).doc_ids == ["d1", "d2", "d3"]


# ---------------------------------------------------------------- 8: operating-system errors

def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")  # like a write(): no file name


def test_build_disk_full_is_one_line_and_keeps_committed_shards(files, tmp_path, monkeypatch, capsys):
    from mice_index.store import writer as W

    idx = tmp_path / "full"
    real = W.ShardWriter._commit
    calls = []

    def commit_then_full(self):
        calls.append(self.index)
        return real(self) if len(calls) == 1 else _enospc()

    monkeypatch.setattr(W.ShardWriter, "_commit", commit_then_full)
    code, _, err = _cli(monkeypatch, capsys, "build", "--corpus", files["corpus"], "--index", idx, "--model",
                        files["mice_dir"], "--codec", "int8-dim", "--shard-docs", 2, "--dense", "none", "--dtype",
                        "fp32", "--quiet")
    line = _one_error_line(err)
    assert code == 2 and f"{idx / 'shards' / '.tmp-00001'}: no space left on the device" in line
    info = index_info(idx)
    assert info["num_shards"] == 1 and not info["complete"]  # shard 00000 kept: a re-run resumes
    monkeypatch.undo()
    assert build_index(files["corpus"], idx, _cfg(files["mice_dir"]), model=files["model"]).encoded_docs == 1


def test_search_run_disk_full_keeps_old_run(files, idx3, tmp_path, monkeypatch, capsys):
    from mice_index.runs import trec

    queries = _write(tmp_path / "q.jsonl", [{"_id": "q1", "text": "moon"}])
    run = tmp_path / "out.run"
    run.write_text("old run\n")
    monkeypatch.setattr(trec.os, "fsync", _enospc)
    code, _, err = _cli(monkeypatch, capsys, "search", "--index", idx3, "--queries", queries, "--run", run,
                        "--rerank", "none", "--candidates", "bm25")
    assert code == 2 and f"{run}: no space left on the device" in _one_error_line(err)
    assert run.read_text() == "old run\n" and not list(tmp_path.glob(".out.run.*"))


@pytest.mark.parametrize("exc, words", [
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), "was it removed while in use"),
])
def test_merge_os_errors_are_one_line(files, tmp_path, monkeypatch, capsys, exc, words):
    from mice_index.distributed import static

    idx = tmp_path / "m"
    static.build_slice(files["corpus"], idx, _cfg(files["mice_dir"]), 1, 0, model=files["model"])

    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr(static, "finalize", fail)
    code, _, err = _cli(monkeypatch, capsys, "merge", "--index", idx)
    line = _one_error_line(err)
    assert code == 2 and line.startswith(f"error: {idx}: ") and words in line


def test_index_folder_removed_during_build(files, tmp_path):
    from mice_index.store import writer as W

    idx = tmp_path / "gone"
    real = W.ShardWriter.__init__

    def vanish_before_second(self, root, index, *a, **kw):
        if index == 1:
            shutil.rmtree(idx)
        real(self, root, index, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W.ShardWriter, "__init__", vanish_before_second)
        with pytest.raises(StorageError, match="removed while in use"):
            build_index(files["corpus"], idx, _cfg(files["mice_dir"]), model=files["model"])
    assert not idx.exists()  # not silently re-created


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk(files, idx3):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mice_index", "info", "--index", str(idx3), "--json"],
                              env=ENV, stdout=full, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 2
    assert "<stdout>: no space left on the device" in _one_error_line(proc.stderr.decode())


# ---------------------------------------------------------------- 10: damaged index files

def _values_file(idx, shard="00000") -> Path:
    return idx / "shards" / shard / "states.zarr" / "values" / "c" / "0" / "0"


def _flip(path: Path, positions) -> None:
    data = bytearray(path.read_bytes())
    for p in positions:
        data[p] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
    ("throughout", "crc32c mismatch"),  # every 97th byte: chunks and the zarr shard index
    ("one-chunk", "crc32c mismatch in chunk 0"),  # inner chunk bytes only (the shard index is intact)
    ("truncate", "truncated"),
])
def test_damaged_states_are_one_line_naming_the_shard(files, idx3, monkeypatch, capsys, damage, words):
    f = _values_file(idx3)
    if damage == "throughout":
        _flip(f, range(0, f.stat().st_size, 97))
    elif damage == "one-chunk":
        _flip(f, [10, 20])
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(IndexError_, match=f"shards/00000/states.zarr/values/c/0/0: .*{words}.*build shard 00000"):
        _search(idx3, files)
    code, out, err = _cli(monkeypatch, capsys, "search", "--index", idx3, "--query", "apples trains moon", "--k", 3,
                          "--candidates", "bm25", "--model", files["mice_dir"])
    line = _one_error_line(err)
    assert code == 2 and "nan" not in out.lower() and "build shard 00000 is damaged" in line
    assert f"mice-index build --corpus {files['corpus']} --index {idx3}" in line and "--overwrite" in line
    # an undamaged shard still reads
    assert IndexReader.open(idx3).get_states([2])[0].shape[0] > 2


def test_damaged_offsets_named(files, idx3):
    _flip(idx3 / "shards" / "00001" / "states.zarr" / "offsets" / "c" / "0", [3])
    with pytest.raises(IndexError_, match="00001/states.zarr/offsets.*build shard 00001 is damaged"):
        IndexReader.open(idx3).get_states([2])


def test_non_finite_scores_are_never_returned(files, idx3, monkeypatch):
    from mice_index.scorer import MiceScorer

    reader = IndexReader.open(idx3)
    real = reader.get_states

    def nan_states(rows):
        out = real(rows)
        return [np.full_like(s, np.nan) if r == 2 else s for r, s in zip(rows, out)]

    real_padded = reader.read_padded

    def nan_padded(rows, out):  # what the scorer reads
        lengths = real_padded(rows, out)
        for i, r in enumerate(rows):
            if r == 2:
                out[i, : lengths[i]] = float("nan")
        return lengths

    monkeypatch.setattr(reader, "get_states", nan_states)
    monkeypatch.setattr(reader, "read_padded", nan_padded)
    scorer = MiceScorer(files["model"], reader)
    with pytest.raises(IndexError_, match=r"row 2 \('d3'\) has non-finite stored states.*build shard 00001"):
        scorer.score(["moon"], [[0, 1, 2]])
    monkeypatch.setattr(reader, "get_states", real)  # states fine, but the model overflows
    monkeypatch.setattr(reader, "read_padded", real_padded)
    monkeypatch.setattr("mice_index.scorer.score_pairs", lambda *a, **k: __import__("torch").full((3,), float("inf")))
    with pytest.raises(SearchError, match="non-finite score"):
        scorer.score(["moon"], [[0, 1, 2]])


def test_damaged_parquet_table_named(files, idx3):
    f = idx3 / "shards" / "00001" / "docs.parquet"
    _flip(f, range(4, f.stat().st_size - 8, 7))  # leave the magic bytes
    with pytest.raises(IndexError_, match="00001/docs.parquet: .*build shard 00001 is damaged.*--overwrite"):
        IndexReader.open(idx3).texts([2])


@pytest.mark.parametrize("name", ["bm25", "dense"])
def test_damaged_candidate_index_named(files, tmp_path, name):
    idx = tmp_path / "withdense"
    build_index(files["corpus"], idx, _cfg(files["mice_dir"], dense="auto"), model=files["model"])
    assert set(p.split("/")[0] for p in IndexReader.open(idx).manifest.candidates.files) == {"bm25", "dense"}
    f = max((p for p in (idx / name).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(f, [f.stat().st_size // 2])
    with pytest.raises(IndexError_, match=f"{f}: checksum mismatch in the {name} index.*--overwrite"):
        Searcher.open(idx, model=files["model"])
    with pytest.raises(IndexError_, match=f"{name}/.*checksum mismatch"):
        IndexReader.open(idx).verify()


def test_large_candidate_index_open_checks_sizes_verify_checks_crc(files, tmp_path, monkeypatch, capsys):
    """Above CANDIDATE_CRC_BYTES a searcher's open checks only file sizes (no full read of a large
    index); a flipped byte is then found by `info --verify`, a truncated file at open."""
    from mice_index.store import reader as R

    idx = tmp_path / "withdense"
    build_index(files["corpus"], idx, _cfg(files["mice_dir"], dense="auto"), model=files["model"])
    monkeypatch.setattr(R, "CANDIDATE_CRC_BYTES", 0)  # every candidate index counts as large
    f = max((p for p in (idx / "dense").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(f, [f.stat().st_size // 2])
    Searcher.open(idx, model=files["model"])  # sizes match: opens without reading the files whole
    code, _, err = _cli(monkeypatch, capsys, "info", "--index", idx, "--verify")
    assert code == 2 and f"{f}: missing, or checksum mismatch" in err
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(IndexError_, match=f"{f}: size mismatch in the dense index.*--overwrite"):
        Searcher.open(idx, model=files["model"])


def test_damaged_manifest_and_codec_named(files, idx3):
    m = idx3 / "manifest.json"
    text = m.read_text()
    m.write_text(text[: len(text) // 2])
    with pytest.raises(IndexError_, match="manifest.json: corrupt index manifest.*the index is damaged"):
        IndexReader.open(idx3)
    m.write_text(json.dumps({**json.loads(text), "shards": "x"}))
    with pytest.raises(IndexError_, match="manifest lacks shards"):
        IndexReader.open(idx3)
    m.write_text(text)
    np.save(idx3 / "codec" / "scale.npy", np.load(idx3 / "codec" / "scale.npy") * 2)
    with pytest.raises(IndexError_, match="codec: codec parameters changed.*--overwrite"):
        IndexReader.open(idx3)


def test_format_1_index_without_chunk_crc_still_reads(files, tmp_path, monkeypatch):
    from zarr.codecs import Crc32cCodec

    from mice_index.store import writer as W

    real = W.create_column

    def v1_column(group, name, dtype, width):  # the previous writer: no inner crc32c
        return group.create_array(name, shape=(0, width), dtype=dtype, chunks=(W.ZARR_CHUNK_TOKENS, width),
                                  shards=(W.ZARR_SHARD_TOKENS, width), compressors=None, fill_value=0,
                                  config={"write_empty_chunks": True})

    monkeypatch.setattr(W, "create_column", v1_column)
    old = tmp_path / "v1"
    build_index(files["corpus"], old, _cfg(files["mice_dir"]), model=files["model"])
    monkeypatch.setattr(W, "create_column", real)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    meta = json.loads((old / "shards/00000/states.zarr/values/zarr.json").read_text())
    assert Crc32cCodec().to_dict() not in meta["codecs"][0]["configuration"]["codecs"]
    a, b = IndexReader.open(old), IndexReader.open(files["template"])
    assert a.chunk_checksums is False and b.chunk_checksums is True
    for x, y in zip(a.get_states(range(3)), b.get_states(range(3))):
        np.testing.assert_array_equal(x, y)
    m["complete"] = False
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="older mice-index .*format 1.*--overwrite"):
        build_index(files["corpus"], old, _cfg(files["mice_dir"]), model=files["model"])
