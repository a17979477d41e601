"""TREC run writing/reading (ranking, ties, atomicity) and evaluation with ir_measures."""

from __future__ import annotations

import math
import os

import ir_measures
import pytest

from mice_index.errors import MiceIndexError, SourceError
from mice_index.runs import MetricError, RunError, ScoredDoc, evaluate, read_run, write_run
from mice_index.runs import trec


def test_scored_doc_matches_ir_measures_fields():
    assert ScoredDoc._fields == ir_measures.ScoredDoc._fields
    assert issubclass(RunError, SourceError) and issubclass(MetricError, MiceIndexError)


def test_write_read_round_trip_and_ranking(tmp_path):
    results = {
        "q2": [ScoredDoc("q2", "x", 0.5), ScoredDoc("q2", "y", 1.25)],
        "q1": [ScoredDoc("q1", "a", -1.0), ScoredDoc("q1", "b", 3.0), ScoredDoc("q1", "c", 0.1 + 0.2)],
    }
    path = write_run(tmp_path / "sub" / "run.trec", results, tag="bm25")
    lines = path.read_text().splitlines()
    assert lines == [
        "q2 Q0 y 1 1.25 bm25",
        "q2 Q0 x 2 0.5 bm25",
        "q1 Q0 b 1 3.0 bm25",
        f"q1 Q0 c 2 {0.1 + 0.2!r} bm25",
        "q1 Q0 a 3 -1.0 bm25",
    ]
    back = read_run(path)
    assert sorted(back) == sorted(sd for docs in results.values() for sd in docs)  # exact floats


def test_write_accepts_flat_iterable_and_breaks_ties_by_doc_id(tmp_path):
    flat = [ScoredDoc("q", d, 1.0) for d in ("d3", "d10", "d1", "d2")] + [ScoredDoc("q", "d0", 0.5)]
    path = write_run(tmp_path / "run.txt", flat)
    assert [line.split()[2:4] for line in path.read_text().splitlines()] == [
        ["d1", "1"], ["d10", "2"], ["d2", "3"], ["d3", "4"], ["d0", "5"],
    ]
    assert path.read_text().split()[5] == "mice-index"
    assert write_run(tmp_path / "run2.txt", list(reversed(flat))).read_text() == path.read_text()


def test_atomic_write_replaces_only_on_success(tmp_path, monkeypatch):
    path = tmp_path / "run.trec"
    path.write_text("old contents\n")
    with pytest.raises(RunError, match="NaN"):
        write_run(path, [ScoredDoc("q", "a", 1.0), ScoredDoc("q", "b", float("nan"))])
    assert path.read_text() == "old contents\n"

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(trec.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_run(path, [ScoredDoc("q", "a", 1.0)])
    assert path.read_text() == "old contents\n"
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run.trec"]  # no temp file left behind

    write_run(path, [ScoredDoc("q", "a", 1.0)])
    assert path.read_text() == "q Q0 a 1 1.0 mice-index\n"
    assert os.listdir(tmp_path) == ["run.trec"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    ("results", "fragment"),
    [
        ([ScoredDoc("q 1", "a", 1.0)], "query id 'q 1'"),
        ([ScoredDoc("q", "", 1.0)], "document id ''"),
        ([ScoredDoc("q", "a", 1.0), ScoredDoc("q", "a", 2.0)], "appears twice"),
        ({"q": [ScoredDoc("other", "a", 1.0)]}, "listed under query 'q'"),
    ],
)
def test_write_rejects_unwritable_results(tmp_path, results, fragment):
    with pytest.raises(RunError, match=fragment):
        write_run(tmp_path / "run", results)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("lines", "bad_line", "fragment"),
    [
        (["q Q0 a 1 1.0 t", "q Q0 b 2 0.5"], 2, "expected 6 columns"),
        (["q Q0 a one 1.0 t"], 1, "rank 'one' is not an integer"),
        (["q Q0 a 1 1.0 t", "q Q0 b 2 high t"], 2, "score 'high' is not a number"),
        (["q Q0 a 1 nan t"], 1, "not a finite number"),
        (["q Q0 a 1 1.0 t", "q Q0 a 2 0.5 t"], 2, "first on line 1"),
    ],
)
def test_read_run_bad_lines(tmp_path, lines, bad_line, fragment):
    path = tmp_path / "run.trec"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunError) as info:
        read_run(path)
    assert f"{path}:{bad_line}:" in str(info.value) and fragment in str(info.value)


