"""Long documents as passages (issue 19 item 3): splitting, passage rows, maxp/firstp/sump, bad input.

The sample collection is indexed once with a tiny random MICE model (documents <= 32 tokens) as
passages of 16 tokens with stride 8; a document's score is checked against the model's text path:
every passage re-split independently, scored from text and aggregated by hand.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from mice_index.aggregate import AGGREGATIONS
from mice_index.build import BuildConfig, build_index
from mice_index.choices import AGGREGATES
from mice_index.cli import main
from mice_index.errors import MiceIndexError, SearchError
from mice_index.model import MiceModel
from mice_index.runs import read_run
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Document, Query, read_documents, read_queries, sample_collection
from mice_index.sources.passages import Passage, parse_passages, split_documents, windows

from .conftest import write_tiny_bert

FP32 = ScorerConfig(dtype="fp32", quantize="none")
W, S = 16, 8
QUERY = "how do honey bees make honey in winter"


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from mice_index.tokenizer import load_fast_tokenizer

    return load_fast_tokenizer(minilm_dir)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# -- splitting ---------------------------------------------------------------------------------

def test_windows_exact_counts_and_stride():
    starts = [True] * 10  # ten one-token words
    assert windows(starts, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert windows(starts, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(starts, 3, 1)[:3] == [(0, 3), (1, 4), (2, 5)] and windows(starts, 3, 1)[-1] == (7, 10)
    assert windows(starts, 10, 5) == [(0, 10)] and windows(starts, 50, 5) == [(0, 10)]  # short: one passage
    assert windows([], 4, 2) == []


def test_windows_cut_at_word_starts():
    # words of 1, 3, 1, 2 tokens: [T] [T f f] [T] [T f]
    starts = [True, True, False, False, True, True, False]
    assert windows(starts, 3, 2) == [(0, 1), (1, 4), (4, 7)]  # never inside the 3-token word
    assert windows([True, False, False, False, False, True], 3, 1)[0] == (0, 3)  # a word longer than W: cut


def test_split_is_substrings_with_exact_tokens(tok):
    words = [f"w{i}" for i in range(5)]
    text = "The quick brown fox's unbelievably extraordinary jump, over 12 lazy dogs! " * 4 + " ".join(words)
    doc = Document("d1", text, "A Title")
    passages = list(split_documents([doc], tok, 12, 5))
    all_ids = _ids(tok, text)
    assert len(passages) > 3
    assert [p.passage for p in passages] == list(range(len(passages)))
    covered = 0
    for p in passages:
        assert isinstance(p, Passage) and p.doc_id == "d1" and p.title == "A Title"  # MaxP: title on each
        assert p.text == text[p.char_start:p.char_end] and p.text == p.text.strip()
        ids = _ids(tok, p.text)
        assert 1 <= len(ids) <= 12
        # re-tokenizing the passage gives exactly its window of the document's tokens
        assert any(all_ids[a:a + len(ids)] == ids for a in range(len(all_ids)))
        covered = max(covered, p.char_end)
    assert covered == len(text.rstrip()) and passages[0].char_start == 0
    # consecutive windows overlap (stride 5 < window 12) and advance
    assert all(a.char_start < b.char_start < a.char_end for a, b in zip(passages, passages[1:]))


def test_split_single_token_words_exact_windows(tok):
    text = " ".join(["bee"] * 10)  # one token per word
    got = list(split_documents([Document("d", text)], tok, 4, 2))
    assert [len(_ids(tok, p.text)) for p in got] == [4, 4, 4, 4]
    assert [(p.char_start, p.char_end) for p in got] == [(0, 15), (8, 23), (16, 31), (24, 39)]


def test_short_and_empty_documents_are_one_passage(tok):
    docs = [Document("a", "short text", "t"), Document("b", ""), Document("c", "   ")]
    got = list(split_documents(docs, tok, 16, 8))
    assert [(p.doc_id, p.passage, p.text, p.char_start, p.char_end) for p in got] == [
        ("a", 0, "short text", 0, 10), ("b", 0, "", 0, 0), ("c", 0, "   ", 0, 3)]


@pytest.mark.parametrize("value,msg", [("8,16", "stride (16) is larger than the window (8)"), ("0,1", "window"),
                                       ("4,0", "stride"), ("16", "must be W,S"), ("a,b", "must be W,S"),
                                       ("1,2,3", "must be W,S"), ("-4,2", "window")])
def test_parse_passages_refuses(value, msg):
    with pytest.raises(MiceIndexError, match=re.escape(msg)):
        parse_passages(value)
    assert parse_passages(" 16, 8") == (16, 8)


def test_aggregate_names_match_registry():
    assert tuple(AGGREGATIONS) == AGGREGATES
    s = np.array([0.5, 2.0, -1.0, 2.0], np.float32)
    assert AGGREGATIONS["maxp"].score(s) == (2.0, 1)
    assert AGGREGATIONS["firstp"].score(s[:1]) == (0.5, 0)
    assert AGGREGATIONS["sump"].score(s) == (3.5, 1)


# -- a passage index ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("passages")
    write_tiny_bert(root / "tiny", minilm_dir, seed=1)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=32, max_query_length=16)
    model_dir = model.save(root / "mice")
    base = dict(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=64)
    build_index(sample_collection(), root / "idx", BuildConfig(**base, passages=(W, S)))
    build_index(sample_collection(), root / "plain", BuildConfig(**base))
    return root, MiceModel.load(model_dir)


def _searcher(built, index="idx", **kw):
    root, model = built
    return Searcher.open(root / index, model=model, config=SearchConfig(scorer=FP32, alpha=0.0, **kw))


def test_passage_rows_and_manifest(built, tok):
    root, _ = built
    m = json.loads((root / "idx" / "manifest.json").read_text())
    assert m["settings"]["passages"] == {"window": W, "stride": S}
    shards = sorted((root / "idx" / "shards").iterdir())
    assert len(shards) > 1  # 64 rows per shard: a document's passages may span two shards
    t = [r for d in shards for r in pq.read_table(d / "docs.parquet").to_pylist()]
    docs = {d.doc_id: d for d in read_documents(sample_collection())}
    assert len(t) == m["counts"]["num_docs"] > len(docs)
    assert [r["row"] for r in t] == list(range(len(t)))
    for r in t:
        d = docs[r["doc_id"]]
        assert r["text"] == d.text[r["char_start"]:r["char_end"]] and r["title"] == d.title
        assert len(_ids(tok, r["text"])) <= W
    # a document's passages are consecutive rows numbered from 0, in corpus order
    order = [r["doc_id"] for r in t if r["passage"] == 0]
    assert order == list(docs) and all(r["passage"] == (t[i - 1]["passage"] + 1 if r["doc_id"] == t[i - 1]["doc_id"]
                                                        else 0) for i, r in enumerate(t) if i)
    assert json.loads((root / "plain" / "manifest.json").read_text())["settings"].get("passages") is None
    from mice_index.store.manifest import index_info

    assert index_info(root / "idx")["passages"] == {"window": W, "stride": S}
    assert index_info(root / "plain")["passages"] is None


def _by_hand(model, how, query, doc):
    """The document's score from the model's text path: its passages re-split, scored, aggregated."""
    passages = list(split_documents([doc], model.tokenizer, W, S))
    if AGGREGATIONS[how].first_only:
        passages = passages[:1]
    scores = model.score_texts(query, [model.format_document(p.title, p.text) for p in passages]).numpy()
    value, best = AGGREGATIONS[how].score(scores)
    return value, passages[best]


@pytest.mark.parametrize("how", AGGREGATES)
def test_document_scores_equal_aggregated_text_scores(built, how):
    _, model = built
    docs = {d.doc_id: d for d in read_documents(sample_collection())}
    searcher = _searcher(built, candidates="bm25", depth=6, aggregate=how)
    hits = searcher.search(QUERY, k=6)
    assert len(hits) == 6 and len({h.doc_id for h in hits}) == 6  # k distinct documents
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    for h in hits:
        want, best = _by_hand(model, how, QUERY, docs[h.doc_id])
        assert h.score == pytest.approx(want, abs=1e-4)
        assert h.passage == (best.passage, best.char_start, best.char_end) and h.text == best.text
    if how == "firstp":  # the first passage, also where the first stage did not return it
        assert all(h.passage[0] == 0 for h in hits)


def test_depth_counts_documents_and_runs_carry_doc_ids(built, tmp_path):
    searcher = _searcher(built, candidates="hybrid", depth=7, rerank="none")  # bm25 alone: matching ones only
    queries = list(read_queries(sample_collection()))
    run = searcher.search_many(queries)  # k = depth = 7 documents, whatever the passages per document
    assert set(run) == {q.query_id for q in queries}
    for hits in run.values():
        ids = [d.doc_id for d in hits]
        assert len(ids) == 7 and len(set(ids)) == 7
    docs = {d.doc_id for d in read_documents(sample_collection())}
    assert searcher.num_documents == len(docs) and _searcher(built, depth=1000).config.depth == len(docs)
    mice = _searcher(built, candidates="hybrid", depth=40).search_many(queries[:2], k=40)
    assert all(sorted(d.doc_id for d in v) == sorted(docs) for v in mice.values())  # all 40 documents, once each


def test_first_stage_document_score_is_best_passage(built):
    plain = _searcher(built, candidates="bm25", rerank="none")
    hits = plain.search(QUERY, k=5)
    rows = plain.candidates([QUERY], plain.reader.num_docs)
    best: dict[str, float] = {}
    for r, s in zip(rows.rows[0], rows.scores[0]):
        if r >= 0:
            d = plain.reader.doc_id(int(r))
            best[d] = max(best.get(d, -np.inf), float(s))
    assert [h.doc_id for h in hits] == sorted(best, key=lambda d: (-best[d], d))[:5]
    assert [h.score for h in hits] == pytest.approx(sorted(best.values(), reverse=True)[:5])


def test_remove_query_id_removes_the_whole_document(built):
    searcher = _searcher(built, candidates="bm25", rerank="none", remove_query_id=True)
    top = searcher.search_many([Query("x", QUERY)], k=5)["x"]
    skipped = searcher.search_many([Query(top[0].doc_id, QUERY)], k=5)[top[0].doc_id]
    assert top[0].doc_id not in [d.doc_id for d in skipped] and len(skipped) == 5


def test_aggregate_has_no_effect_without_passages(built):
    a = _searcher(built, "plain", candidates="bm25", depth=8, aggregate="maxp").search(QUERY, k=8)
    b = _searcher(built, "plain", candidates="bm25", depth=8, aggregate="sump").search(QUERY, k=8)
    assert [(h.doc_id, h.score) for h in a] == [(h.doc_id, h.score) for h in b]
    assert all(h.passage is None for h in a)


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr()


def test_cli_explain_shows_the_best_passage(built, monkeypatch, capsys, tmp_path):
    root, _ = built
    code, out = _cli(monkeypatch, capsys, "search", "--index", root / "idx", "--query", QUERY, "--k", 3,
                     "--candidates", "bm25", "--alpha", 0, "--dtype", "fp32", "--quantize", "none", "--json", "--explain")
    assert code in (0, None), out.err
    hits = json.loads(out.out)
    want = _searcher(built, candidates="bm25").search(QUERY, k=3)
    assert [h["doc_id"] for h in hits] == [h.doc_id for h in want]
    for h, w in zip(hits, want):
        assert h["passage"] == {"number": w.passage[0], "char_start": w.passage[1], "char_end": w.passage[2]}
        assert w.text.startswith(h["snippet"].rstrip("…")[:20]) and "matches" in h
    code, out = _cli(monkeypatch, capsys, "search", "--index", root / "idx", "--queries", sample_collection(),
                     "--run", tmp_path / "run.txt", "--aggregate", "firstp", "--depth", 5)
    assert code in (0, None), out.err
    run: dict[str, list[str]] = {}
    for d in read_run(tmp_path / "run.txt"):
        run.setdefault(d.query_id, []).append(d.doc_id)
    assert len(run) == 12 and all(len(v) == 5 and len(set(v)) == 5 for v in run.values())


@pytest.mark.parametrize("value,msg", [("8,16", "larger than the window"), ("0,4", "window must be"),
                                       ("16", "must be W,S"), ("x,y", "must be W,S"),
                                       ("31,8", "larger than this model allows (30")])
def test_cli_build_bad_passages(built, monkeypatch, capsys, tmp_path, value, msg):
    root, _ = built
    idx = tmp_path / "new"
    code, out = _cli(monkeypatch, capsys, "build", "--corpus", sample_collection(), "--index", idx,
                     "--model", root / "mice", "--passages", value, "--quiet")
    assert code == 2 and msg in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert not idx.exists()  # nothing written


def test_bad_aggregate(built, monkeypatch, capsys):
    root, _ = built
    code, out = _cli(monkeypatch, capsys, "search", "--index", root / "idx", "--query", "bees", "--aggregate", "meanp")
    assert code == 2 and "unknown --aggregate 'meanp'; choose one of maxp, firstp, sump" in out.err
    with pytest.raises(SearchError, match="--aggregate"):
        SearchConfig(aggregate="avg")
    with pytest.raises(MiceIndexError, match="stride"):
        BuildConfig(passages=(4, 5))
    with pytest.raises(MiceIndexError, match="pair"):
        BuildConfig(passages="16,8")  # type: ignore[arg-type]
    assert BuildConfig(passages=[16, 8]).passages == (16, 8)  # type: ignore[arg-type]


def test_resume_with_other_passages_is_refused(built, tmp_path):
    root, model = built
    from mice_index.errors import IndexError_

    import shutil

    idx = tmp_path / "r"
    cfg = BuildConfig(model=str(root / "mice"), codec="fp32", dtype="fp32", shard_docs=64, passages=(W, S))
    shutil.copytree(root / "idx", idx)  # built with cfg
    m = json.loads((idx / "manifest.json").read_text())
    m["complete"] = False
    (idx / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="passages"):
        build_index(sample_collection(), idx, BuildConfig(**{**cfg.__dict__, "passages": (W, W)}))


def test_server_takes_aggregate_and_shows_the_passage(built):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.serve import BatchConfig, create_app

    searcher = _searcher(built, candidates="bm25", depth=6)
    with TestClient(create_app(searcher, BatchConfig(window_ms=0), k=3)) as c:
        for how in ("firstp", "sump"):
            body = c.post("/search", json={"q": QUERY, "aggregate": how}).json()
            want = searcher.with_config(aggregate=how).search(QUERY, k=3)
            assert body["settings"]["aggregate"] == how
            got = body["results"][0]["hits"]
            assert [(h["doc_id"], h["passage"]["number"]) for h in got] == [(w.doc_id, w.passage[0]) for w in want]
            assert [h["score"] for h in got] == pytest.approx([w.score for w in want], abs=1e-5)
        bad = c.get("/search", params={"q": "bees", "aggregate": "avg"})
        assert bad.status_code == 400 and "unknown aggregate 'avg'" in bad.json()["error"]
        assert c.get("/health").json()["documents"] == 40  # documents, not passage rows


@pytest.mark.parametrize("how", ["maxp", "firstp"])
def test_pyterrier_reranker_aggregates_passages(built, how):
    pytest.importorskip("pyterrier")
    import pandas as pd

    from mice_index.pyterrier import MiceReranker, MiceRetriever

    searcher = _searcher(built, candidates="bm25", depth=6, aggregate=how)
    want = searcher.search(QUERY, k=6)
    frame = MiceRetriever(searcher, k=6).search(QUERY)
    assert frame["docno"].tolist() == [h.doc_id for h in want]
    inp = pd.DataFrame({"qid": "q", "query": QUERY, "docno": [h.doc_id for h in reversed(want)]})
    out = MiceReranker(searcher, aggregate=how).transform(inp)
    assert out["docno"].tolist() == [h.doc_id for h in want]
    assert out["score"].to_numpy() == pytest.approx([h.score for h in want], abs=1e-4)


def test_resumed_passage_build_is_identical(built, tmp_path):
    """A passage build interrupted after some shards resumes from them (the committed rows are
    checked against the passage stream) and ends identical to the uninterrupted build."""
    import shutil

    root, _ = built
    idx = tmp_path / "resumed"
    shutil.copytree(root / "idx", idx)
    shards = sorted((idx / "shards").iterdir())
    for d in [*shards[2:], idx / "bm25", idx / "dense"]:
        shutil.rmtree(d)
    m = json.loads((idx / "manifest.json").read_text())
    m["complete"], m["shards"] = False, m["shards"][:2]
    (idx / "manifest.json").write_text(json.dumps(m))
    cfg = BuildConfig(model=str(root / "mice"), codec="fp32", dtype="fp32", shard_docs=64, passages=(W, S))
    result = build_index(sample_collection(), idx, cfg)
    assert 0 < result.encoded_docs < 40  # documents started in the re-encoded shards only
    for a, b in zip(shards, sorted((idx / "shards").iterdir())):
        assert (a / "shard.json").read_bytes() == (b / "shard.json").read_bytes()  # same files, same sha256
    want = _searcher(built, candidates="hybrid", depth=8).search(QUERY, k=8)
    got = Searcher.open(idx, model=built[1], config=SearchConfig(scorer=FP32, alpha=0.0, candidates="hybrid",
                                                                  depth=8)).search(QUERY, k=8)
    assert [(h.doc_id, h.score, h.passage) for h in got] == [(h.doc_id, h.score, h.passage) for h in want]


def test_filter_on_a_passage_index_keeps_whole_documents(built, tmp_path):
    """Fields are per document and copied to each passage row; a filter then gives k distinct
    matching documents (min(k, matches)), aggregated over all their passages."""
    root, model = built
    docs = list(read_documents(sample_collection()))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text, "year": 2000 + i})
                              + "\n" for i, d in enumerate(docs)))
    idx = tmp_path / "fidx"
    build_index(corpus, idx, BuildConfig(model=str(root / "mice"), codec="fp32", dtype="fp32", shard_docs=64,
                                         passages=(W, S), fields=("year:int",)))
    rows = [r for d in sorted((idx / "shards").iterdir()) for r in pq.read_table(d / "docs.parquet").to_pylist()]
    year = {d.doc_id: 2000 + i for i, d in enumerate(docs)}
    assert len(rows) > len(docs) and all(r["year"] == year[r["doc_id"]] for r in rows)
    searcher = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, alpha=0.0, candidates="hybrid",
                                                                  depth=10, aggregate="maxp"))
    hits = searcher.search(QUERY, k=10, filter="year >= 2035")  # 5 documents match
    assert sorted(h.doc_id for h in hits) == sorted(d for d, y in year.items() if y >= 2035)
    unfiltered = {h.doc_id: h.score for h in searcher.with_config(depth=40).search(QUERY, k=40)}
    for h in hits:  # the same document score as without the filter: all its passages were scored
        assert h.score == pytest.approx(unfiltered[h.doc_id], abs=1e-5)
    with pytest.raises(MiceIndexError, match="reserved"):
        BuildConfig(fields=("passage:int",)).field_specs()
