"""Metadata filters: fields read and stored at build time, the filter grammar, and filtered search
equal to brute force (every allowed document scored by the same first stage / the same MICE
scorer) with exactly min(k, matches) hits, in the API, the CLI, PyTerrier and the server; bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.candidates import HybridConfig
from mice_index.errors import MiceIndexError, SearchError, SourceError
from mice_index.filters import FilterError, compile_filter
from mice_index.model import MiceModel
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Field, Query, read_documents, read_queries, sample_collection

from .conftest import write_tiny_bert
from .test_search import FP32, _cli

SOURCES = "abcd"


def _fields_of(row: int) -> dict:
    """Synthetic fields of sample document `row` (derived from the row only)."""
    out = {"year": 2000 + row % 10, "source": SOURCES[row % 4], "draft": row % 5 == 0}
    if row % 7:  # every 7th document has no metadata: null lang
        out["metadata"] = {"lang": "en" if row % 2 else "de", "score": row / 4}
    return out


def _write_corpus(path):
    with open(sample_collection() / "corpus.jsonl") as src, open(path, "w") as out:
        for row, line in enumerate(src):
            out.write(json.dumps({**json.loads(line), **_fields_of(row)}) + "\n")
    return path


FIELDS = ("year:int", "source:str", "draft:bool", "metadata.lang:str", "metadata.score:float")


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm_dir):
    """The sample collection with synthetic fields, indexed with a tiny random MICE model."""
    root = tmp_path_factory.mktemp("filters")
    write_tiny_bert(root / "tiny", minilm_dir, seed=1)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=96, max_query_length=16)
    model_dir = model.save(root / "mice")
    corpus = _write_corpus(root / "corpus.jsonl")
    build_index(corpus, root / "idx", BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=16,
                                                  fields=FIELDS))
    return root / "idx", MiceModel.load(model_dir), corpus


class _SameEmbeddings:
    """The searcher's dense query encoder, each query text encoded once per module (the encoder is
    deterministic; the backbone pass is most of these tests' time)."""

    def __init__(self, inner):
        self.inner, self.model, self.cache = inner, inner.model, {}

    def __call__(self, texts):
        for t in texts:
            if t not in self.cache:
                self.cache[t] = self.inner([t])[0]
        return np.stack([self.cache[t] for t in texts])

    def from_states(self, states, mask):
        return self.inner.from_states(states, mask)


@pytest.fixture(scope="module")
def base(built) -> Searcher:
    """One opened searcher (model, dense query encoder); tests take variants with `_searcher`."""
    idx, model, _ = built
    searcher = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32))
    searcher._embed = _SameEmbeddings(searcher._embed)
    return searcher


def _searcher(base, **kw) -> Searcher:
    return base.with_config(**kw)


QUERIES = [q.text for q in read_queries(sample_collection())][:3]
N = 40
# filter -> the rows it keeps (from _fields_of): several selectivities, fewer than k, none
CASES = {
    "year >= 2005 and source in ('a', 'b')": [r for r in range(N) if r % 10 >= 5 and r % 4 < 2],
    "not draft": [r for r in range(N) if r % 5],
    "metadata.lang == 'en' or year == 2003": [r for r in range(N) if (r % 7 and r % 2) or r % 10 == 3],
    "metadata.lang is null": [r for r in range(N) if r % 7 == 0],  # 6 rows
    "year == 2001 and source == 'b'": [r for r in range(N) if r % 10 == 1 and r % 4 == 1],  # 2 rows
    "year > 2100": [],
}


def _mask(rows) -> np.ndarray:
    m = np.zeros(N, bool)
    m[rows] = True
    return m


# -- fields: reading, storing, manifest --

def test_fields_are_stored_per_row_and_listed(built, base):
    idx, _, _ = built
    searcher = _searcher(base, rerank="none")
    assert [(f.name, f.type) for f in searcher.fields] == [tuple(s.split(":")) for s in FIELDS]
    table = searcher.reader.field_table()
    want = [_fields_of(r) for r in range(N)]
    assert table.column("year").to_pylist() == [w["year"] for w in want]
    assert table.column("draft").to_pylist() == [w["draft"] for w in want]
    assert table.column("metadata.lang").to_pylist() == [w.get("metadata", {}).get("lang") for w in want]
    shard = next((idx / "shards").iterdir())
    assert pq.read_schema(shard / "docs.parquet").field("metadata.score").type == "double"
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["settings"]["fields"][0] == {"name": "year", "type": "int"}


