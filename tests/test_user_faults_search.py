"""Issue 13 (search rules): k/depth clipped to the corpus, one tie rule everywhere, query-id removal opt-in.

Fixtures (tests/fixtures): `corpus3.jsonl` (the issue's 3-document corpus), `ties.jsonl` (documents
`zz` and `aa` with identical text, `zz` first in corpus order), `selfid-*` (corpus ids 1, 2, q, 3;
queries 1 and 2; qrels `1 0 1 1` / `2 0 2 1`). All are indexed once with a tiny random MICE model;
tie tests use `rerank="none"` because only first-stage scores of identical texts are bitwise equal
(MICE scores of two identical documents may differ in the last bits with batch composition).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, P

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import SearchError
from mice_index.model import MiceModel
from mice_index.runs import ScoredDoc, evaluate, read_run, write_run
from mice_index.runs.trec import strictly_decreasing
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Query, read_queries

from .conftest import write_tiny_bert

FIXTURES = Path(__file__).parent / "fixtures"
FP32 = ScorerConfig(dtype="fp32", quantize="none")
ROOT = Path(__file__).resolve().parents[1]
CLIPPED = "is larger than the corpus"


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, minilm_dir):
    """{name: index folder} for corpus3 / ties / selfid, plus the tiny model ("model")."""
    root = tmp_path_factory.mktemp("faults")
    write_tiny_bert(root / "tiny", minilm_dir, seed=3)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64, max_query_length=16)
    model_dir = model.save(root / "mice")
    out = {"model": MiceModel.load(model_dir)}
    for name, corpus in (("idx3", "corpus3.jsonl"), ("ties", "ties.jsonl"), ("selfid", "selfid-corpus.jsonl")):
        build_index(FIXTURES / corpus, root / name, BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32"))
        out[name] = root / name
    return out


def _open(indexes, name, **kw):
    return Searcher.open(indexes[name], model=indexes["model"], config=SearchConfig(scorer=FP32, **kw))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and CLIPPED in r.getMessage()]


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr()


# -- 1. default k / depth on a small corpus ------------------------------------------------------

def test_issue_command_default_k_on_three_documents(indexes, monkeypatch, capsys, caplog):
    """`mice-index search --index idx3 --query "why are there tides"` (default --k 10, MICE)."""
    code, out = _cli(monkeypatch, capsys, "search", "--index", indexes["idx3"], "--query", "why are there tides",
                     "--json")
    assert code in (0, None), out.err
    hits = json.loads(out.out)
    assert sorted(h["doc_id"] for h in hits) == ["d1", "d2", "d3"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert _warnings(caplog) == [] and "error" not in out.err  # a default is never an error, nor a warning


@pytest.mark.parametrize("candidates", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize("rerank", ["none", "mice"])
def test_python_defaults_clip_silently(indexes, caplog, candidates, rerank):
    searcher = _open(indexes, "idx3", candidates=candidates, rerank=rerank)
    assert searcher.config.depth == 3
    hits = searcher.search("why are there tides")
    assert 1 <= len(hits) <= 3 and (candidates == "bm25" or len(hits) == 3)
    run = searcher.search_many([Query("a", "why are there tides"), Query("b", "night trains")])
    assert all(len(docs) <= 3 for docs in run.values())
    assert _warnings(caplog) == []


def test_explicit_k_above_corpus_warns_once(indexes, caplog):
    searcher = _open(indexes, "idx3", candidates="dense", rerank="none", query_batch=1)
    assert len(searcher.search("why are there tides", k=50)) == 3
    assert _warnings(caplog) == ["--k 50 is larger than the corpus (3 documents); using --k 3"]
    caplog.clear()
    run = searcher.search_many([Query("a", "tides"), Query("b", "trains")], k=50)  # two batches of one query
    assert [len(v) for v in run.values()] == [3, 3]
    assert len(_warnings(caplog)) == 1  # once per call, not per batch
    caplog.clear()
    assert len(searcher.search("tides", k=3)) == 3 and _warnings(caplog) == []  # exactly the corpus: no warning


def test_explicit_depth_above_corpus_warns_once(indexes, caplog):
    searcher = _open(indexes, "idx3", candidates="hybrid", depth=50)
    assert searcher.config.depth == 3
    assert _warnings(caplog) == ["--depth 50 is larger than the corpus (3 documents); using --depth 3"]
    assert len(searcher.search("why are there tides")) == 3
    assert len(searcher.with_config(rerank="none").search("tides", k=2)) == 2
    assert len(_warnings(caplog)) == 1  # the clipped depth is kept: no second warning


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_still_an_error(indexes, k):
    with pytest.raises(SearchError, match="--k must be positive"):
        _open(indexes, "idx3", rerank="none").search("tides", k=k)
    with pytest.raises(SearchError, match="--depth must be positive"):
        _open(indexes, "idx3", rerank="none", depth=k)


def test_cli_explicit_k_and_depth_one_warning_line_each(indexes, tmp_path):
    """As a user sees it: a real process, stderr has one warning line per clipped option."""
    run = tmp_path / "r.run"
    queries = tmp_path / "q.tsv"
    queries.write_text("a\twhy are there tides\nb\tnight trains\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mice_index", "search", "--index", str(indexes["idx3"]), "--queries", str(queries),
         "--run", str(run), "--k", "50", "--depth", "20", "--rerank", "none", "--candidates", "dense"],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if CLIPPED in line]
    assert len(warned) == 2, proc.stderr
    assert "--depth 20 is larger than the corpus (3 documents); using --depth 3" in warned[0]
    assert "--k 50 is larger than the corpus (3 documents); using --k 3" in warned[1]
    assert [len([d for d in read_run(run) if d.query_id == q]) for q in "ab"] == [3, 3]


def test_score_command_clips_k(indexes, monkeypatch, capsys, caplog, tmp_path):
    model_dir = tmp_path / "m"
    indexes["model"].save(model_dir)
    args = ["score", "--query", "tides", "--corpus", FIXTURES / "corpus3.jsonl", "--model", model_dir, "--json"]
    code, out = _cli(monkeypatch, capsys, *args)
    assert code in (0, None) and len(out.out.splitlines()) == 3 and _warnings(caplog) == []
    code, out = _cli(monkeypatch, capsys, *args, "--k", 7)
    assert code in (0, None) and len(out.out.splitlines()) == 3
    assert _warnings(caplog) == ["--k 7 is larger than the corpus (3 documents); using --k 3"]


# -- 2. one tie rule: score descending, equal scores by doc id ascending --------------------------

OWLS = "owls hunt mice at night"


@pytest.mark.parametrize("candidates", ["bm25", "dense", "hybrid"])
def test_ties_single_and_batch_agree_with_run_writer(indexes, tmp_path, candidates):
    searcher = _open(indexes, "ties", candidates=candidates, rerank="none")
    hits = searcher.search(OWLS)
    assert hits[0].score == hits[1].score  # zz (corpus row 0) and aa (row 2) tie
    assert [h.doc_id for h in hits[:2]] == ["aa", "zz"]
    run = searcher.search_many([Query("1", OWLS)])
    assert [d.doc_id for d in run["1"]] == [h.doc_id for h in hits]
    path = write_run(tmp_path / "t.run", run)
    lines = [line.split() for line in path.read_text().splitlines()]
    assert [(f[2], f[3]) for f in lines[:2]] == [("aa", "1"), ("zz", "2")]
    scores = [float(f[4]) for f in lines]
    assert all(a > b for a, b in zip(scores, scores[1:]))  # strictly decreasing: no tie left to break
    assert scores[0] == hits[0].score and scores[1] == float(np.nextafter(np.float32(hits[0].score), -np.inf))
    assert [d.doc_id for d in read_run(path)] == [h.doc_id for h in hits]


@pytest.mark.parametrize("seed", range(5))
def test_ranked_equals_full_sort_and_reads_only_tied_ids(seed):
    """`ranked` (ids read only for tied scores reaching the top k) orders exactly like sorting every
    candidate by (-score, doc id)."""
    from mice_index.search import ranked

    rng = np.random.default_rng(seed)
    n = 60
    rows = rng.permutation(1000)[:n]
    scores = rng.integers(0, 25, size=n).astype(np.float32) / 4  # many ties
    scores[:10] = rng.random(10) + 10  # a few untied scores on top
    doc_id = {int(r): f"d{rng.integers(10**6):06d}" for r in rows}
    asked: list[int] = []

    def ids_of(rs):
        asked.extend(rs)
        return [doc_id[r] for r in rs]

    for k in (1, 5, 10, 17, 60, 100):
        asked.clear()
        want = sorted(range(n), key=lambda j: (-float(scores[j]), doc_id[int(rows[j])]))[:k]
        assert ranked(rows, scores, k, ids_of) == want
        untied_top = k <= 10
        assert (asked == []) == untied_top  # the 10 untied best need no id
        assert len(asked) < n or k >= n


@pytest.mark.parametrize("relevant,p1,rr", [("zz", 0.0, 0.5), ("aa", 1.0, 1.0)])
def test_ties_through_eval_p1_and_rr_agree(indexes, tmp_path, monkeypatch, capsys, relevant, p1, rr):
    searcher = _open(indexes, "ties", candidates="bm25", rerank="none")
    run = searcher.search_many([Query("1", OWLS)])
    path = write_run(tmp_path / "t.run", run)
    qrels = tmp_path / "qrels.trec"
    qrels.write_text(f"1 0 {relevant} 1\n")
    want = {"P@1": p1, "RR@10": rr}
    assert evaluate(run, qrels, ["P@1", "RR@10"]) == want  # in memory
    assert evaluate(path, qrels, ["P@1", "RR@10"]) == want  # from the written file
    code, out = _cli(monkeypatch, capsys, "eval", "--run", path, "--qrels", qrels, "--metrics", "P@1,RR@10", "--json")
    assert code in (0, None) and json.loads(out.out) == want
    # any tool that orders by score alone (trec_eval, every ir_measures backend) reads the same ranks
    external = ir_measures.calc_aggregate([P @ 1, RR @ 10], list(ir_measures.read_trec_qrels(str(qrels))),
                                          list(ir_measures.read_trec_run(str(path))))
    assert {"P@1": external[P @ 1], "RR@10": external[RR @ 10]} == want


@pytest.mark.parametrize("lines", [["1 Q0 zz 1 5.0 t", "1 Q0 aa 2 5.0 t"], ["1 Q0 aa 1 5.0 t", "1 Q0 zz 2 5.0 t"]])
def test_foreign_run_with_tied_scores_one_order(tmp_path, lines):
    """A run file written elsewhere with equal scores: every metric reads the rule's order (aa first)."""
    path = tmp_path / "foreign.run"
    path.write_text("\n".join(lines + ["1 Q0 m1 3 1.0 t"]) + "\n")
    qrels = [ir_measures.Qrel("1", "zz", 1)]
    assert evaluate(path, qrels, ["P@1", "RR@10", "P@2"]) == {"P@1": 0.0, "RR@10": 0.5, "P@2": 0.5}


