"""The ensemble teacher: several retrievers over the whole corpus, fused per query.

For each query every member (:mod:`mice_index.train.members`) returns its top ``depth`` documents
over the *whole* corpus; the teacher's list is their weighted z-score fusion over the union
(:func:`mice_index.candidates.fuse_lists`; a document missing from a member's list gets that
member's lowest z-score). So the teacher judges documents beyond the first stage's candidates and
can promote one that BM25 + dense rank low: the student is taught more than its first stage
knows. With members ``("bm25", "dense")`` and equal weights this is exactly the project's hybrid
first stage (the ``hybrid`` teacher of earlier versions).

Member document representations are encoded once per corpus and cached
(``<cache>/teacher/<member>/<corpus>/``), so a teacher is run once per corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mice_index.candidates import Candidates, fuse_lists
from mice_index.errors import MiceIndexError
from mice_index.train.members import MEMBERS, MemberCache

log = logging.getLogger(__name__)

FIRST_STAGE = ("bm25", "dense")  # the members that make up the project's hybrid first stage


class EnsembleTeacher:
    """Weighted z-score fusion of retrievers over one corpus.

    texts: the corpus (rows 0..N-1, ``title text``); members: names from ``MEMBERS``; weights: one
    per member (default 1 each); doc_embeddings / embed_queries: the backbone's dense vectors
    [N, D] and a query embedder (``dense`` member); cache_root: member cache folder (None: no
    cache); key: the corpus's cache key. Raises MemberUnavailableError (with the install command)
    when a member's package is missing, MiceIndexError for unknown members or weights."""

    def __init__(self, texts: list[str], members: Sequence[str] = FIRST_STAGE, weights: Sequence[float] = (),
                 depth: int = 100, doc_ids: list[str] | None = None, doc_embeddings: np.ndarray | None = None,
                 embed_queries: Callable[[list[str]], np.ndarray] | None = None,
                 cache_root: str | Path | None = None, key: str = "corpus", progress=None):
        unknown = [m for m in members if m not in MEMBERS]
        if unknown or not members:
            raise MiceIndexError(f"teacher.members: unknown member(s) {unknown or members}; "
                                 f"choose from {sorted(MEMBERS)}")
        if weights and len(weights) != len(members):
            raise MiceIndexError(f"teacher.weights: {len(weights)} weights for {len(members)} members")
        self.names = tuple(members)
        self.weights = tuple(float(w) for w in weights) if weights else (1.0,) * len(members)
        self.depth = min(depth, len(texts))
        cache = MemberCache(Path(cache_root) if cache_root else None)
        self.members = [MEMBERS[m](texts, doc_ids=doc_ids, doc_embeddings=doc_embeddings,
                                   embed_queries=embed_queries, cache=cache, key=key, progress=progress)
                        for m in self.names]

    def member_lists(self, queries: list[str]) -> dict[str, Candidates]:
        """Each member's top-``depth`` list, [Q, depth]."""
        return {name: m.search(list(queries), self.depth) for name, m in zip(self.names, self.members)}

    def fuse(self, lists: dict[str, Candidates], names: Sequence[str] | None = None,
             weights: Sequence[float] | None = None, k: int | None = None) -> Candidates:
        """Fusion of (a subset of) member lists; default: all members with the teacher's weights."""
        names = tuple(names or self.names)
        if weights is None:
            weights = [self.weights[self.names.index(n)] for n in names]
        return fuse_lists([lists[n] for n in names], "zscore", k or self.depth, weights=weights)

    def label(self, queries: list[str]) -> Candidates:
        """The teacher's ranked list per query: rows [Q, depth] and fused scores (z-score units)."""
        return self.fuse(self.member_lists(queries))