def test_info_lists_the_fields(built, monkeypatch, capsys):
    idx, _, _ = built
    code, out = _cli(monkeypatch, capsys, "info", "--index", idx, "--json")
    assert code in (0, None)
    assert json.loads(out.out)["fields"][1] == {"name": "source", "type": "str"}


def test_field_of_the_wrong_type_is_one_line_naming_document_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "d1", "text": "x", "year": 2020}\n{"_id": "d2", "text": "y", "year": "2021"}\n')
    with pytest.raises(SourceError, match=r"c.jsonl:2: document 'd2': field 'year' is declared int .* got '2021'"):
        list(read_documents(path, fields=(Field("year", "int"),)))
    path.write_text('{"_id": "d1", "text": "x", "flag": 1}\n')
    with pytest.raises(SourceError, match="field 'flag' is declared bool"):
        list(read_documents(path, fields=(Field("flag", "bool"),)))
    path.write_text('{"_id": "d1", "text": "x", "n": true}\n')
    with pytest.raises(SourceError, match="field 'n' is declared int"):  # true is not an integer
        list(read_documents(path, fields=(Field("n", "int"),)))
    path.write_text('{"_id": "d1", "text": "x", "n": 9223372036854775808}\n')
    with pytest.raises(SourceError, match="outside the 64-bit integer range"):
        list(read_documents(path, fields=(Field("n", "int"),)))
    path.write_text('{"_id": "d1", "text": "x", "n": NaN}\n')
    with pytest.raises(SourceError, match="field 'n' must be a finite number"):
        list(read_documents(path, fields=(Field("n", "float"),)))
    path.write_text('{"_id": "d1", "text": "x", "metadata": {"y": 3}}\n{"_id": "d2", "text": "z", "metadata": null}\n')
    docs = list(read_documents(path, fields=(Field("metadata.y", "float"), Field("n", "int"))))
    assert [d.fields for d in docs] == [(3.0, None), (None, None)]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("d1\thello\n")
    with pytest.raises(SourceError, match="JSONL"):
        list(read_documents(tsv, fields=(Field("year", "int"),)))


@pytest.mark.parametrize("spec,match", [
    ("year", "expected NAME:TYPE"), ("year:date", "unknown type 'date'"), ("title:str", "reserved"),
    ("1year:int", "not one"), ("a.class:int", "not one"), ("__row__:int", "reserved"),
    (("year:int", "year:str"), "declared twice"),
])
def test_bad_field_spec(spec, match):
    with pytest.raises(MiceIndexError, match=match):
        BuildConfig(fields=spec if isinstance(spec, tuple) else (spec,))


def test_build_with_a_bad_field_value_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "d1", "text": "x", "year": "2020"}\n')
    code, out = _cli(monkeypatch, capsys, "build", "--corpus", corpus, "--index", tmp_path / "idx",
                     "--field", "year:int", "--quiet")
    assert code == 2 and len(out.err.strip().splitlines()) == 1 and "'d1'" in out.err and "'year'" in out.err
    assert not (tmp_path / "idx").exists()
    code, out = _cli(monkeypatch, capsys, "build", "--corpus", corpus, "--index", tmp_path / "idx",
                     "--field", "year:integer")
    assert code == 2 and "unknown type 'integer'" in out.err and not (tmp_path / "idx").exists()


# -- the grammar --

F = tuple(Field(*s.split(":")) for s in FIELDS)


@pytest.mark.parametrize("text,match", [
    ("year >= ", "syntax error"),
    ("year = 2020", "syntax error at character 6"),
    ("yr > 3", r"unknown field 'yr' .*fields: year \(int\), source \(str\)"),
    ("source > 3", "field 'source' is str and cannot be compared with a number"),
    ("year == 'x'", "field 'year' is int and cannot be compared with a string"),
    ("year == null", "use 'year is null'"),
    ("draft < true", "field 'draft' is bool"),
    ("__import__('os').system('x')", "expected a comparison"),
    ("year > len(source)", "expected a literal"),
    ("year > source", "compares two fields"),
    ("year", "only a bool field stands alone"),
    ("", "empty"),
    ("year > 1\nor year < 0", "one line"),
])
def test_bad_filters_are_one_line(text, match):
    with pytest.raises(FilterError, match=match) as exc:
        compile_filter(text, F)
    assert "\n" not in str(exc.value) and isinstance(exc.value, SearchError)


def test_filter_on_an_index_without_fields():
    with pytest.raises(FilterError, match="this index has no fields"):
        compile_filter("year > 1", ())