def test_strictly_decreasing_breaks_only_ties():
    assert strictly_decreasing([]) == []
    exact = [3.0, 0.1 + 0.2, 0.1, -1.0]
    assert strictly_decreasing(exact) == exact  # untouched without ties (float64 values kept exactly)
    below = float(np.nextafter(np.float32(2.0), -np.inf))
    # ties, and a float64 step that a 32-bit reader (trec_eval) would read as a tie
    got = strictly_decreasing([2.0, 2.0, 2.0, math.nextafter(2.0, -math.inf), 1.0])
    assert got[0] == 2.0 and got[1] == below and got[-1] == 1.0
    assert all(a > b for a, b in zip(got, got[1:]))
    assert all(a > b for a, b in zip(np.float32(got), np.float32(got[1:])))
    assert strictly_decreasing(got) == got  # idempotent: re-writing a read run changes nothing


@pytest.mark.parametrize("score", [math.inf, -math.inf])
def test_write_run_rejects_infinite_scores(tmp_path, score):
    from mice_index.runs import RunError

    with pytest.raises(RunError, match="infinite score"):
        write_run(tmp_path / "x.run", [ScoredDoc("1", "a", score)])
    assert not (tmp_path / "x.run").exists()


# -- 3. documents whose id equals the query id -----------------------------------------------------

