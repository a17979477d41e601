"""Interpolation of first-stage and MICE scores (--alpha): one formula in every entry point."""

from __future__ import annotations

import numpy as np
import pytest

from mice_index.candidates import interpolate
from mice_index.cli import main
from mice_index.errors import SearchError
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Query

from .test_search import FP32, built  # noqa: F401 - module-scoped index fixture


def _z(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / x.std()


def test_interpolate_formula():
    first, mice = np.array([3.0, 1.0, 2.0, 0.5]), np.array([-1.0, 4.0, 0.0, 2.0])
    np.testing.assert_allclose(interpolate(first, mice, 0.3), 0.3 * _z(first) + 0.7 * _z(mice))
    np.testing.assert_array_equal(interpolate(first, mice, 0.0), mice)  # pure MICE: raw scores
    np.testing.assert_allclose(interpolate(first, mice, 1.0), _z(first))
    # a constant list carries no information: z = 0 (no division by zero, no NaN)
    np.testing.assert_allclose(interpolate(np.ones(3), np.array([1.0, 2.0, 3.0]), 0.5), 0.5 * _z([1, 2, 3]))
    assert interpolate(np.zeros(0), np.zeros(0), 0.5).shape == (0,)
    for bad in (-0.1, 1.5):
        with pytest.raises(SearchError, match="alpha"):
            interpolate(first, mice, bad)


def test_search_scores_are_the_interpolation(built):  # noqa: F811
    idx, model = built
    s = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, depth=12, alpha=0.4))
    query = "how do honey bees make honey"
    cands = s.candidates([query], 12)
    rows, first = cands.rows[0], cands.scores[0]
    mice = s._scorer.score([query], [rows])[0]
    want = 0.4 * _z(first) + 0.6 * _z(mice)
    hits = s.search(query, k=12)
    got = {h.row: h.score for h in hits}
    np.testing.assert_allclose([got[int(r)] for r in rows], want, atol=1e-5)
    # the batch path (runs) gives the same scores for the same settings
    run = s.search_many([Query("x1", query)], k=12)["x1"]
    np.testing.assert_allclose(sorted(d.score for d in run), sorted(h.score for h in hits), atol=1e-6)


def test_alpha_zero_is_pure_mice_and_model_recommendation_is_default(built):  # noqa: F811
    idx, model = built
    pure = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, depth=10, alpha=0.0))
    plain = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, depth=10))
    assert plain.alpha == 0.0  # the test model recommends nothing
    assert [(h.doc_id, h.score) for h in pure.search("coral reefs", 10)] == \
           [(h.doc_id, h.score) for h in plain.search("coral reefs", 10)]
    recommending = model.with_config(recommended_alpha=0.7, recommended_alpha_note="test")
    s = Searcher(plain.reader, recommending, SearchConfig(scorer=FP32, depth=10), plain._embed)
    assert s.alpha == 0.7
    assert s.with_config(alpha=0.0).alpha == 0.0  # an explicit alpha wins, 0 included
    with pytest.raises(SearchError, match="alpha"):
        SearchConfig(alpha=2.0)


def test_cli_alpha_out_of_range_is_one_line(built, monkeypatch, capsys):  # noqa: F811
    idx, _ = built
    monkeypatch.setattr("sys.argv", ["mice-index", "search", "--index", str(idx), "--query", "bees", "--alpha", "1.5"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "alpha" in err and len(err.splitlines()) == 1


def test_pyterrier_reranker_interpolates_like_search(built):  # noqa: F811
    pytest.importorskip("pyterrier")
    import pandas as pd

    from mice_index.pyterrier import MiceReranker, MiceRetriever

    idx, model = built
    s = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, depth=10, alpha=0.5))
    queries = pd.DataFrame({"qid": ["a", "b"], "query": ["honey bees", "coral reef bleaching"]})
    direct = MiceRetriever(s, k=10).transform(queries)
    first_stage = MiceRetriever(s.with_config(rerank="none"), k=10)
    piped = (first_stage >> MiceReranker(s)).transform(queries)
    a = direct.sort_values(["qid", "docno"]).reset_index(drop=True)
    b = piped.sort_values(["qid", "docno"]).reset_index(drop=True)
    assert a["docno"].tolist() == b["docno"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
    with pytest.raises(SearchError, match="score"):  # interpolation needs the first-stage score
        MiceReranker(s).transform(piped.drop(columns=["score", "rank"]))
