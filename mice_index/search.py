"""Search API: candidates (BM25 / dense / hybrid) from an index, re-ranked by MICE.

    searcher = Searcher.open("idx/")                       # default model, hybrid → MICE
    hits = searcher.search("how do bees make honey", k=10)  # list[Hit]
    run = searcher.search_many(queries, k=1000)            # {query_id: [ScoredDoc, ...]}

The CLI (`mice-index search`) is a thin shell over this module.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mice_index.aggregate import AGGREGATIONS, PassageMap
from mice_index.candidates import BM25Index, Candidates, DenseIndex, HybridConfig, interpolate
from mice_index.choices import check_positive, check_search_options
from mice_index.errors import IndexError_, SearchError
from mice_index.filters import FilterMasks
from mice_index.model import MiceModel
from mice_index.runs import ScoredDoc
from mice_index.scorer import MiceScorer, ScorerConfig, encode_queries_alone
from mice_index.sources import Query
from mice_index.store.generation import IndexChanged
from mice_index.text import check_text

log = logging.getLogger(__name__)

__all__ = ["Hit", "SearchConfig", "Searcher", "checked_model", "clipped", "live_docs", "ranked", "resolve_alpha"]

DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class SearchConfig:
    candidates: Literal["bm25", "dense", "hybrid"] = "hybrid"
    # candidates per query handed to the re-ranker; None: min(100, corpus); above the corpus size:
    # clipped to it with one warning
    depth: int | None = None
    rerank: Literal["mice", "none"] = "mice"
    hybrid: HybridConfig = HybridConfig()
    scorer: ScorerConfig = ScorerConfig()
    # batch mode only (search_many): drop a document whose id equals the query id (Pyserini's
    # --remove-query; BEIR's arguana and quora need it). Never applied to a single query (search).
    remove_query_id: bool = False
    query_batch: int = 16  # queries scored together in batch mode
    # interpolation weight of the first-stage score: alpha·z(first stage) + (1−alpha)·z(MICE), per
    # query over its candidates; 0 = pure MICE; None = the model's recommended_alpha (else 0)
    alpha: float | None = None
    # a passage index (build --passages): how a document's score comes from its passages' scores
    # (mice_index/aggregate.py: maxp, firstp, sump); no effect on an index of one row per document
    aggregate: str = "maxp"

    def __post_init__(self):
        check_search_options(self.candidates, self.rerank, self.depth, self.alpha, self.aggregate)


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    row: int
    title: str
    text: str  # a passage index: the text of the passage shown (`passage`)
    # a passage index: (passage number, char_start, char_end) of the passage that decided the score
    # (maxp, sump: the best one; firstp: the first), its span in the document's text; else None
    passage: tuple[int, int, int] | None = None


class Searcher:
    """Searches one index. Open with `Searcher.open(index_dir, model=None, config=...)`.

    Rules (README → Rules): a default k or depth is clipped to the corpus size silently, an explicit
    one above it is clipped with one warning; every ranked list is ordered by score descending, equal
    scores by doc id ascending (code-point order); a document whose id equals the query id is
    dropped only in batch mode with `SearchConfig.remove_query_id`."""

    def __init__(self, reader, model: MiceModel | None, config: SearchConfig, dense_query_encoder=None):
        self.reader, self.model, self.config = reader, model, config
        # a passage index: rows are passages, and k, depth and runs count documents (aggregate.py)
        self._passages = PassageMap(**reader.passage_columns()) if getattr(reader, "passages", None) else None
        self.num_documents = self._passages.num_docs if self._passages is not None else live_docs(reader)
        config = replace(config, depth=clipped("--depth", config.depth, DEFAULT_DEPTH, self.num_documents))
        self.config = config
        want_bm25, dense = config.candidates in ("bm25", "hybrid"), reader.dense_path
        if hasattr(reader, "check_candidates"):  # their files against the manifest's crc32c
            for name, used in (("bm25", want_bm25), ("dense", dense is not None)):
                if used:
                    reader.check_candidates(name)
        self._bm25 = BM25Index.load(reader.bm25_path) if want_bm25 else None
        # dense is also the fallback for queries with no BM25 term
        self._dense = DenseIndex.load(dense) if dense is not None else None
        if self._dense is None and config.candidates in ("dense", "hybrid"):
            raise SearchError(f"--candidates {config.candidates}: this index has no dense vectors")
        self._embed = dense_query_encoder
        self._scorer = MiceScorer(model, reader, config.scorer) if config.rerank == "mice" else None
        self._filters = FilterMasks(reader)  # filter text -> mask over store rows (small LRU)
        if getattr(reader, "generation", None) is not None:  # all of the above from the build it holds
            reader.generation.check()

    @property
    def alpha(self) -> float:
        """The interpolation weight in use: the config's, else the model's recommendation, else 0."""
        return resolve_alpha(self.config.alpha, self.model)

    @classmethod
    def open(cls, index_dir: str | Path, model: MiceModel | str | None = None,
             config: SearchConfig = SearchConfig()) -> Searcher:
        from mice_index.store import IndexReader

        for attempt in range(3):  # a `build --overwrite` swapping the folder while it opens: again
            try:
                reader = IndexReader.open(index_dir)
                mice = checked_model(reader, model) if config.rerank == "mice" else None
                embed = DenseQueryEncoder.for_index(reader, mice) if reader.dense_path is not None else None
                return cls(reader, mice, config, dense_query_encoder=embed)
            except IndexChanged:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- first stage --
    def _shared_query_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The queries' layer-ℓ* states (fp32) when the dense encoder and the scorer share the
        MICE model's bottom (an index whose dense vectors come from that bottom): one bottom pass
        serves both; None otherwise."""
        if self._scorer is None or self._embed is None or self._embed.model is not self.model \
                or self.config.candidates == "bm25":
            return None
        with torch.inference_mode():
            return encode_queries_alone(self.model, list(texts))

    def allowed(self, filter: str | None) -> np.ndarray | None:
        """The store rows `filter` keeps (bool [num_docs], read-only; cached per filter text), or
        None for no filter. FilterError (a SearchError, one line) for a filter this index cannot
        apply: bad syntax, an unknown field, a type mismatch, an index without fields."""
        return None if filter is None else self._filters.mask(filter)

    def check_filter(self, filter: str) -> None:
        """FilterError (one line) if this index cannot apply `filter`; cheap (parses only, reads
        nothing), for callers that refuse bad input before queueing work (the server)."""
        self._filters.compile(filter)

    @property
    def fields(self) -> tuple:
        """The document fields of the index (sources.fields.Field), which filters may name."""
        return tuple(self.reader.fields)

    def candidates(self, texts: Sequence[str], depth: int,
                   query_states: tuple[torch.Tensor, torch.Tensor] | None = None,
                   allowed: np.ndarray | None = None) -> Candidates:
        """First-stage candidates of `texts` (rows [Q, depth], padded with -1); `query_states`:
        their states from the dense encoder's bottom (`_shared_query_states`), used when no query
        was cut at the MICE query length; `allowed` (bool [num_docs]): only those store rows, the
        exact top of the allowed set of each generator (applied before the depth cut)."""
        kind, n = self.config.candidates, live_docs(self.reader)
        per_list = min(max(depth, self.config.hybrid.depth), n) if kind == "hybrid" else depth
        bm25 = self._bm25.search(list(texts), per_list, allowed) if self._bm25 is not None else None
        if kind == "bm25":
            # a query with no BM25 term (not: no allowed match) falls back to dense
            empty = ~bm25.found if allowed is None else np.array([not t for t in self._bm25.tokenize(list(texts))])
            if empty.any() and self._dense is None:
                raise SearchError("no query term is in the BM25 vocabulary (only stopwords?) and the index "
                                  "has no dense vectors to fall back on")
            if empty.any():  # e.g. a query of only stopwords: BM25 has nothing; fall back to dense
                log.warning("%d query(ies) match no BM25 term; using dense candidates for them", int(empty.sum()))
                dense = self._dense.search(self._embed([t for t, e in zip(texts, empty) if e]), depth, allowed)
                rows, scores = bm25.rows.copy(), bm25.scores.copy()
                rows[empty], scores[empty] = dense.rows, dense.scores
                return Candidates(rows, scores)
            return bm25
        cut = query_states is None or bool((query_states[1].sum(1) >= self.model.config.max_query_length).any())
        emb = self._embed(list(texts)) if cut else self._embed.from_states(*query_states)
        dense = self._dense.search(emb, per_list, allowed)
        if kind == "dense":
            return dense
        return self.config.hybrid.fuse(bm25, dense, depth)

    # -- full pipeline --
    def search(self, query: str, k: int | None = None, filter: str | None = None) -> list[Hit]:
        """One query -> its top-k hits (rank from 1, with title/text for snippets), best first.

        k=None: 10, clipped to the corpus size; an explicit k above it is clipped with one warning.
        No document is ever dropped for its id (`remove_query_id` is for batch mode only).
        `filter`: a metadata filter (mice_index.filters, README → Filters), e.g. "year >= 2020":
        only documents it keeps are candidates, before the depth cut, so the search returns
        min(k, depth, matching documents) hits; FilterError (a SearchError) for a bad filter."""
        return self.search_texts([query], k, filter=filter)[0]

    def search_texts(self, queries: Sequence[str], k: int | None = None,
                     filter: str | None = None) -> list[list[Hit]]:
        """Free-text queries searched together (one first-stage call, one scorer call) -> per query
        its top-k hits, each list equal to `search` on that query alone (k and filter as there)."""
        k = clipped("--k", k, 10, self.num_documents)
        results = self._search_batch([Query(str(i), t) for i, t in enumerate(queries)], k, remove_query_id=False,
                                     allowed=self.allowed(filter))
        out = []
        pm = self._passages
        for result in results.values():
            rows = [r for r, _ in result]
            docs = self.reader.texts(rows) if rows else []
            ids = self.reader.doc_ids_of(rows) if rows else []
            out.append([Hit(i + 1, d, s, r, t, x, pm.span(r) if pm is not None else None)
                        for i, ((r, s), d, (t, x)) in enumerate(zip(result, ids, docs))])
        return out

    def search_many(self, queries: Iterable[Query], k: int | None = None, progress=None,
                    filter: str | None = None) -> dict[str, list[ScoredDoc]]:
        """Batch mode -> {query_id: ranked ScoredDoc list}; `progress(n_done)` is called per batch.

        k=None: the depth; an explicit k above the corpus size is clipped with one warning. With
        `config.remove_query_id` a document whose id equals the query id is left out. `filter`:
        as in `search`, for every query (checked before any query is searched)."""
        queries = list(queries)
        if not queries:
            raise SearchError("no queries to search")
        allowed = self.allowed(filter)
        k = clipped("--k", k, self.config.depth, self.num_documents)
        run: dict[str, list[ScoredDoc]] = {}
        step = self.config.query_batch
        for i in range(0, len(queries), step):
            batch = queries[i:i + step]
            for qid, hits in self._search_batch(batch, k, allowed=allowed).items():
                ids = self.reader.doc_ids_of([r for r, _ in hits]) if hits else []
                run[qid] = [ScoredDoc(qid, d, s) for d, (_, s) in zip(ids, hits)]
            if progress is not None:
                progress(len(batch))
        return run

    def _search_batch(self, queries: Sequence[Query], k: int, remove_query_id: bool | None = None,
                      allowed: np.ndarray | None = None) -> dict[str, list[tuple[int, float]]]:
        """{query_id: [(row, score)]}, at most min(k, depth) per query, score descending and equal
        scores by doc id ascending; remove_query_id=None: the config's; `allowed` (bool
        [num_docs]): only those store rows are candidates (depth applies to the allowed set)."""
        if k <= 0:
            raise SearchError(f"--k must be positive, got {k}")
        for q in queries:
            if not check_text(q.text, f"query {q.query_id!r}", SearchError).strip():
                raise SearchError(f"query {q.query_id!r} is empty")
        remove = self.config.remove_query_id if remove_query_id is None else remove_query_id
        if allowed is not None and not allowed.any():  # the filter keeps no document
            return {q.query_id: [] for q in queries}
        depth = self.config.depth
        extra = 1 if remove else 0  # room for the skipped self-match
        texts = [q.text for q in queries]
        shared = self._shared_query_states(texts)  # one bottom pass for the dense stage and MICE
        if self._passages is not None:
            return self._search_passages(queries, texts, shared, k, remove, allowed)
        cands = self.candidates(texts, min(depth + extra, live_docs(self.reader)), shared, allowed)
        lists = []
        for q, rows, scores in zip(queries, cands.rows, cands.scores):
            keep = rows >= 0
            if remove:
                keep &= rows != self._row_or_missing(q.query_id)
            lists.append((rows[keep][:depth], scores[keep][:depth]))
        if self._scorer is not None:
            mice = self._scorer.score(texts, [r for r, _ in lists], shared)
            alpha = self.alpha
            lists = [(rows, interpolate(first, s, alpha)) for (rows, first), s in zip(lists, mice)]
        out = {}
        for q, (rows, scores) in zip(queries, lists):
            order = ranked(rows, scores, k, self.reader.doc_ids_of)
            out[q.query_id] = [(int(rows[j]), float(scores[j])) for j in order]
        return out

    def _search_passages(self, queries: Sequence[Query], texts: list[str], shared, k: int,
                         remove: bool, allowed: np.ndarray | None) -> dict[str, list[tuple[int, float]]]:
        """`_search_batch` over a passage index (mice_index/aggregate.py): {query_id: [(row of the
        passage shown, document score)]}, k distinct documents at most. `allowed` (bool over store
        rows): a filter's rows; fields are per document, so a document's passages are all in or all
        out, and aggregating all its passages stays within the filter."""
        pm, depth, n = self._passages, self.config.depth, self.reader.num_docs
        how = AGGREGATIONS[self.config.aggregate]
        skip = [int(pm.doc_of[r]) if remove and (r := self._row_or_missing(q.query_id)) >= 0 else -1
                for q in queries]
        fetch = min(depth + (1 if remove else 0), n)  # passages; doubled until `depth` documents
        while True:
            cands = self.candidates(texts, fetch, shared, allowed)
            picked = [pm.documents(rows, scores, depth, sk) for rows, scores, sk in zip(cands.rows, cands.scores, skip)]
            short = [len(p[0]) < depth and int((rows >= 0).sum()) >= fetch for p, rows in zip(picked, cands.rows)]
            if fetch >= n or not any(short):  # a list shorter than asked: its first stage has no more
                break
            fetch = min(2 * fetch, n)
        if self._scorer is None:  # the first stage's document ranking: each document's best passage
            lists = [(shown, first) for _, first, shown in picked]
        else:
            rows = [np.concatenate([pm.rows(int(d), how.first_only) for d in docs] or [np.zeros(0, np.int64)])
                    for docs, _, _ in picked]
            mice = self._scorer.score(texts, rows, shared)
            lists = []
            for (docs, first, _), r, s in zip(picked, rows, mice):
                agg, shown = pm.aggregate(how, docs, r, s)
                lists.append((shown, interpolate(first, agg, self.alpha)))
        out = {}
        for q, (shown, scores) in zip(queries, lists):
            order = ranked(shown, scores, k, self.reader.doc_ids_of)
            out[q.query_id] = [(int(shown[j]), float(scores[j])) for j in order]
        return out

    def _row_or_missing(self, doc_id: str) -> int:
        try:
            return self.reader.row_of(doc_id)
        except IndexChanged:
            raise
        except IndexError_:
            return -2  # matches no row (padding is -1)

    def dense_fallback(self, texts: Sequence[str]) -> list[bool]:
        """Per query: True where `candidates="bm25"` finds no BM25 term for it, so that its
        candidates come from the dense index instead (the warning in `candidates`)."""
        if self.config.candidates != "bm25" or self._bm25 is None or self._dense is None:
            return [False] * len(texts)
        return [not ids for ids in self._bm25.tokenize(list(texts))]

    def with_config(self, **changes) -> Searcher:
        other = Searcher(self.reader, self.model, replace(self.config, **changes), self._embed)
        other._filters = self._filters  # same index: same masks
        return other

    # -- index generations (store/generation.py) --
    def is_current(self) -> bool:
        """True while the index folder still holds the build this searcher opened (False after a
        `build --overwrite` replaced it: its searches then raise IndexChanged)."""
        gen = getattr(self.reader, "generation", None)
        return gen is None or gen.is_current()

    def reopened(self) -> Searcher:
        """A searcher over the build the index folder holds now, with this one's model and config
        (the model is not loaded again; it must match the new index's fingerprint)."""
        return Searcher.open(self.reader.root, model=self.model, config=self.config)


