"""`mice-index eval`: JSON output, table output, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from mice_index.cli import app, main
from mice_index.runs import ScoredDoc, write_run
from mice_index.sources import read_qrels, sample_collection


@pytest.fixture
def files(tmp_path):
    qrels = tmp_path / "qrels.trec"
    qrels.write_text("q1 0 d1 1\nq1 0 d3 2\nq2 0 x 1\n")
    run = write_run(tmp_path / "run.trec", [
        ScoredDoc("q1", "d1", 3.0), ScoredDoc("q1", "d2", 2.0), ScoredDoc("q1", "d3", 1.0),
        ScoredDoc("q2", "y", 2.0), ScoredDoc("q2", "x", 1.0),
    ])
    return run, qrels


def test_eval_json(files):
    run, qrels = files
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--qrels", str(qrels),
                                      "--metrics", "RR@10, R@1,nDCG@10", "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert list(values) == ["RR@10", "R@1", "nDCG@10"]
    assert values["RR@10"] == pytest.approx(0.75)
    assert values["R@1"] == pytest.approx(0.25)  # q1: 1 of 2 relevant at rank 1; q2: 0


def test_eval_table_default_metrics(files):
    run, qrels = files
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--qrels", str(qrels)])
    assert result.exit_code == 0, result.output
    for name in ("nDCG@10", "R@100", "RR@10", "0.7500"):
        assert name in result.stdout


def test_eval_perfect_run_on_sample_collection(tmp_path):
    qrels = read_qrels(sample_collection())
    run = write_run(tmp_path / "ideal.trec", [ScoredDoc(q.query_id, q.doc_id, q.relevance) for q in qrels])
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--qrels", str(sample_collection()), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"nDCG@10": 1.0, "R@100": 1.0, "RR@10": 1.0}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--metrics", "nDCG@10,bogus"], "unknown metric 'bogus'"),
        (["--metrics", " , "], "no metric names"),
        (["--qrels-override"], None),
    ],
)
def test_eval_user_errors_exit_2_with_one_line(files, capsys, monkeypatch, extra, fragment):
    run, qrels = files
    args = ["mice-index", "eval", "--run", str(run), "--qrels", str(qrels), *extra]
    if fragment is None:  # unrelated qrels: no shared query ids
        other = qrels.parent / "other.trec"
        other.write_text("z9 0 d1 1\n")
        args = ["mice-index", "eval", "--run", str(run), "--qrels", str(other), "--json"]
        fragment = "share no query ids"
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert fragment in captured.err and "Traceback" not in captured.err


def test_eval_bad_run_file_names_line(files, capsys, monkeypatch):
    run, qrels = files
    run.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2\n")
    monkeypatch.setattr(sys, "argv", ["mice-index", "eval", "--run", str(run), "--qrels", str(qrels)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert f"{run}:2:" in capsys.readouterr().err.replace("\n", "")
