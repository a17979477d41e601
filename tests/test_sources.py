"""Readers for documents / queries / qrels: happy paths, the sample collection, every bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import ir_measures
import pytest

from mice_index.errors import SourceError
from mice_index.sources import (
    Document,
    Query,
    count_documents,
    read_documents,
    read_qrels,
    read_queries,
    sample_collection,
)


def write_lines(path, lines, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "wb":
        path.write_bytes(b"".join(lines))
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jl(**obj):
    return json.dumps(obj)


def raises_at(fn, path, line, *fragments):
    """Assert fn() raises SourceError naming `path:line` (line None: only the path) + fragments."""
    with pytest.raises(SourceError) as info:
        fn()
    msg = str(info.value)
    assert str(path) in msg, msg
    if line is not None:
        assert f"{path}:{line}:" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- documents


def test_documents_beir_folder_and_fields(tmp_path):
    write_lines(tmp_path / "c" / "corpus.jsonl", [
        jl(_id="a", title="T", text="hello"),
        "",
        "   ",
        jl(_id="b", text="no title"),
        jl(_id="c", title=None, text=""),  # empty text and null title are valid
    ])
    docs = list(read_documents(tmp_path / "c"))
    assert docs == [Document("a", "hello", "T"), Document("b", "no title", ""), Document("c", "", "")]
    assert count_documents(tmp_path / "c") == 3
    assert count_documents(str(tmp_path / "c" / "corpus.jsonl")) == 3


def test_documents_custom_fields_gzip_and_bom(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\ufeff" + jl(id="x", body="é body", heading="H") + "\n")
    docs = list(read_documents(path, id_field="id", text_field="body", title_field="heading"))
    assert docs == [Document("x", "é body", "H")]
    assert count_documents(path) == 1


def test_documents_is_lazy(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [jl(_id="a", text="x"), "{broken"])
    it = read_documents(path)
    assert next(it).doc_id == "a"  # the bad line is only reached later
    raises_at(lambda: next(it), path, 2, "malformed JSON")


def test_sample_collection():
    root = sample_collection()
    assert (root / "README.md").read_text().count("CC0")
    docs = list(read_documents(root))
    queries = list(read_queries(root))
    qrels = read_qrels(root)
    assert len(docs) == count_documents(root) >= 30
    assert len(queries) >= 10
    ids = {d.doc_id for d in docs}
    assert {q.doc_id for q in qrels} <= ids
    assert {q.query_id for q in qrels} == {q.query_id for q in queries}
    assert all(d.title and d.text for d in docs)


@pytest.mark.parametrize(
    ("lines", "bad_line", "fragment"),
    [
        ([jl(_id="a", text="x"), '{"_id": "b", "text": '], 2, "malformed JSON"),
        ([jl(_id="a", text="x"), "[1, 2]"], 2, "expected a JSON object"),
        ([jl(text="x")], 1, "missing field '_id'"),
        ([jl(_id="a", title="t")], 1, "missing field 'text'"),
        ([jl(_id=7, text="x")], 1, "'_id' must be a string"),
        ([jl(_id="a", text=["x"])], 1, "'text' must be a string"),
        ([jl(_id="a", text="x", title=3)], 1, "'title' must be a string"),
        ([jl(_id="", text="x")], 1, "empty document id"),
        ([jl(_id="a b", text="x")], 1, "contains whitespace"),
    ],
)
def test_documents_bad_lines(tmp_path, lines, bad_line, fragment):
    path = write_lines(tmp_path / "corpus.jsonl", lines)
    raises_at(lambda: list(read_documents(path)), path, bad_line, fragment)


def test_documents_missing_text_names_doc_id(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [jl(_id="doc-9", title="t")])
    raises_at(lambda: list(read_documents(path)), path, 1, "'doc-9'")


def test_documents_invalid_utf8(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [jl(_id="a", text="x").encode() + b"\n", b'{"_id": "b", "text": "caf\xe9"}\n'],
        mode="wb",
    )
    raises_at(lambda: list(read_documents(path)), path, 2, "invalid UTF-8")


def test_documents_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [
        jl(_id="a", text="x"), jl(_id="b", text="y"), "", jl(_id="a", text="z"),
    ])
    raises_at(lambda: list(read_documents(path)), path, 4, "duplicate document id 'a'", "line 1")


@pytest.mark.parametrize("content", [[], ["", "  "]])
def test_documents_empty_corpus(tmp_path, content):
    path = write_lines(tmp_path / "corpus.jsonl", content)
    raises_at(lambda: list(read_documents(path)), path, None, "no documents")


def test_documents_missing_paths(tmp_path):
    raises_at(lambda: list(read_documents(tmp_path / "nope.jsonl")), tmp_path / "nope.jsonl", None, "not found")
    (tmp_path / "empty_dir").mkdir()
    raises_at(lambda: list(read_documents(tmp_path / "empty_dir")), tmp_path / "empty_dir", None, "corpus.jsonl")
    raises_at(lambda: count_documents(tmp_path / "nope.jsonl"), tmp_path / "nope.jsonl", None, "not found")


# ----------------------------------------------------------------------------- queries


def test_queries_jsonl_tsv_and_sniffing(tmp_path):
    write_lines(tmp_path / "b" / "queries.jsonl", [jl(_id="1", text="what", metadata={}), jl(_id="2", text="why")])
    assert list(read_queries(tmp_path / "b")) == [Query("1", "what"), Query("2", "why")]
    tsv = write_lines(tmp_path / "q.tsv", ["1\twhat is\tit", "", "2\twhy"])
    assert list(read_queries(tsv)) == [Query("1", "what is\tit"), Query("2", "why")]
    sniff_tsv = write_lines(tmp_path / "queries", ["1\twhat"])
    assert list(read_queries(sniff_tsv)) == [Query("1", "what")]
    sniff_json = write_lines(tmp_path / "queries2", [jl(qid="1", query="what")])
    assert list(read_queries(sniff_json, id_field="qid", text_field="query")) == [Query("1", "what")]


@pytest.mark.parametrize(
    ("name", "lines", "bad_line", "fragment"),
    [
        ("q.jsonl", [jl(_id="1", text="a"), jl(_id="2", text="  ")], 2, "empty text"),
        ("q.jsonl", [jl(_id="1", text="a"), "{"], 2, "malformed JSON"),
        ("q.jsonl", [jl(text="a")], 1, "missing field '_id'"),
        ("q.jsonl", [jl(_id="1")], 1, "missing field 'text'"),
        ("q.jsonl", [jl(_id=1, text="a")], 1, "must be a string"),
        ("q.tsv", ["1\ta", "2 no tab"], 2, "no tab"),
        ("q.tsv", ["1\ta", "2\t"], 2, "empty text"),
        ("q.tsv", ["\ta"], 1, "empty query id"),
    ],
)
def test_queries_bad_lines(tmp_path, name, lines, bad_line, fragment):
    path = write_lines(tmp_path / name, lines)
    raises_at(lambda: list(read_queries(path)), path, bad_line, fragment)


def test_queries_duplicate_and_empty(tmp_path):
    path = write_lines(tmp_path / "q.tsv", ["1\ta", "2\tb", "1\tc"])
    raises_at(lambda: list(read_queries(path)), path, 3, "duplicate query id '1'", "line 1")
    empty = write_lines(tmp_path / "e.jsonl", [])
    raises_at(lambda: list(read_queries(empty)), empty, None, "no queries")
    bad = write_lines(tmp_path / "u.tsv", [b"1\ta\n", b"2\t\xff\n"], mode="wb")
    raises_at(lambda: list(read_queries(bad)), bad, 2, "invalid UTF-8")


# ----------------------------------------------------------------------------- qrels


def test_qrels_formats(tmp_path):
    write_lines(tmp_path / "b" / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "1\ta\t1", "1\tb\t2"])
    expected = [ir_measures.Qrel("1", "a", 1, "0"), ir_measures.Qrel("1", "b", 2, "0")]
    assert read_qrels(tmp_path / "b") == expected
    trec = write_lines(tmp_path / "qrels.trec", ["1 0 a 1", "", "1  0 b 2"])
    assert read_qrels(trec) == expected
    headerless = write_lines(tmp_path / "h.tsv", ["1\ta\t1", "1\tb\t2.0"])
    assert read_qrels(headerless) == expected


@pytest.mark.parametrize(
    ("lines", "bad_line", "fragment"),
    [
        (["query-id\tcorpus-id\tscore", "1\ta"], 2, "expected 3 columns"),
        (["query-id\tcorpus-id\tscore", "1\ta\thigh"], 2, "not an integer"),
        (["1 0 a 1", "1 0 b"], 2, "expected 4 columns"),
        (["1 0 a x"], 1, "not an integer"),
        (["just-one-field"], 1, "unrecognised qrels format"),
        (["1 0 a 1", "1 0 b 1", "1 0 a 2"], 3, "duplicate judgement"),
    ],
)
def test_qrels_bad_lines(tmp_path, lines, bad_line, fragment):
    path = write_lines(tmp_path / "qrels.txt", lines)
    raises_at(lambda: read_qrels(path), path, bad_line, fragment)


def test_qrels_empty_and_missing(tmp_path):
    header_only = write_lines(tmp_path / "qrels.tsv", ["query-id\tcorpus-id\tscore"])
    raises_at(lambda: read_qrels(header_only), header_only, None, "no relevance judgements")
    (tmp_path / "beir").mkdir()
    raises_at(lambda: read_qrels(tmp_path / "beir"), tmp_path / "beir", None, "qrels/test.tsv")


# ----------------------------------------------------------------------------- irds


def test_irds_unknown_id_and_empty_id():
    with pytest.raises(SourceError, match="unknown ir_datasets id 'no-such/dataset'"):
        list(read_documents("irds:no-such/dataset"))
    with pytest.raises(SourceError, match="empty ir_datasets id"):
        read_qrels("irds:")


IRDS_PROBE = """
import sys
from mice_index.errors import SourceError
from mice_index.sources import read_documents, read_queries, read_qrels
for fn in (read_documents, read_queries, read_qrels):
    try:
        out = fn("irds:beir/scifact/test")
        next(iter(out))
    except SourceError as exc:
        print("SourceError:", exc)
    else:
        print("OK")