def live_docs(reader) -> int:
    """Documents a search over `reader` can return (store rows minus deleted ones)."""
    return int(getattr(reader, "num_live", reader.num_docs))


def ranked(rows: np.ndarray, scores: np.ndarray, k: int, ids_of) -> list[int]:
    """Positions of the top-k of `rows` [n] by `scores` [n] descending, equal scores by doc id
    ascending. `ids_of(rows) -> ids` is asked only for rows whose score is tied with another's and
    reaches the top k, so a search reads few ids (usually none) to rank its candidates."""
    vals = [float(x) for x in scores]
    order = sorted(range(len(vals)), key=lambda j: -vals[j])
    if len(order) > k:
        cut = vals[order[k - 1]]
        order = [j for j in order if vals[j] >= cut]  # all candidates tied with the k-th stay in
    counts = Counter(vals[j] for j in order)
    tied = [j for j in order if counts[vals[j]] > 1]
    if tied:
        ids = dict(zip(tied, ids_of([int(rows[j]) for j in tied])))
        order.sort(key=lambda j: (-vals[j], ids.get(j, "")))  # an untied score needs no id
    return order[:k]


def resolve_alpha(alpha: float | None, model: MiceModel | None) -> float:
    """`alpha` if given, else the model's `recommended_alpha` (chosen on dev queries), else 0."""
    if alpha is not None:
        return float(alpha)
    recommended = model.config.recommended_alpha if model is not None else None
    return 0.0 if recommended is None else float(recommended)