def test_read_run_empty_and_missing(tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RunError, match="no results"):
        read_run(tmp_path / "empty")
    with pytest.raises(RunError, match="not found"):
        read_run(tmp_path / "missing")


# ----------------------------------------------------------------------------- evaluate

RUN = [
    ScoredDoc("q1", "d1", 3.0), ScoredDoc("q1", "d2", 2.0), ScoredDoc("q1", "d3", 1.0),
    ScoredDoc("q2", "y", 2.0), ScoredDoc("q2", "x", 1.0),
]
QRELS = [ir_measures.Qrel("q1", "d1", 1), ir_measures.Qrel("q1", "d3", 2), ir_measures.Qrel("q2", "x", 1)]


def test_evaluate_hand_computed():
    # q1: ranks d1(rel 1), d2(0), d3(rel 2): DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2 + 1/log2(3).
    # q2: x (rel 1) at rank 2: DCG = 1/log2(3); ideal = 1. RR: q1 = 1, q2 = 1/2.
    ndcg_q1 = 2 / (2 + 1 / math.log2(3))
    ndcg_q2 = 1 / math.log2(3)
    values = evaluate(RUN, QRELS, ["nDCG@10", "RR@10", "R@2"])
    assert list(values) == ["nDCG@10", "RR@10", "R@2"]
    assert values["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-9)
    assert values["RR@10"] == pytest.approx(0.75)
    assert values["R@2"] == pytest.approx((1 / 2 + 1) / 2)


def test_evaluate_from_files(tmp_path):
    run_path = write_run(tmp_path / "run.trec", RUN)
    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q.query_id}\t{q.doc_id}\t{q.relevance}\n" for q in QRELS))
    assert evaluate(run_path, qrels_path, ["RR@10"]) == {"RR@10": pytest.approx(0.75)}
    # a judged query missing from the run counts as 0 (q1), unjudged run queries are ignored
    extra = [ScoredDoc("unjudged", "d1", 1.0)]
    assert evaluate({"q2": RUN[3:], "unjudged": extra}, QRELS, "RR@10") == {"RR@10": pytest.approx(0.25)}


def test_evaluate_errors():
    with pytest.raises(MetricError, match="unknown metric 'nDGC@10'.*nDCG@10"):
        evaluate(RUN, QRELS, ["nDGC@10"])
    with pytest.raises(MetricError, match="unknown metric 'nDCG@ten'"):
        evaluate(RUN, QRELS, ["nDCG@ten"])
    with pytest.raises(MetricError, match="no metrics"):
        evaluate(RUN, QRELS, [])
    other = [ir_measures.Qrel("z1", "d1", 1), ir_measures.Qrel("z2", "d1", 1)]
    with pytest.raises(RunError, match=r"share no query ids \(run has 2 queries e.g. 'q1', 'q2', qrels has 2 e.g. 'z1', 'z2'\)"):
        evaluate(RUN, other, ["RR@10"])
    with pytest.raises(RunError, match="2 document id.*'d2', 'd3'"):
        evaluate(RUN, QRELS, ["RR@10"], known_doc_ids={"d1", "x", "y"})
    # unjudged documents are fine; known ids that cover the run are fine
    assert evaluate(RUN, QRELS, ["RR@10"], known_doc_ids={"d1", "d2", "d3", "x", "y"})["RR@10"] == 0.75
