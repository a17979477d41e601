"""build_index / `mice-index build` + `info`: equivalence, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mice_index.build import KILL_ENV, BuildConfig, build_index
from mice_index.candidates import BM25Index
from mice_index.cli import app, main
from mice_index.codec import CodecError
from mice_index.errors import IndexError_, SourceError
from mice_index.model import MiceModel
from mice_index.store import IndexReader, index_info

N_DOCS = 11
SHARD = 4


def _docs(n=N_DOCS):
    docs = [{"_id": f"d{i}", "title": f"Title {i}" if i % 2 else "",
             "text": f"document {i} about " + " ".join(["cells", "proteins", "genes"][: i % 3 + 1]) * (i % 5 + 1)}
            for i in range(n)]
    if n > 6:
        docs[3]["text"], docs[3]["title"] = "", ""  # empty document: stored as [CLS] [SEP]
        docs[6]["text"] = "word " * 100_000  # 100k tokens: truncated, counted
    return docs


def _write(path, docs, extra_lines=()):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs) + "".join(extra_lines))
    return path


@pytest.fixture
def mice_dir(tiny_mice, tmp_path):
    return tiny_mice.save(tmp_path / "mice")


@pytest.fixture
def corpus(tmp_path):
    return _write(tmp_path / "corpus.jsonl", _docs())


def _cfg(mice_dir, **kw):
    # fp32 compute in tests: bf16 kernels are JIT-compiled per new shape (slow for tiny corpora)
    return BuildConfig(**{"model": str(mice_dir), "codec": "int8-dim", "shard_docs": SHARD, "dense": "none",
                          "dtype": "fp32", **kw})


def _same_index(a, b):
    ra, rb = IndexReader.open(a), IndexReader.open(b)
    assert ra.doc_ids == rb.doc_ids
    assert ra.codec.fingerprint() == rb.codec.fingerprint()
    rows = list(range(ra.num_docs))
    for pa, pb in zip(ra.get_encoded(rows), rb.get_encoded(rows)):
        assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    ia, ib = index_info(a), index_info(b)
    for k in ("num_docs", "num_tokens", "truncated_docs", "empty_docs", "num_shards", "complete"):
        assert ia[k] == ib[k], k


def test_states_equal_model_and_counts(tmp_path, corpus, mice_dir):
    cfg = _cfg(mice_dir, codec="fp32")  # fp32 compute + codec: exact reference path
    result = build_index(corpus, tmp_path / "idx", cfg)
    info = result.info
    assert info["complete"] and info["num_docs"] == N_DOCS and info["num_shards"] == 3
    assert info["truncated_docs"] == 1 and info["empty_docs"] == 1
    model = MiceModel.load(mice_dir)
    r = IndexReader.open(tmp_path / "idx")
    assert r.doc_ids == [d["_id"] for d in _docs()]
    for row, (d, got) in enumerate(zip(_docs(), r.get_states(range(N_DOCS)))):
        ref = model.encode_documents([model.format_document(d["title"], d["text"])])[0].numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"row {row}")
    assert r.get_states([3])[0].shape[0] == 2 and r.get_states([6])[0].shape[0] == model.config.max_doc_length
    assert info["num_tokens"] == sum(r.lengths(range(N_DOCS)))
    bm25 = BM25Index.load(r.bm25_path)
    assert bm25.num_docs == N_DOCS and bm25.search(["proteins"], 3).rows[0, 0] >= 0
    assert r.dense_path is None and info["candidates"] == {"bm25": True, "dense": False}


def test_cli_build_and_info(tmp_path, corpus, mice_dir):
    idx = tmp_path / "idx"
    run = CliRunner().invoke(app, ["build", "--corpus", str(corpus), "--index", str(idx), "--model", str(mice_dir),
                                   "--codec", "fp16", "--shard-docs", "5", "--dense", "none", "--dtype", "fp32",
                                   "--quiet"])
    assert run.exit_code == 0, run.output
    assert "11 documents" in run.stdout
    out = CliRunner().invoke(app, ["info", "--index", str(idx), "--json", "--verify"])
    info = json.loads(out.stdout)
    for key in ("num_docs", "num_tokens", "bytes_per_token", "codec", "layer", "hidden_size", "model_fingerprint",
                "disk_bytes", "format_version", "complete"):
        assert key in info, key
    assert info["codec"] == "fp16" and info["layer"] == 2 and info["hidden_size"] == 32 and info["complete"] is True
    assert info["model_fingerprint"] == MiceModel.load(mice_dir).fingerprint() and info["verified"]
    table = CliRunner().invoke(app, ["info", "--index", str(idx)])
    assert table.exit_code == 0 and "complete" in table.stdout and "fp16" in table.stdout


def _cli_args(corpus, idx, mice_dir):
    return ["build", "--corpus", str(corpus), "--index", str(idx), "--model", str(mice_dir), "--codec", "int8-dim",
            "--shard-docs", str(SHARD), "--dense", "none", "--dtype", "fp32", "--quiet"]


@pytest.mark.parametrize("point", ["commit:1", "precommit:2",
                                   pytest.param("candidates", marks=pytest.mark.slow)])
def test_kill9_then_resume_is_identical(tmp_path, corpus, mice_dir, point):
    idx = tmp_path / "killed"
    env = {**os.environ, KILL_ENV: point, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", "from mice_index.cli import main; main()",
                           *_cli_args(corpus, idx, mice_dir)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    info = index_info(idx)
    assert info["complete"] is False
    committed = {"commit:1": 1, "precommit:2": 1, "candidates": 3}[point]
    assert info["num_shards"] == committed
    with pytest.raises(IndexError_, match="incomplete"):
        IndexReader.open(idx)
    resumed = build_index(corpus, idx, _cfg(mice_dir))  # "re-running the same command"
    assert resumed.encoded_docs == N_DOCS - min(N_DOCS, committed * SHARD)
    build_index(corpus, tmp_path / "clean", _cfg(mice_dir))
    _same_index(idx, tmp_path / "clean")
    assert not list((idx / "shards").glob(".tmp-*"))


def test_bad_line_mid_corpus_keeps_shards_then_resumes(tmp_path, mice_dir):
    docs = _docs()
    bad = _write(tmp_path / "corpus.jsonl", docs[:9], ['{"_id": "x", "text": \n'] +
                 [json.dumps(d) + "\n" for d in docs[9:]])
    with pytest.raises(SourceError, match=r"corpus.jsonl:10"):
        build_index(bad, tmp_path / "idx", _cfg(mice_dir))
    info = index_info(tmp_path / "idx")
    assert not info["complete"] and info["num_docs"] == 8 and info["num_shards"] == 2  # rows 0..7 kept
    IndexReader.open(tmp_path / "idx", allow_incomplete=True).verify()
    fixed = _write(tmp_path / "corpus.jsonl", docs)
    assert build_index(fixed, tmp_path / "idx", _cfg(mice_dir)).encoded_docs == N_DOCS - 8
    build_index(fixed, tmp_path / "clean", _cfg(mice_dir))
    _same_index(tmp_path / "idx", tmp_path / "clean")


@pytest.mark.parametrize("content, match", [
    (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n', r"corpus.jsonl:2: invalid UTF-8"),
    (b'{"_id": "a", "text": "ok"}\n{"text": "no id"}\n', r"corpus.jsonl:2.*_id"),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "title": "no text"}\n', r"corpus.jsonl:2.*'b'.*text"),
    (b'{"_id": "a", "text": "ok"}\n{"_id": "a", "text": "again"}\n', r"corpus.jsonl:2: duplicate document id 'a'"),
    (b"\n\n", r"no documents"),
    (b'{"_id": "a", "text": "ok"}\nnot json\n', r"corpus.jsonl:2"),
])
def test_bad_corpus_one_clear_error(tmp_path, mice_dir, content, match):
    (tmp_path / "corpus.jsonl").write_bytes(content)
    with pytest.raises(SourceError, match=match):
        build_index(tmp_path / "corpus.jsonl", tmp_path / "idx", _cfg(mice_dir))


def test_unknown_codec_cli_one_line(tmp_path, corpus, monkeypatch, capsys):
    with pytest.raises(CodecError, match="unknown codec 'nope'"):
        BuildConfig(codec="nope")
    monkeypatch.setattr(sys, "argv", ["mice-index", "build", "--corpus", str(corpus), "--index",
                                      str(tmp_path / "idx"), "--codec", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown codec 'nope'" in err and "compact" in err and not (tmp_path / "idx").exists()


def test_refuse_other_model_settings_or_corpus(tmp_path, mice_dir, minilm_dir):
    from tests.conftest import write_tiny_bert

    docs = _docs()
    _write(tmp_path / "c.jsonl", docs[:5], ["{broken\n"])
    with pytest.raises(SourceError):
        build_index(tmp_path / "c.jsonl", tmp_path / "idx", _cfg(mice_dir))
    assert index_info(tmp_path / "idx")["num_docs"] == 4
    _write(tmp_path / "c.jsonl", docs)
    write_tiny_bert(tmp_path / "other", minilm_dir, seed=1)
    other = MiceModel.from_pretrained(tmp_path / "other", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64).save(tmp_path / "other-mice")
    with pytest.raises(IndexError_, match="another model.*refusing to append"):
        build_index(tmp_path / "c.jsonl", tmp_path / "idx", _cfg(other))
    with pytest.raises(IndexError_, match="other settings.*codec: index 'int8-dim' vs now 'fp16'"):
        build_index(tmp_path / "c.jsonl", tmp_path / "idx", _cfg(mice_dir, codec="fp16"))
    _write(tmp_path / "d.jsonl", [{**docs[0], "_id": "zz"}, *docs[1:]])
    with pytest.raises(IndexError_, match="corpus differs.*row 0 is 'd0'"):
        build_index(tmp_path / "d.jsonl", tmp_path / "idx", _cfg(mice_dir))
    assert index_info(tmp_path / "idx")["num_docs"] == 4  # nothing lost
    build_index(tmp_path / "c.jsonl", tmp_path / "idx", _cfg(mice_dir))
    assert index_info(tmp_path / "idx")["complete"]


def test_complete_index_needs_overwrite(tmp_path, corpus, mice_dir):
    build_index(corpus, tmp_path / "idx", _cfg(mice_dir))
    with pytest.raises(IndexError_, match="complete index; pass --overwrite"):
        build_index(corpus, tmp_path / "idx", _cfg(mice_dir))
    small = _write(tmp_path / "small.jsonl", _docs(3))
    assert build_index(small, tmp_path / "idx", _cfg(mice_dir, overwrite=True)).info["num_docs"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IndexError_, match="not empty and holds no index"):
        build_index(small, tmp_path / "other", _cfg(mice_dir, overwrite=True))


def test_damaged_shard_named(tmp_path, corpus, mice_dir):
    build_index(corpus, tmp_path / "idx", _cfg(mice_dir))
    f = tmp_path / "idx" / "shards" / "00001" / "docs.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    run = CliRunner().invoke(app, ["info", "--index", str(tmp_path / "idx"), "--verify"])
    assert isinstance(run.exception, IndexError_)
    assert "shards/00001/docs.parquet: checksum mismatch" in str(run.exception)


def test_dense_second_pass_for_other_bottoms(tmp_path, mice_dir, minilm):
    from mice_index.candidates import DenseIndex
    from mice_index.defaults import load_dense_tower

    docs = _docs(5)
    corpus = _write(tmp_path / "c.jsonl", docs)
    info = build_index(corpus, tmp_path / "idx", _cfg(mice_dir, dense="auto")).info
    assert info["dense"]["source"] == "second-pass" and info["dense"]["dim"] == 384
    r = IndexReader.open(tmp_path / "idx")
    vecs = r.dense_vectors()
    assert vecs.shape == (5, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    assert DenseIndex.load(r.dense_path).num_docs == 5
    backbone = MiceModel.from_pretrained(minilm.config and "sentence-transformers/all-MiniLM-L6-v2",
                                         fusion_layer=2, num_interaction_layers=1)
    tower = load_dense_tower(backbone)
    import torch

    with torch.inference_mode():
        ids, mask = backbone.tokenize([backbone.format_document(docs[1]["title"], docs[1]["text"])], 256)
        ref = tower(backbone.encode_document_batch(ids, mask), mask)[0].numpy()
    np.testing.assert_allclose(vecs[1], ref, atol=1e-5)


def test_missing_corpus_fails_before_model_load(tmp_path):
    with pytest.raises(SourceError, match="nope.jsonl: corpus file or folder not found"):
        build_index(tmp_path / "nope.jsonl", tmp_path / "idx", BuildConfig(model=str(tmp_path / "no-model")))
    assert not (tmp_path / "idx").exists()
