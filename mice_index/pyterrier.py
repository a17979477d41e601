"""PyTerrier transformers over a mice-index index (optional extra: `pip install "mice-index[pyterrier]"`).

    from mice_index.pyterrier import MiceReranker, MiceRetriever

    mice = MiceRetriever("idx/", k=100, candidates="hybrid")      # queries -> ranked results
    results = mice.transform(pt.new.queries(["how do bees make honey"]))
    pipeline = bm25 >> MiceReranker("idx/")                        # any first stage -> MICE scores

Both are thin shells over `mice_index.search.Searcher` and `mice_index.scorer.MiceScorer`: the
retriever returns what `Searcher.search_many` returns, the re-ranker scores the incoming (qid,
docno) pairs from the index's stored states. Ranks start at 0, as everywhere in PyTerrier.

Frames follow the project's rules (README → Rules): ranked by score descending, equal scores by
docno ascending, and scores made strictly decreasing down each query's list (a tie becomes the next
float32 below the score above it, `mice_index.runs.trec.strictly_decreasing`) so that evaluation,
which sorts by score alone, reads the frame's ranks; k and depth above the corpus size are clipped
with one warning; a document whose id equals the qid is left out only with `remove_query_id=True`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

try:
    import pyterrier as pt
except ImportError as e:
    raise ImportError('mice_index.pyterrier needs PyTerrier (>= 1.0): pip install "mice-index[pyterrier]"') from e

from mice_index.errors import IndexError_, SearchError
from mice_index.store.generation import IndexChanged
from mice_index.model import MiceModel
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.candidates import interpolate
from mice_index.runs.trec import strictly_decreasing
from mice_index.search import SearchConfig, Searcher, checked_model, clipped, resolve_alpha
from mice_index.sources import Query
from mice_index.store import IndexReader

__all__ = ["FrameError", "MiceReranker", "MiceRetriever"]

RESULT_COLUMNS = ["qid", "query", "docno", "score", "rank"]


class FrameError(SearchError, pt.validate.InputValidationError):
    """An input frame lacks columns a transformer needs: a mice-index SearchError that PyTerrier's
    pipeline inspection also recognises as its InputValidationError."""

    def __str__(self) -> str:
        return self.args[0]


def _require(inp: pd.DataFrame, columns: list[str], who: str, excludes: tuple[str, ...] = ()) -> None:
    try:
        pt.validate.columns(inp, includes=columns, excludes=list(excludes))
    except pt.validate.InputValidationError as e:
        missing = [c for c in columns if c not in inp.columns]
        problem = (f"lacks column(s) {', '.join(missing)}" if missing else
                   f"has column(s) {', '.join(c for c in excludes if c in inp.columns)} it must not have")
        raise FrameError(f"{who}: the input frame {problem}; it needs {', '.join(columns)}"
                         f"{' and no ' + ', '.join(excludes) if excludes else ''} "
                         f"(got {', '.join(map(str, inp.columns)) or 'none'})", e.modes) from None


def _searcher(index: str | Path | Searcher, model: MiceModel | str | None, options: dict) -> Searcher:
    """An index folder is opened with `options` (SearchConfig fields); a Searcher gets them as changes."""
    if isinstance(index, Searcher):
        if model is not None:
            raise SearchError("model= goes with an index folder; a Searcher already has its model")
        return index.with_config(**options) if options else index
    return Searcher.open(index, model=model, config=SearchConfig(**options))


def _ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by query (input order), then score descending, equal scores by docno ascending;
    ranks from 0 in that order; scores made strictly decreasing within each query (ties only)."""
    if frame.empty:
        return frame.assign(rank=pd.Series(dtype=np.int64))
    keys = pd.DataFrame({"query": pd.factorize(frame["qid"])[0], "score": -frame["score"].to_numpy(),
                         "docno": frame["docno"].astype(str).to_numpy()})
    order = keys.sort_values(["query", "score", "docno"], kind="mergesort").index.to_numpy()
    frame = frame.iloc[order].reset_index(drop=True)
    groups = frame.groupby(pd.factorize(frame["qid"])[0], sort=False)
    frame["rank"] = groups.cumcount().to_numpy() + pt.model.FIRST_RANK
    frame["score"] = np.concatenate([strictly_decreasing(g) for _, g in groups["score"]])
    return frame