def test_issue_batch_keeps_doc_with_query_id(indexes, tmp_path):
    """Corpus ids 1, 2, q, 3; queries 1, 2; qrels `1 0 1 1` / `2 0 2 1`: doc 1 answers query 1."""
    queries = list(read_queries(FIXTURES / "selfid-queries.jsonl"))
    run = _open(indexes, "selfid", candidates="bm25", rerank="none").search_many(queries)
    assert run["1"][0].doc_id == "1" and run["2"][0].doc_id == "2"
    scores = evaluate(run, FIXTURES / "selfid-qrels.trec", ["P@1", "RR@10", "nDCG@10"])
    assert scores == {"P@1": 1.0, "RR@10": 1.0, "nDCG@10": 1.0}
    removed = _open(indexes, "selfid", candidates="bm25", rerank="none", remove_query_id=True).search_many(queries)
    assert "1" not in [d.doc_id for d in removed["1"]] and "2" not in [d.doc_id for d in removed["2"]]
    assert [d.doc_id for d in removed["1"]] == [d.doc_id for d in run["1"] if d.doc_id != "1"]


@pytest.mark.parametrize("remove", [False, True])
def test_single_query_never_drops_a_document(indexes, remove):
    """Searcher.search used the internal query id 'q': a document with id 'q' vanished."""
    searcher = _open(indexes, "selfid", candidates="hybrid", rerank="mice", remove_query_id=remove)
    hits = searcher.search("quartz crystals inside watches", k=4)
    assert sorted(h.doc_id for h in hits) == ["1", "2", "3", "q"]
    assert _open(indexes, "selfid", candidates="bm25", rerank="none",
                 remove_query_id=remove).search("quartz crystals inside watches")[0].doc_id == "q"