@pytest.mark.parametrize("text", list(CASES))
def test_filter_masks_equal_python(base, text):
    assert _searcher(base, rerank="none").allowed(text).tolist() == _mask(CASES[text]).tolist()


def test_null_semantics_and_chains(base):
    s = _searcher(base, rerank="none")
    nulls = _mask(CASES["metadata.lang is null"])
    for text in ("metadata.lang == 'en'", "metadata.lang != 'en'", "not metadata.lang == 'en'",
                 "metadata.lang in ('en', 'de')", "metadata.lang not in ('en')"):
        assert not (s.allowed(text) & nulls).any(), text  # SQL: null matches no comparison
    assert s.allowed("2002 <= year < 2004").tolist() == _mask([r for r in range(N) if r % 10 in (2, 3)]).tolist()
    assert s.allowed("metadata.score > 2.5").sum() == sum(1 for r in range(N) if r % 7 and r / 4 > 2.5)


# -- filtered search equals brute force, exactly min(k, matches) --

def _bm25_brute(searcher, text, allowed, k):
    full = searcher.candidates([text], N)  # every document sharing a term, unfiltered
    rows, scores = full.rows[0], full.scores[0]
    keep = (rows >= 0) & allowed[np.maximum(rows, 0)]
    return rows[keep][:k], scores[keep][:k]


def _dense_brute(searcher, text, allowed, k):
    vectors = searcher.reader.dense_vectors()
    scores = vectors @ searcher._embed([text])[0]
    rows = np.flatnonzero(allowed)
    order = np.lexsort((rows, -scores[rows]))[:k]
    return rows[order], scores[rows][order]


@pytest.mark.parametrize("text", list(CASES))
def test_bm25_and_dense_candidates_equal_brute_force(base, text):
    allowed = _mask(CASES[text])
    for kind, brute in (("bm25", _bm25_brute), ("dense", _dense_brute)):
        searcher = _searcher(base, candidates=kind, rerank="none")
        for q in QUERIES:
            got = searcher.candidates([q], 5, allowed=allowed)
            rows, scores = brute(searcher, q, allowed, 5)
            ok = got.rows[0] >= 0
            assert got.rows[0][ok].tolist() == rows.tolist(), (kind, q)
            np.testing.assert_allclose(got.scores[0][ok], scores, rtol=1e-5, atol=1e-5)
            if kind == "dense":
                assert ok.sum() == min(5, allowed.sum())


@pytest.mark.parametrize("text", list(CASES)[::2])
def test_hybrid_candidates_equal_fusion_of_brute_force_lists(base, text):
    allowed = _mask(CASES[text])
    searcher = _searcher(base, candidates="hybrid", rerank="none", hybrid=HybridConfig(depth=6))
    generators = {kind: searcher.with_config(candidates=kind) for kind in ("bm25", "dense")}
    from mice_index.candidates import Candidates

    for q in QUERIES:
        got = searcher.candidates([q], 4, allowed=allowed)
        lists = []
        for kind, brute in (("bm25", _bm25_brute), ("dense", _dense_brute)):
            rows, scores = brute(generators[kind], q, allowed, 6)
            c = Candidates.empty(1, 6)
            c.rows[0, :rows.size], c.scores[0, :rows.size] = rows, scores
            lists.append(c)
        want = searcher.config.hybrid.fuse(lists[0], lists[1], 4)
        assert got.rows.tolist() == want.rows.tolist()
        assert (got.rows[0] >= 0).sum() == min(4, allowed.sum())


@pytest.mark.parametrize("text", ["not draft", "metadata.lang is null", "year == 2001 and source == 'b'",
                                  "year > 2100"])
def test_mice_over_every_allowed_document_equals_brute_force(built, base, text):
    """depth = the corpus: the candidates are every allowed document; MICE scores (alpha 0) equal
    MICE from text over the allowed documents, top k of them."""
    idx, model, _ = built
    searcher = _searcher(base, depth=N, alpha=0.0)
    allowed = CASES[text]
    for q in QUERIES[:2]:
        hits = searcher.search(q, k=5, filter=text)
        assert len(hits) == min(5, len(allowed))
        assert {h.row for h in hits} <= set(allowed)
        if not allowed:
            continue
        docs = searcher.reader.texts(allowed)
        want = model.score_texts(q, [model.format_document(t, x) for t, x in docs]).numpy()
        top = np.argsort(-want, kind="stable")[:5]
        np.testing.assert_allclose([h.score for h in hits], want[top], atol=1e-4)
        assert [h.row for h in hits][:2] == [allowed[j] for j in top][:2]


