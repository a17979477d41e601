"""Search: scores from stored states equal scores from text; candidates, runs and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import IndexError_, SearchError
from mice_index.model import MiceModel
from mice_index.runs import evaluate, read_run
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Query, read_queries, sample_collection

from .conftest import write_tiny_bert

FP32 = ScorerConfig(dtype="fp32", quantize="none")


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm_dir):
    """The bundled sample collection indexed with a tiny random MICE model (fp32 states)."""
    root = tmp_path_factory.mktemp("search")
    write_tiny_bert(root / "tiny", minilm_dir, seed=1)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=96, max_query_length=16)
    model_dir = model.save(root / "mice")
    build_index(sample_collection(), root / "idx",
                BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=16))
    return root / "idx", MiceModel.load(model_dir)


def _searcher(built, **kw):
    idx, model = built
    return Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, **kw))


def test_index_scores_equal_text_scores(built):
    idx, model = built
    searcher = _searcher(built, candidates="bm25", depth=8)
    hits = searcher.search("how do honey bees make honey", k=8)
    texts = [model.format_document(h.title, h.text) for h in hits]
    want = model.score_texts("how do honey bees make honey", texts).numpy()
    np.testing.assert_allclose([h.score for h in hits], want, atol=1e-5)
    assert [h.rank for h in hits] == list(range(1, 9))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


@pytest.mark.parametrize("candidates", ["bm25", "dense", "hybrid"])
def test_first_stage_finds_the_topic(built, candidates):
    hits = _searcher(built, candidates=candidates, rerank="none").search("coral reef bleaching", k=5)
    assert len(hits) == 5 and hits[0].doc_id.startswith("coral")


def test_batch_run_and_eval(built, tmp_path):
    idx, _ = built
    queries = list(read_queries(sample_collection()))
    run = _searcher(built, rerank="none").search_many(queries)
    assert set(run) == {q.query_id for q in queries}
    assert all(len(v) == 40 for v in run.values())  # default k = depth = min(100, corpus)
    scores = evaluate(run, sample_collection(), ["nDCG@10", "R@100"])
    assert scores["R@100"] == 1.0 and scores["nDCG@10"] > 0.6  # hybrid on a topical toy corpus


def test_query_id_equal_to_doc_id_is_skipped_only_when_asked(built):
    searcher = _searcher(built, candidates="bm25", rerank="none", remove_query_id=True)
    text = "coral bleaching algae"
    plain = searcher.search_many([Query("x", text)], k=5)["x"]
    skipped = searcher.search_many([Query(plain[0].doc_id, text)], k=5)[plain[0].doc_id]
    assert plain[0].doc_id not in [d.doc_id for d in skipped]
    assert [d.doc_id for d in skipped][:4] == [d.doc_id for d in plain][1:5]
    kept = _searcher(built, candidates="bm25", rerank="none").search_many([Query(plain[0].doc_id, text)], k=5)
    assert [d.doc_id for d in kept[plain[0].doc_id]] == [d.doc_id for d in plain]  # default: nothing removed


def test_stopword_only_query_falls_back_to_dense(built, caplog):
    hits = _searcher(built, candidates="bm25", rerank="none").search("the of and", k=3)
    assert len(hits) == 3
    assert "no BM25 term" in caplog.text


@pytest.mark.parametrize("k", [0, -3])
def test_bad_k(built, k):
    with pytest.raises(SearchError, match="--k must be positive"):
        _searcher(built).search("bees", k=k)


def test_k_and_depth_above_corpus_are_clipped(built, caplog):
    searcher = _searcher(built, depth=41, rerank="none")
    assert searcher.config.depth == 40
    assert len(searcher.search("bees", k=41)) <= 40
    assert [r.getMessage() for r in caplog.records if "larger than the corpus" in r.getMessage()] == [
        "--depth 41 is larger than the corpus (40 documents); using --depth 40",
        "--k 41 is larger than the corpus (40 documents); using --k 40"]


def test_bad_depth(built):
    with pytest.raises(SearchError, match="--depth must be positive"):
        _searcher(built, depth=0)


def test_empty_query(built):
    with pytest.raises(SearchError, match="empty"):
        _searcher(built).search("   ", k=3)


def test_model_index_mismatch(built, tmp_path, minilm_dir):
    idx, _ = built
    write_tiny_bert(tmp_path / "other", minilm_dir, seed=2)
    other = MiceModel.from_pretrained(tmp_path / "other", fusion_layer=2, num_interaction_layers=2)
    with pytest.raises(IndexError_, match="fingerprint"):
        Searcher.open(idx, model=other)
    # without re-ranking no model is needed, so no mismatch
    assert Searcher.open(idx, model=other, config=SearchConfig(rerank="none")).search("bees", k=1)


def test_missing_and_incomplete_index(built, tmp_path):
    idx, model = built
    with pytest.raises(IndexError_):
        Searcher.open(tmp_path / "nope", model=model)
    broken = tmp_path / "broken"
    shutil.copytree(idx, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="incomplete"):
        Searcher.open(broken, model=model)


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr()


def test_cli_batch_writes_trec_run(built, tmp_path, monkeypatch, capsys):
    idx, _ = built
    run = tmp_path / "out.run"
    code, _ = _cli(monkeypatch, capsys, "search", "--index", idx, "--queries", sample_collection(),
                   "--run", run, "--rerank", "none", "--k", 10, "--run-tag", "t1")
    assert code in (0, None)
    lines = run.read_text().splitlines()
    first = lines[0].split()
    assert len(first) == 6 and first[1] == "Q0" and first[3] == "1" and first[5] == "t1"
    assert len(read_run(run)) == 12 * 10


@pytest.mark.parametrize("args,match", [
    (["--query", ""], "empty"),
    (["--query", "bees", "--k", "-1"], "--k must be positive"),
    (["--queries", "x"], "--run"),
    (["--query", "bees", "--candidates", "splade"], "unknown candidate generator"),
])
def test_cli_bad_input_one_line(built, monkeypatch, capsys, args, match):
    idx, _ = built
    code, out = _cli(monkeypatch, capsys, "search", "--index", idx, "--rerank", "none", *args)
    assert code == 2
    assert match in out.err and "Traceback" not in out.err