def test_batch_query_with_id_q_collides_only_when_asked(indexes):
    text = "quartz crystals inside watches"
    plain = _open(indexes, "selfid", candidates="bm25", rerank="none").search_many([Query("q", text)])
    assert plain["q"][0].doc_id == "q"
    removed = _open(indexes, "selfid", candidates="bm25", rerank="none", remove_query_id=True)
    assert "q" not in [d.doc_id for d in removed.search_many([Query("q", text)])["q"]]


def test_cli_remove_query_flag(indexes, tmp_path, monkeypatch, capsys):
    base = ["search", "--index", indexes["selfid"], "--queries", FIXTURES / "selfid-queries.jsonl",
            "--rerank", "none", "--candidates", "dense"]
    code, _ = _cli(monkeypatch, capsys, *base, "--run", tmp_path / "a.run")
    assert code in (0, None)
    kept = read_run(tmp_path / "a.run")
    assert ("1", "1") in {(d.query_id, d.doc_id) for d in kept}
    code, out = _cli(monkeypatch, capsys, "eval", "--run", tmp_path / "a.run", "--qrels",
                     FIXTURES / "selfid-qrels.trec", "--metrics", "P@1,RR@10", "--json")
    assert json.loads(out.out) == {"P@1": 1.0, "RR@10": 1.0}
    code, _ = _cli(monkeypatch, capsys, *base, "--run", tmp_path / "b.run", "--remove-query")
    assert code in (0, None)
    pairs = {(d.query_id, d.doc_id) for d in read_run(tmp_path / "b.run")}
    assert pairs == {(d.query_id, d.doc_id) for d in kept} - {("1", "1"), ("2", "2")}
    code, out = _cli(monkeypatch, capsys, "search", "--index", indexes["selfid"], "--query", "bees",
                     "--remove-query", "--rerank", "none")
    assert code == 2 and "--remove-query applies to --queries" in out.err and len(out.err.strip().splitlines()) == 1


# -- the same rules through PyTerrier ---------------------------------------------------------------

def _frame_to_run(res) -> list[ir_measures.ScoredDoc]:
    return [ir_measures.ScoredDoc(str(q), str(d), float(s)) for q, d, s in zip(res["qid"], res["docno"], res["score"])]


