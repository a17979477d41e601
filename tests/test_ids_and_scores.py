"""Ids that would corrupt a TREC run (NUL and other control characters) are refused wherever ids
come in or go out; `eval` refuses non-finite scores; a failed faiss write is one line (issue 17)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from mice_index.cli import main
from mice_index.errors import SourceError, StorageError, os_errors
from mice_index.runs import ScoredDoc, read_run, write_run
from mice_index.runs.trec import RunError
from mice_index.sources import read_documents, read_queries


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("bad", ["d\x00x", "\x00", "d\x1fx", "d\x7f", "d\x85x"])
def test_control_characters_in_document_ids_are_refused(tmp_path, bad):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "ok", "text": "a"}) + "\n" + json.dumps({"_id": bad, "text": "b"}) + "\n")
    with pytest.raises(SourceError, match=r"corpus.jsonl:2: document id .* (control character|whitespace)"):
        list(read_documents(path))


def test_nul_in_tsv_document_and_query_ids_is_refused(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("d1\tfine\nd\x002\tbad\n")
    with pytest.raises(SourceError, match=r"corpus.tsv:2: document id 'd\\x002' contains the control character U\+0000"):
        list(read_documents(corpus))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q\x00", "text": "x"}) + "\n")
    with pytest.raises(SourceError, match=r"queries.jsonl:1: query id .*U\+0000"):
        list(read_queries(queries))


def test_cli_build_with_a_nul_doc_id_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "a\u0000b", "text": "x"}) + "\n")
    code, err = _cli(monkeypatch, capsys, "build", "--corpus", corpus, "--index", tmp_path / "idx")
    assert code == 2 and "U+0000" in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("qid, docid", [("q1", "d\x00"), ("q\x00", "d1"), ("q1", "d\x1b[31m")])
def test_write_run_refuses_control_characters(tmp_path, qid, docid):
    with pytest.raises(RunError, match="control character"):
        write_run(tmp_path / "r.run", [ScoredDoc(qid, docid, 1.0)])
    assert not (tmp_path / "r.run").exists()


def test_read_run_refuses_control_characters(tmp_path):
    run = tmp_path / "r.run"
    run.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d\x002 2 1.0 t\n")
    with pytest.raises(RunError, match=r"r.run:2: document id .*U\+0000"):
        read_run(run)


@pytest.mark.parametrize("score", ["inf", "-inf", "Infinity", "nan", "1e999"])
def test_eval_refuses_non_finite_scores(tmp_path, monkeypatch, capsys, score):
    run, qrels = tmp_path / "r.run", tmp_path / "q.qrels"
    run.write_text(f"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 {score} t\n")
    qrels.write_text("q1 0 d1 1\n")
    with pytest.raises(RunError, match=r"r.run:2: score .* is not a finite number"):
        read_run(run)
    code, err = _cli(monkeypatch, capsys, "eval", "--run", run, "--qrels", qrels)
    assert code == 2 and f"{run}:2:" in err.replace("\n", "") and "Traceback" not in err


def test_finite_scores_still_read(tmp_path):
    run = tmp_path / "r.run"
    run.write_text("q1 Q0 d1 1 1e308 t\nq1 Q0 d2 2 -1e308 t\n")
    assert [d.score for d in read_run(run)] == [1e308, -1e308]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_write_to_a_full_disk_is_one_storage_error(tmp_path, kind):
    """The faiss file is written through Python's file object: a full disk (here /dev/full, which
    fails every write with ENOSPC) is an OSError that the build turns into one line, instead of a
    faiss RuntimeError traceback, or (small indexes, written at fclose) no error at all."""
    from mice_index.candidates.dense import INDEX_FILE, DenseConfig, DenseIndex

    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    index = DenseIndex.build(vectors, DenseConfig(kind=kind))
    out = tmp_path / "dense"
    out.mkdir()
    os.symlink("/dev/full", out / INDEX_FILE)
    with pytest.raises(StorageError, match=r"dense/dense.faiss: no space left on the device.* while writing the dense index \(ENOSPC\)"):
        with os_errors(out, "writing the dense index"):  # as build.py wraps it
            index.save(out)


def test_faiss_write_error_of_faiss_itself_is_a_storage_error(tmp_path, monkeypatch):
    """A RuntimeError from faiss's writer (its form for a failed fwrite) becomes one StorageError line."""
    import faiss

    from mice_index.candidates.dense import DenseConfig, DenseIndex

    index = DenseIndex.build(np.ones((4, 8), np.float32), DenseConfig(kind="flat"))

    def failing(*_):
        raise RuntimeError("Error in faiss::BufferedIOWriter: 'ret == (n)' failed: write error in x: 0 != 1 "
                           "(No space left on device)")

    monkeypatch.setattr(faiss, "write_index", failing)
    with pytest.raises(StorageError, match=r"writing the faiss index failed \(No space left on device\)"):
        index.save(tmp_path / "dense")
