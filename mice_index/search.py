"""Search API: candidates (BM25 / dense / hybrid) from an index, re-ranked by MICE.

    searcher = Searcher.open("idx/")                       # default model, hybrid → MICE
    hits = searcher.search("how do bees make honey", k=10)  # list[Hit]
    run = searcher.search_many(queries, k=1000)            # {query_id: [ScoredDoc, ...]}

The CLI (`mice-index search`) is a thin shell over this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mice_index.candidates import BM25Index, Candidates, DenseIndex, HybridConfig, fuse
from mice_index.errors import IndexError_, SearchError
from mice_index.model import MiceModel
from mice_index.runs import ScoredDoc
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.sources import Query

log = logging.getLogger(__name__)

__all__ = ["Hit", "SearchConfig", "Searcher"]

CANDIDATES = ("bm25", "dense", "hybrid")
RERANKERS = ("mice", "none")


@dataclass(frozen=True)
class SearchConfig:
    candidates: Literal["bm25", "dense", "hybrid"] = "hybrid"
    depth: int = 100  # candidates per query handed to the re-ranker
    rerank: Literal["mice", "none"] = "mice"
    hybrid: HybridConfig = HybridConfig()
    scorer: ScorerConfig = ScorerConfig()
    remove_query_id: bool = True  # skip a document whose id equals the query id (Pyserini --remove-query)
    query_batch: int = 16  # queries scored together in batch mode

    def __post_init__(self):
        if self.candidates not in CANDIDATES:
            raise SearchError(f"unknown candidate generator {self.candidates!r}; choose one of {', '.join(CANDIDATES)}")
        if self.rerank not in RERANKERS:
            raise SearchError(f"unknown re-ranker {self.rerank!r}; choose one of {', '.join(RERANKERS)}")
        if self.depth <= 0:
            raise SearchError(f"--depth must be positive, got {self.depth}")


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    row: int
    title: str
    text: str


class Searcher:
    """Searches one index. Open with `Searcher.open(index_dir, model=None, config=...)`."""

    def __init__(self, reader, model: MiceModel | None, config: SearchConfig, dense_query_encoder=None):
        self.reader, self.model, self.config = reader, model, config
        n = reader.num_docs
        if config.depth > n:
            raise SearchError(f"--depth {config.depth} is larger than the corpus ({n} documents)")
        self._bm25 = BM25Index.load(reader.bm25_dir) if config.candidates in ("bm25", "hybrid") else None
        self._dense = DenseIndex.load(reader.dense_dir)  # also the fallback for BM25-empty queries
        self._embed = dense_query_encoder
        self._scorer = MiceScorer(model, reader, config.scorer) if config.rerank == "mice" else None

    @classmethod
    def open(cls, index_dir: str | Path, model: MiceModel | str | None = None,
             config: SearchConfig = SearchConfig()) -> Searcher:
        from mice_index.defaults import load_model
        from mice_index.store import IndexReader

        reader = IndexReader.open(index_dir)
        if config.rerank == "mice":
            mice = model if isinstance(model, MiceModel) else load_model(model or reader.manifest.get("model"))
            if mice.fingerprint() != reader.model_fingerprint:
                raise IndexError_(
                    f"{index_dir}: index states were computed by model {reader.model_fingerprint} "
                    f"({reader.manifest.get('model')}), but the loaded model is {mice.fingerprint()}; "
                    "MICE scores would be meaningless. Pass the index's model with --model or rebuild the index")
        else:
            mice = None
        return cls(reader, mice, config, dense_query_encoder=DenseQueryEncoder.for_index(reader))

    # -- first stage --
    def candidates(self, texts: Sequence[str], depth: int) -> Candidates:
        kind = self.config.candidates
        bm25 = self._bm25.search(list(texts), depth) if self._bm25 is not None else None
        if kind == "bm25":
            empty = ~bm25.found() if hasattr(bm25, "found") else np.zeros(len(texts), bool)
            if empty.any():  # e.g. a query of only stopwords: BM25 has nothing; fall back to dense
                log.warning("%d query(ies) match no BM25 term; using dense candidates for them", int(empty.sum()))
                dense = self._dense.search(self._embed([t for t, e in zip(texts, empty) if e]), depth)
                rows, scores = bm25.rows.copy(), bm25.scores.copy()
                rows[empty], scores[empty] = dense.rows, dense.scores
                return Candidates(rows, scores)
            return bm25
        dense = self._dense.search(self._embed(list(texts)), depth)
        if kind == "dense":
            return dense
        return fuse(bm25, dense, method=self.config.hybrid.method, k=depth)

    # -- full pipeline --
    def search(self, query: str, k: int = 10) -> list[Hit]:
        """One query -> top-k hits (with title/text for snippets)."""
        result = self._search_batch([Query("q", query)], k)["q"]
        rows = [r for r, _ in result]
        docs = self.reader.texts(rows) if rows else []
        return [Hit(i + 1, self.reader.doc_id(r), s, r, t, x) for i, ((r, s), (t, x)) in enumerate(zip(result, docs))]

    def search_many(self, queries: Iterable[Query], k: int | None = None, progress=None) -> dict[str, list[ScoredDoc]]:
        """Batch mode -> {query_id: ranked ScoredDoc list}; `progress(n_done)` is called per batch."""
        queries = list(queries)
        if not queries:
            raise SearchError("no queries to search")
        k = min(self.config.depth, self.reader.num_docs) if k is None else k
        run: dict[str, list[ScoredDoc]] = {}
        step = self.config.query_batch
        for i in range(0, len(queries), step):
            batch = queries[i:i + step]
            for qid, hits in self._search_batch(batch, k).items():
                run[qid] = [ScoredDoc(qid, self.reader.doc_id(r), s) for r, s in hits]
            if progress is not None:
                progress(len(batch))
        return run

    def _search_batch(self, queries: Sequence[Query], k: int) -> dict[str, list[tuple[int, float]]]:
        self._check_k(k)
        for q in queries:
            if not q.text.strip():
                raise SearchError(f"query {q.query_id!r} is empty")
        depth = self.config.depth
        extra = 1 if self.config.remove_query_id else 0  # room for the skipped self-match
        cands = self.candidates([q.text for q in queries], min(depth + extra, self.reader.num_docs))
        lists = []
        for q, rows, scores in zip(queries, cands.rows, cands.scores):
            keep = rows >= 0
            if self.config.remove_query_id:
                same = self.reader.row_of(q.query_id, default=-1)
                keep &= rows != same
            lists.append((rows[keep][:depth], scores[keep][:depth]))
        if self._scorer is not None:
            mice = self._scorer.score([q.text for q in queries], [r for r, _ in lists])
            lists = [(rows, s) for (rows, _), s in zip(lists, mice)]
        out = {}
        for q, (rows, scores) in zip(queries, lists):
            order = sorted(range(len(rows)), key=lambda j: (-float(scores[j]), int(rows[j])))[:k]
            out[q.query_id] = [(int(rows[j]), float(scores[j])) for j in order]
        return out

    def _check_k(self, k: int) -> None:
        if k <= 0:
            raise SearchError(f"--k must be positive, got {k}")
        if k > self.reader.num_docs:
            raise SearchError(f"--k {k} is larger than the corpus ({self.reader.num_docs} documents)")

    def with_config(self, **changes) -> Searcher:
        return Searcher(self.reader, self.model, replace(self.config, **changes), self._embed)


class DenseQueryEncoder:
    """Query embeddings for the dense index: the backbone's bottom + upper layers, fp32.

    Kept apart from the MICE model (which the scorer may cast to bf16) so the query side matches
    the document side of the dense index exactly."""

    def __init__(self, backbone: str, fusion_layer: int, max_length: int = 256):
        from mice_index.model import DenseTower

        self.model = MiceModel.from_pretrained(backbone, fusion_layer=fusion_layer, num_interaction_layers=1)
        self.tower = DenseTower.from_backbone(backbone, self.model.config)
        self.max_length = max_length

    @classmethod
    def for_index(cls, reader) -> DenseQueryEncoder:
        from mice_index.defaults import DEFAULT_BACKBONE

        dense = reader.manifest.get("dense") or {}
        return cls(dense.get("model", DEFAULT_BACKBONE), int(dense.get("fusion_layer", 3)))

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.model.tokenize(texts, self.max_length)
        return self.tower(self.model.bottom(ids, mask), mask).numpy().astype(np.float32)