class MiceRetriever(pt.Transformer):
    """Queries (qid, query) -> results (qid, query, docno, score, rank): `Searcher.search_many`.

    `index` is an index folder or an open `Searcher`; `k` results per query (None: the depth; above
    the corpus size: clipped, with one warning); other keywords are `SearchConfig` fields
    (candidates="bm25"|"dense"|"hybrid", depth=100, rerank="mice"|"none", scorer=ScorerConfig(...),
    remove_query_id=False: True leaves out a document whose docno equals the qid, as BEIR's arguana
    and quora need). `filter`: a metadata filter (README → Filters, e.g. "year >= 2020") applied to
    every query before the depth cut: min(k, matching documents) results per query; a filter the
    index cannot apply raises FilterError here, not at transform time. Other input columns are kept."""

    def __init__(self, index: str | Path | Searcher, k: int | None = None, *,
                 model: MiceModel | str | None = None, filter: str | None = None, **options):
        self.searcher = _searcher(index, model, options)
        self.k = None if k is None else clipped("k", k, k, self.searcher.reader.num_live)
        self.filter = filter
        self.searcher.allowed(filter)  # FilterError now

    def __repr__(self) -> str:
        c = self.searcher.config
        flt = f", filter={self.filter!r}" if self.filter is not None else ""
        return (f"MiceRetriever({self.searcher.reader.root}, k={self.k}, candidates={c.candidates}, "
                f"rerank={c.rerank}{flt})")

    def transform_inputs(self) -> list[str]:
        return ["qid", "query"]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        # a frame with docnos holds results, not queries: MiceReranker re-scores those
        _require(inp, ["qid", "query"], "MiceRetriever", excludes=("docno",))
        columns = RESULT_COLUMNS + [c for c in inp.columns if c not in RESULT_COLUMNS]
        if inp.empty:
            out = inp.copy()
            out["docno"], out["score"], out["rank"] = (pd.Series(dtype=object), pd.Series(dtype=np.float64),
                                                       pd.Series(dtype=np.int64))
            return out[columns]
        qids = inp["qid"].tolist()
        dup = pd.Index(qids).duplicated()
        if dup.any():
            raise SearchError(f"MiceRetriever: qid {qids[int(np.argmax(dup))]!r} appears more than once in the queries")
        run = self.searcher.search_many([Query(str(q), str(t)) for q, t in zip(qids, inp["query"])], self.k,
                                        filter=self.filter)
        hits = [(pos, d.doc_id, d.score) for pos, q in enumerate(qids) for d in run[str(q)]]
        pos, docnos, scores = zip(*hits) if hits else ((), (), ())
        out = inp.iloc[list(pos)].reset_index(drop=True)
        out["docno"] = pd.Series(docnos, dtype=object)
        out["score"] = np.asarray(scores, dtype=np.float64)
        return _ranked(out)[columns]


class MiceReranker(pt.Transformer):
    """Results (qid, query, docno[, score, rank]) -> the same pairs scored by MICE and ranked again.

    Any first stage works (`bm25 >> MiceReranker("idx/")`) as long as its docnos are documents of
    the index; their states are read from it. `index` is an index folder or an open `Searcher`
    (whose model and scorer settings are used); `scorer` overrides the scorer settings;
    `query_batch` queries are scored together. `alpha` interpolates the incoming first-stage
    `score` with MICE's, as `SearchConfig.alpha` does (None: the Searcher's setting, else the
    model's recommended alpha; 0: pure MICE). The score is replaced, other columns kept."""

    def __init__(self, index: str | Path | Searcher, *, model: MiceModel | str | None = None,
                 scorer: ScorerConfig | None = None, query_batch: int | None = None,
                 alpha: float | None = None):
        if isinstance(index, Searcher):
            searcher = _searcher(index, model, {})
            if searcher.model is None:
                raise SearchError("MiceReranker: this Searcher has no MICE model (it was opened with rerank='none')")
            self.reader, mice, config = searcher.reader, searcher.model, searcher.config
        else:  # only the states and the model are needed: no first stage is loaded
            self.reader = IndexReader.open(index)
            mice, config = checked_model(self.reader, model), SearchConfig()
        self.scorer = MiceScorer(mice, self.reader, scorer or config.scorer)
        self.query_batch = query_batch or config.query_batch
        self.alpha = resolve_alpha(config.alpha if alpha is None else alpha, mice)
        if not 0.0 <= self.alpha <= 1.0:
            raise SearchError(f"MiceReranker: alpha must be in [0, 1], got {self.alpha}")

    def __repr__(self) -> str:
        return f"MiceReranker({self.reader.root})"

    def transform_inputs(self) -> list[str]:
        return ["qid", "query", "docno"]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        _require(inp, ["qid", "query", "docno"] + (["score"] if self.alpha > 0 else []), "MiceReranker")
        columns = list(inp.columns) + [c for c in ("score", "rank") if c not in inp.columns]
        if inp.empty:
            out = inp.copy()
            out["score"], out["rank"] = pd.Series(dtype=np.float64), pd.Series(dtype=np.int64)
            return out[columns]
        rows = np.asarray([self._row(d) for d in inp["docno"]], dtype=np.int64)
        scores = np.empty(len(inp), dtype=np.float64)
        groups = list(inp.groupby("qid", sort=False).indices.values())  # positions of each query's pairs
        first = inp["score"].to_numpy(dtype=np.float64) if self.alpha > 0 else None
        for i in range(0, len(groups), self.query_batch):
            batch = groups[i:i + self.query_batch]
            texts = [str(inp["query"].iat[g[0]]) for g in batch]
            for g, s in zip(batch, self.scorer.score(texts, [rows[g] for g in batch])):
                scores[g] = s if first is None else interpolate(first[g], s, self.alpha)
        out = inp.reset_index(drop=True)
        out["score"] = scores
        return _ranked(out)[columns]

    def _row(self, docno) -> int:
        try:
            return self.reader.row_of(str(docno))
        except IndexChanged:
            raise
        except IndexError_:
            raise SearchError(f"MiceReranker: document {docno!r} is not in the index {self.reader.root}") from None