"""


def test_irds_offline_fails_fast_and_clearly(tmp_path):
    """With an empty ir_datasets home and no network, every reader fails with one clear line."""
    env = dict(os.environ, IR_DATASETS_HOME=str(tmp_path / "irds"))
    env.pop("IR_DATASETS_DL_TRIES", None)
    proc = subprocess.run([sys.executable, "-c", IRDS_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if lines == ["OK"] * 3:
        pytest.skip("network available: beir/scifact downloaded")
    assert len(lines) == 3, proc.stdout
    for line, option in zip(lines, ("--corpus", "--queries", "--qrels"), strict=True):
        assert line.startswith("SourceError: irds:beir/scifact/test: "), line
        assert "download" in line and option in line, line


# ----------------------------------------------------------------------------- duplicate ids in bounded memory


def test_seen_ids_merge_keeps_every_id(monkeypatch):
    from mice_index.sources import seen

    monkeypatch.setattr(seen, "CHUNK", 4)  # merge into the sorted array every 4 ids
    s = seen.SeenIds()
    ids = [f"doc{i}" for i in range(50)]
    assert not any(s.seen_before(d) for d in ids)
    assert len(s) == 50 and s._sorted.size >= 48  # most hashes live in the sorted array
    assert all(s.seen_before(d) for d in ids)  # old (merged) and recent ids are both found
    assert not s.seen_before("doc50")


def test_duplicate_id_after_merges_names_both_lines(tmp_path, monkeypatch):
    from mice_index.sources import seen

    monkeypatch.setattr(seen, "CHUNK", 3)
    lines = [jl(_id=f"d{i}", text="x") for i in range(20)] + [jl(_id="d2", text="again")]
    path = write_lines(tmp_path / "corpus.jsonl", lines)
    raises_at(lambda: list(read_documents(path)), path, 21, "duplicate document id 'd2'", "line 3")
    q = write_lines(tmp_path / "q.tsv", [f"q{i}\tt" for i in range(10)] + ["q7\tagain"])
    raises_at(lambda: list(read_queries(q)), q, 11, "duplicate query id 'q7'", "line 8")


def test_hash_collisions_are_not_duplicates(tmp_path, monkeypatch):
    """Every id gets the same hash: distinct ids must still be read, a true duplicate still named."""
    from mice_index.sources import seen

    monkeypatch.setattr(seen, "id_hash", lambda key: 7)
    path = write_lines(tmp_path / "corpus.jsonl", [jl(_id=f"d{i}", text="x") for i in range(5)])
    assert [d.doc_id for d in read_documents(path)] == [f"d{i}" for i in range(5)]
    dup = write_lines(tmp_path / "dup.jsonl", [jl(_id="a", text="x"), jl(_id="b", text="y"), jl(_id="a", text="z")])
    raises_at(lambda: list(read_documents(dup)), dup, 3, "duplicate document id 'a'", "line 1")


def test_irds_duplicate_checked_exactly(monkeypatch):
    from types import SimpleNamespace

    from mice_index.sources import irds, seen

    records = {"docs": [SimpleNamespace(doc_id=i, text="t", title="") for i in ("a", "b", "c", "b")],
               "queries": [SimpleNamespace(query_id=i, text="t") for i in ("1", "2", "2")]}
    monkeypatch.setattr(irds, "iterate", lambda src, kind, convert: (convert(r) for r in records[kind]))
    monkeypatch.setattr(seen, "id_hash", lambda key: 7)  # every id collides: only exact ids count
    with pytest.raises(SourceError, match=r"^irds:x: document #4: duplicate document id 'b'$"):
        list(read_documents("irds:x"))
    with pytest.raises(SourceError, match=r"^irds:x: query #3: duplicate query id '2'$"):
        list(read_queries("irds:x"))
    records["docs"].pop()
    assert [d.doc_id for d in read_documents("irds:x")] == ["a", "b", "c"]