def test_pyterrier_k_and_depth_clipped_once(indexes, caplog):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyterrier")
    from mice_index.pyterrier import MiceReranker, MiceRetriever

    searcher = _open(indexes, "idx3", candidates="dense", rerank="none")
    frame = pd.DataFrame({"qid": ["a", "b"], "query": ["why are there tides", "night trains"]})
    assert len(MiceRetriever(searcher).transform(frame)) == 6 and _warnings(caplog) == []  # defaults: silent
    retriever = MiceRetriever(searcher, k=50, depth=40)
    assert _warnings(caplog) == ["--depth 40 is larger than the corpus (3 documents); using --depth 3",
                                 "k 50 is larger than the corpus (3 documents); using k 3"]
    for _ in range(2):
        res = retriever.transform(frame)
        assert res.groupby("qid").size().to_dict() == {"a": 3, "b": 3}
    assert len(_warnings(caplog)) == 2  # warned at construction only
    reranked = MiceReranker(indexes["idx3"], model=indexes["model"], scorer=FP32).transform(res)
    assert sorted(reranked["docno"]) == sorted(res["docno"]) and len(_warnings(caplog)) == 2


@pytest.mark.parametrize("qids", [["1", "2"], [1, 2]])
def test_pyterrier_qids_equal_to_doc_ids(indexes, qids):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyterrier")
    from mice_index.pyterrier import MiceRetriever

    queries = list(read_queries(FIXTURES / "selfid-queries.jsonl"))
    frame = pd.DataFrame({"qid": qids, "query": [q.text for q in queries]})
    searcher = _open(indexes, "selfid", candidates="bm25", rerank="none")
    res = MiceRetriever(searcher).transform(frame)
    top = res[res["rank"] == 0]
    assert [str(d) for d in top["docno"]] == ["1", "2"] and top["qid"].tolist() == qids
    qrels = list(ir_measures.read_trec_qrels(str(FIXTURES / "selfid-qrels.trec")))
    assert ir_measures.calc_aggregate([P @ 1], qrels, _frame_to_run(res))[P @ 1] == 1.0
    removed = MiceRetriever(searcher, remove_query_id=True, candidates="dense").transform(frame)
    pairs = set(zip(removed["qid"].astype(str), removed["docno"]))
    assert pairs and ("1", "1") not in pairs and ("2", "2") not in pairs


def test_pyterrier_frames_follow_the_tie_rule(indexes):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyterrier")
    from mice_index.pyterrier import MiceRetriever, _ranked

    searcher = _open(indexes, "ties", candidates="hybrid", rerank="none")
    res = MiceRetriever(searcher).transform(pd.DataFrame({"qid": ["1"], "query": [OWLS]}))
    assert res["docno"].tolist()[:2] == ["aa", "zz"] and res["rank"].tolist() == [0, 1, 2, 3]
    assert res["docno"].tolist() == [d.doc_id for d in searcher.search_many([Query("1", OWLS)])["1"]]
    assert res["score"].is_monotonic_decreasing and res["score"].is_unique  # evaluation reads these ranks
    for relevant, p1, rr in (("zz", 0.0, 0.5), ("aa", 1.0, 1.0)):
        got = ir_measures.calc_aggregate([P @ 1, RR @ 10], [ir_measures.Qrel("1", relevant, 1)], _frame_to_run(res))
        assert (got[P @ 1], got[RR @ 10]) == (p1, rr)
    # a re-ranker's frame with tied scores, given in another order: docno ascending within each query
    tied = pd.DataFrame({"qid": ["x", "x", "x", "y", "y"], "docno": ["zz", "b", "aa", "k", "c"],
                         "score": [1.0, 0.5, 1.0, 2.0, 2.0]})
    got = _ranked(tied)
    assert got["docno"].tolist() == ["aa", "zz", "b", "c", "k"] and got["rank"].tolist() == [0, 1, 2, 0, 1]
    assert got["score"].iloc[0] == 1.0 and 0.5 < got["score"].iloc[1] < 1.0 and got["score"].iloc[2] == 0.5