def clipped(option: str, value: int | None, default: int, num_docs: int) -> int:
    """`value` (None: `default`) clipped to the corpus size: silently for the default, with one
    warning for an explicit value, as Pyserini and bm25s do. SearchError for a value below 1."""
    if value is None:
        return max(1, min(default, num_docs))
    check_positive(option, value)
    if value > num_docs:
        log.warning("%s %d is larger than the corpus (%d documents); using %s %d",
                    option, value, num_docs, option, num_docs)
        return num_docs
    return int(value)


def checked_model(reader, model: MiceModel | str | None = None) -> MiceModel:
    """The MICE model to score `reader`'s index with (default: the one it was built with), refused
    when its fingerprint differs from the index's: scores over another bottom's states are meaningless."""
    from mice_index.defaults import load_model

    built_with = reader.manifest.model
    mice = model if isinstance(model, MiceModel) else load_model(model or built_with.name)
    if mice.fingerprint() != built_with.fingerprint:
        raise IndexError_(
            f"{reader.root}: its states were computed by model {built_with.name!r} (fingerprint "
            f"{built_with.fingerprint}), but the loaded model's fingerprint is {mice.fingerprint()}; "
            "MICE scores would be meaningless. Pass the index's model with --model or rebuild the index")
    return mice


class DenseQueryEncoder:
    """Query embeddings for the dense index: the backbone's bottom + upper layers, fp32, as the
    document side of the dense index. `bottom`: a model whose bottom *is* the backbone's (the MICE
    model of an index whose dense vectors were computed from its states, `dense.source` "tower"),
    used instead of loading the backbone's bottom again (the scorer keeps its own copy when it
    casts to bf16)."""

    def __init__(self, backbone: str, fusion_layer: int, max_length: int = 256, bottom: MiceModel | None = None):
        from mice_index.dense_tower import DenseTower

        self.model = bottom if bottom is not None else MiceModel.from_pretrained(
            backbone, fusion_layer=fusion_layer, num_interaction_layers=1)
        self.tower = DenseTower.from_backbone(backbone, self.model.config)
        self.max_length = max_length

    @classmethod
    def for_index(cls, reader, model: MiceModel | None = None) -> DenseQueryEncoder:
        """The encoder of `reader`'s dense vectors; `model`: the index's (fingerprint-checked) MICE
        model, whose bottom is shared when the vectors came from its states."""
        from mice_index.defaults import DEFAULT_BACKBONE

        dense = reader.manifest.dense
        backbone = (dense.backbone if dense is not None else None) or DEFAULT_BACKBONE
        if dense is not None and dense.source == "tower" and model is not None:  # the build checked: same bottom
            return cls(backbone, model.config.fusion_layer, bottom=model)
        return cls(backbone, 3)

    @torch.inference_mode()
    def from_states(self, states: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """Embeddings [B, Dd] from the bottom's query states [B,T,D] and mask [B,T]."""
        return self.tower(states.float(), mask).numpy().astype(np.float32)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.model.tokenize(texts, self.max_length)
        return self.tower(self.model.bottom(ids, mask), mask).numpy().astype(np.float32)