@pytest.mark.parametrize("kind", ["bm25", "dense", "hybrid"])
def test_depth_applies_to_the_allowed_set_and_mice_scores_only_those(base, kind):
    searcher = _searcher(base, candidates=kind, depth=5)
    text = "not draft"
    for q in QUERIES:
        hits = searcher.search(q, k=5, filter=text)
        assert {h.row for h in hits} <= set(CASES[text])
        if kind != "bm25":  # BM25 alone returns only documents sharing a query term
            assert len(hits) == 5


@pytest.mark.parametrize("text", list(CASES))
def test_api_search_many_and_search_texts_give_min_k_matches(base, text):
    searcher = _searcher(base, depth=10)
    n = len(CASES[text])
    run = searcher.search_many([Query(str(i), q) for i, q in enumerate(QUERIES)], k=8, filter=text)
    assert [len(v) for v in run.values()] == [min(8, n)] * len(QUERIES)
    ids = set(searcher.reader.doc_ids_of(CASES[text])) if n else set()
    assert all(d.doc_id in ids for v in run.values() for d in v)
    texts = searcher.search_texts(QUERIES, k=8, filter=text)
    assert [[h.doc_id for h in hs] for hs in texts] == [[d.doc_id for d in v] for v in run.values()]


def test_api_bad_filter_raises_filter_error(base):
    searcher = _searcher(base, rerank="none")
    with pytest.raises(FilterError, match="unknown field 'yr'"):
        searcher.search("bees", filter="yr > 1")
    with pytest.raises(FilterError, match="is str"):
        searcher.search_many([Query("1", "bees")], filter="source == 1")


def _plain_index(built, tmp_path):
    """A 3-document index built without fields (BM25 only)."""
    idx, _, _ = built
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t, "year": 2000 + i}) + "\n"
                              for i, t in enumerate(["bees make honey", "coral reefs", "bees and wasps"])))
    plain = tmp_path / "plain"
    build_index(corpus, plain, BuildConfig(model=str(idx.parent / "mice"), codec="fp32", dtype="fp32", dense="none"))
    return plain


def test_unfiltered_index_refuses_a_filter(built, tmp_path):
    plain, model = _plain_index(built, tmp_path), built[1]
    searcher = Searcher.open(plain, model=model, config=SearchConfig(candidates="bm25", rerank="none"))
    assert searcher.search("bees", k=3)
    with pytest.raises(FilterError, match="no fields"):
        searcher.search("bees", filter="year > 1")


def test_cli_filter_on_an_index_without_fields(built, tmp_path, monkeypatch, capsys):
    plain = _plain_index(built, tmp_path)
    code, out = _cli(monkeypatch, capsys, "search", "--index", plain, "--query", "bees", "--filter", "year > 1")
    assert code == 2 and "this index has no fields" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = _cli(monkeypatch, capsys, "info", "--index", plain, "--json")
    assert json.loads(out.out)["fields"] == []


# -- CLI --

@pytest.mark.parametrize("text", ["year == 2001 and source == 'b'", "year > 2100"])
def test_cli_search_filter(built, monkeypatch, capsys, text, tmp_path):
    idx, _, _ = built
    code, out = _cli(monkeypatch, capsys, "search", "--index", idx, "--query", QUERIES[0], "--filter", text,
                     "--k", 7, "--json", "--depth", 10, "--dtype", "fp32")
    assert code in (0, None)
    hits = json.loads(out.out)
    assert len(hits) == min(7, len(CASES[text]))
    run = tmp_path / "run.txt"
    code, _ = _cli(monkeypatch, capsys, "search", "--index", idx, "--queries", sample_collection(), "--run", run,
                   "--filter", text, "--k", 7, "--rerank", "none")
    assert code in (0, None)
    lines = [ln.split() for ln in run.read_text().splitlines()]
    assert len(lines) == 12 * min(7, len(CASES[text]))


@pytest.mark.parametrize("text,match", [
    ("year >=", "syntax error"), ("yr > 1", "unknown field 'yr'"), ("source > 3", "is str"),
])
def test_cli_bad_filter_is_one_line_exit_2(built, monkeypatch, capsys, text, match, tmp_path):
    idx, _, _ = built
    for mode in (["--query", "bees"], ["--queries", str(sample_collection()), "--run", str(tmp_path / "r")]):
        code, out = _cli(monkeypatch, capsys, "search", "--index", idx, *mode, "--filter", text)
        assert code == 2 and match in out.err and len(out.err.strip().splitlines()) == 1
        assert "Traceback" not in out.err
    assert not (tmp_path / "r").exists()


