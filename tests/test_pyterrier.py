"""PyTerrier transformers: the retriever is Searcher.search_many, the re-ranker is MiceScorer, bad frames."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

pt = pytest.importorskip("pyterrier")
pd = pytest.importorskip("pandas")

from mice_index.errors import SearchError  # noqa: E402
from mice_index.pyterrier import FrameError, MiceReranker, MiceRetriever  # noqa: E402
from mice_index.scorer import MiceScorer  # noqa: E402
from mice_index.search import SearchConfig, Searcher  # noqa: E402
from mice_index.sources import read_queries, sample_collection  # noqa: E402

from .test_search import FP32, built  # noqa: E402,F401  (the sample collection, indexed once per module)

RESULT_COLUMNS = ["qid", "query", "docno", "score", "rank"]


@pytest.fixture(scope="module")
def searcher(built):  # noqa: F811
    idx, model = built
    return Searcher.open(idx, model=model, config=SearchConfig(candidates="bm25", depth=10, scorer=FP32))


@pytest.fixture(scope="module")
def queries():
    return list(read_queries(sample_collection()))[:3]


def _frame(queries):
    return pd.DataFrame({"qid": [q.query_id for q in queries], "query": [q.text for q in queries]})


def test_retriever_equals_search_many(searcher, queries):
    frame = _frame(queries).assign(extra=["a", "b", "c"])
    res = MiceRetriever(searcher, k=5).transform(frame)
    assert list(res.columns) == RESULT_COLUMNS + ["extra"]
    want = searcher.search_many(queries, k=5)
    assert res["qid"].tolist() == [q.query_id for q in queries for _ in range(5)]  # input order kept
    for q, extra in zip(queries, "abc"):
        got = res[res["qid"] == q.query_id]
        assert got["docno"].tolist() == [d.doc_id for d in want[q.query_id]]
        assert got["score"].tolist() == [d.score for d in want[q.query_id]]
        assert got["rank"].tolist() == list(range(5))
        assert set(got["query"]) == {q.text} and set(got["extra"]) == {extra}


def test_reranker_scores_equal_scorer_and_rerank(searcher, queries):
    first = MiceRetriever(searcher, k=6, rerank="none").transform(_frame(queries))
    shuffled = first.sample(frac=1.0, random_state=0).reset_index(drop=True)
    res = MiceReranker(searcher).transform(shuffled)
    assert list(res.columns) == RESULT_COLUMNS
    scorer = MiceScorer(searcher.model, searcher.reader, FP32)
    for q in queries:
        got = res[res["qid"] == q.query_id]
        rows = [searcher.reader.row_of(d) for d in got["docno"]]
        np.testing.assert_allclose(got["score"], scorer.score([q.text], [rows])[0], atol=1e-5)
        assert got["rank"].tolist() == list(range(6))
        assert all(np.diff(got["score"].to_numpy()) <= 0)
        assert set(got["docno"]) == set(first[first["qid"] == q.query_id]["docno"])


def test_pipeline_operator_equals_mice_retriever(searcher, queries):
    pipeline = MiceRetriever(searcher, k=10, rerank="none") >> MiceReranker(searcher)
    res = pipeline.search(queries[0].text, qid=queries[0].query_id)
    want = MiceRetriever(searcher, k=10).transform(_frame(queries[:1]))
    assert res["docno"].tolist() == want["docno"].tolist()
    np.testing.assert_allclose(res["score"], want["score"], atol=1e-5)


def test_unknown_docno_is_named(searcher):
    frame = pd.DataFrame({"qid": ["1", "1"], "query": ["bees", "bees"], "docno": ["no-such-doc", "x"]})
    with pytest.raises(SearchError, match="no-such-doc"):
        MiceReranker(searcher).transform(frame)


def test_empty_frames_keep_columns(searcher):
    res = MiceRetriever(searcher, k=3).transform(pd.DataFrame({"qid": [], "query": []}))
    assert res.empty and list(res.columns) == RESULT_COLUMNS
    res = MiceReranker(searcher).transform(pd.DataFrame({"qid": [], "query": [], "docno": []}))
    assert res.empty and list(res.columns) == RESULT_COLUMNS


def test_missing_or_wrong_columns_are_clear(searcher):
    with pytest.raises(FrameError, match="lacks column.s. docno") as err:
        MiceReranker(searcher).transform(pd.DataFrame({"qid": ["1"], "query": ["bees"]}))
    assert isinstance(err.value, pt.validate.InputValidationError)  # PyTerrier's own error type too
    with pytest.raises(FrameError, match="lacks column.s. query"):
        MiceRetriever(searcher).transform(pd.DataFrame({"qid": ["1"]}))
    with pytest.raises(FrameError, match="docno"):
        MiceRetriever(searcher).transform(pd.DataFrame({"qid": ["1"], "query": ["bees"], "docno": ["d"]}))
    with pytest.raises(SearchError, match="'1' appears more than once"):
        MiceRetriever(searcher).transform(pd.DataFrame({"qid": ["1", "1"], "query": ["bees", "coral"]}))


def test_missing_pyterrier_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyterrier", None)  # makes `import pyterrier` fail
    monkeypatch.delitem(sys.modules, "mice_index.pyterrier")
    with pytest.raises(ImportError, match=r'pip install "mice-index\[pyterrier\]"'):
        importlib.import_module("mice_index.pyterrier")


def test_mice_index_does_not_import_pyterrier():
    code = "import sys, mice_index, mice_index.search; assert 'pyterrier' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pyterrier_inspection(searcher):
    reranker, retriever = MiceReranker(searcher), MiceRetriever(searcher, k=3)
    assert pt.inspect.transformer_inputs(retriever) == [["qid", "query"]]
    assert pt.inspect.transformer_outputs(retriever, ["qid", "query"]) == RESULT_COLUMNS
    assert pt.inspect.transformer_outputs(reranker, RESULT_COLUMNS) == RESULT_COLUMNS
    with pytest.raises(pt.validate.InputValidationError):
        pt.inspect.transformer_outputs(reranker, ["qid", "query"])


def test_reranker_from_index_folder(built, searcher, queries, tmp_path, minilm_dir):  # noqa: F811
    """An index folder opens only the states and the checked model; another model is refused."""
    from mice_index.errors import IndexError_
    from mice_index.model import MiceModel

    from .conftest import write_tiny_bert

    idx, model = built
    first = MiceRetriever(searcher, k=5, rerank="none").transform(_frame(queries[:1]))
    want = MiceReranker(searcher).transform(first)
    got = MiceReranker(idx, model=model, scorer=FP32).transform(first)
    assert got["docno"].tolist() == want["docno"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
    write_tiny_bert(tmp_path / "other", minilm_dir, seed=2)
    other = MiceModel.from_pretrained(tmp_path / "other", fusion_layer=2, num_interaction_layers=2)
    with pytest.raises(IndexError_, match="fingerprint"):
        MiceReranker(idx, model=other)