# -- approximate dense kinds: never fewer than min(k, allowed) --

@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_dense_kinds_return_min_k_allowed(kind, tmp_path, monkeypatch):
    import mice_index.candidates.dense as dense_mod
    from mice_index.candidates import DenseConfig, DenseIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:4] + 0.1 * rng.standard_normal((4, 16)).astype(np.float32)
    DenseIndex.build(x, DenseConfig(kind=kind, nprobe=1)).save(tmp_path)  # nprobe 1: selective filters come back short
    index = DenseIndex.load(tmp_path)  # memory-mapped, as a searcher opens it
    for frac in (0.003, 0.05, 0.6):
        allowed = rng.random(2000) < frac
        rows = np.flatnonzero(allowed)
        exact = rows[np.argsort(-(q @ x[rows].T), axis=1, kind="stable")[:, :10]]
        for limit in (dense_mod.EXACT_FILTER_ROWS, 0):  # few allowed rows: exact scan; else selector + fallback
            monkeypatch.setattr(dense_mod, "EXACT_FILTER_ROWS", limit)
            got = index.search(q, 10, allowed=allowed)
            assert ((got.rows >= 0).sum(axis=1) == min(10, rows.size)).all(), (kind, frac, limit)
            assert set(got.rows[got.rows >= 0].tolist()) <= set(rows.tolist())
            if limit:
                assert got.rows[:, : exact.shape[1]].tolist() == exact.tolist()


# -- PyTerrier and the server --

def test_pyterrier_retriever_filter(base):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyterrier")
    from mice_index.pyterrier import MiceRetriever

    frame = pd.DataFrame({"qid": ["1", "2"], "query": QUERIES[:2]})
    for text in ("year == 2001 and source == 'b'", "not draft", "year > 2100"):
        res = MiceRetriever(base, k=5, filter=text, depth=10).transform(frame)
        want = base.with_config(depth=10).search_many([Query("1", QUERIES[0]), Query("2", QUERIES[1])], k=5,
                                                      filter=text)
        assert res.groupby("qid").size().reindex(["1", "2"], fill_value=0).tolist() == [min(5, len(CASES[text]))] * 2
        assert res[res.qid == "1"]["docno"].tolist() == [d.doc_id for d in want["1"]]
    with pytest.raises(FilterError, match="unknown field"):
        MiceRetriever(base, k=5, filter="yr > 1")


def test_server_filter(base):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.serve import BatchConfig, create_app

    with TestClient(create_app(base, BatchConfig(window_ms=5), k=5)) as client:
        for text in ("year == 2001 and source == 'b'", "not draft", "year > 2100"):
            r = client.post("/search", json={"q": QUERIES[:2], "k": 6, "filter": text, "depth": 10})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [len(x["hits"]) for x in body["results"]] == [min(6, len(CASES[text]))] * 2
            assert body["settings"]["filter"] == text
            want = base.with_config(depth=10).search(QUERIES[0], k=6, filter=text)
            assert [h["doc_id"] for h in body["results"][0]["hits"]] == [h.doc_id for h in want]
            g = client.get("/search", params={"q": QUERIES[0], "k": 6, "filter": text, "depth": 10})
            assert [h["doc_id"] for h in g.json()["results"][0]["hits"]] == [h.doc_id for h in want]
        for text, match in (("year >=", "syntax error"), ("yr > 1", "unknown field 'yr'"),
                            ("source > 3", "is str"), ("\\udc80", "not valid Unicode")):
            r = client.post("/search", content='{"q": "bees", "filter": "%s"}' % text,
                            headers={"content-type": "application/json"})
            assert r.status_code == 400 and match in r.json()["error"], r.text
            assert r.json()["error"].startswith("filter")  # the API's parameter name, not --filter


def test_static_slices_carry_the_fields(built, tmp_path):
    """A build in two static slices + merge stores the same field columns as the local build."""
    from mice_index.distributed import build_slice, merge_index
    from mice_index.store import IndexReader

    idx, model, corpus = built
    cfg = BuildConfig(model=str(idx.parent / "mice"), codec="fp32", dtype="fp32", shard_docs=16, dense="none",
                      fields=FIELDS)
    for slice_id in (1, 0):
        build_slice(corpus, tmp_path / "sliced", cfg, 2, slice_id, model=model)
    merge_index(tmp_path / "sliced")
    sliced = IndexReader.open(tmp_path / "sliced")
    assert sliced.fields == IndexReader.open(idx).fields
    assert sliced.field_table().equals(IndexReader.open(idx).field_table())
