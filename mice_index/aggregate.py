"""Ranking documents of a passage index (`build --passages W,S`) by their passages' scores.

A passage index stores each document as several rows (its passages, numbered from 0, consecutive
rows). A search over it (`search --aggregate maxp|firstp|sump`, `SearchConfig.aggregate`):

1. the first stage retrieves passages, fetching more until it has `depth` distinct documents (or
   the whole index): `--depth` counts documents; a document's first-stage score is its best
   retrieved passage's;
2. MICE scores the passages each aggregation reads of those documents: every passage for maxp and
   sump, the first passage for firstp (whether or not the first stage returned it);
3. the aggregation gives one MICE score per document; with `alpha` > 0 it is interpolated with the
   document's first-stage score per query (`candidates.interpolate`), as for a document index;
4. runs carry document ids, k distinct documents, and each hit shows the passage that decided its
   score (`Hit.passage`, `--explain`).

The aggregations follow Dai & Callan (2019), "Deeper Text Understanding for IR with Contextual
Neural Language Modeling" (SIGIR), section 3: FirstP, MaxP and SumP, which score every passage of
a candidate document (they re-rank the first stage's top documents) and aggregate. Over an index
built without passages `aggregate` is accepted and has no effect (each document is its one row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["AGGREGATIONS", "Aggregation", "PassageMap"]


@dataclass(frozen=True)
class Aggregation:
    """One way to score a document from its passages. `score(scores) -> (document score, position
    of the passage shown)`, `scores` float [P] of the passages it reads, in passage order;
    `first_only`: it reads only passage 0 (the others are not scored)."""

    name: str
    score: Callable[[np.ndarray], tuple[float, int]]
    first_only: bool
    description: str


def _maxp(scores: np.ndarray) -> tuple[float, int]:
    """MaxP (Dai & Callan 2019): the best passage's score; shown: that passage."""
    i = int(np.argmax(scores))
    return float(scores[i]), i


def _firstp(scores: np.ndarray) -> tuple[float, int]:
    """FirstP (Dai & Callan 2019): the first passage's score (what truncation gives, scored alone)."""
    return float(scores[0]), 0


def _sump(scores: np.ndarray) -> tuple[float, int]:
    """SumP (Dai & Callan 2019): the sum of every passage's score (favours long documents with
    many matching passages); shown: the best passage."""
    return float(np.sum(scores, dtype=np.float64)), int(np.argmax(scores))


AGGREGATIONS: dict[str, Aggregation] = {a.name: a for a in (
    Aggregation("maxp", _maxp, False, "the best passage's score (Dai & Callan 2019)"),
    Aggregation("firstp", _firstp, True, "the first passage's score (Dai & Callan 2019)"),
    Aggregation("sump", _sump, False, "the sum of the passages' scores (Dai & Callan 2019)"),
)}


class PassageMap:
    """Rows <-> documents of a passage index, from the stored `passage` column (int32 [N], N store
    rows): `doc_of[row]` the document's ordinal (0..num_docs-1), `first[d]` its first row; the rows
    of document d are first[d] .. first[d+1]-1 (a document's passages are consecutive rows)."""

    def __init__(self, passage: np.ndarray, char_start: np.ndarray, char_end: np.ndarray):
        self.passage = np.asarray(passage, dtype=np.int32)
        self.char_start, self.char_end = np.asarray(char_start), np.asarray(char_end)
        starts = self.passage == 0
        self.doc_of = np.cumsum(starts, dtype=np.int64) - 1
        self.first = np.append(np.flatnonzero(starts), len(self.passage)).astype(np.int64)

    @property
    def num_docs(self) -> int:
        return len(self.first) - 1

    def rows(self, doc: int, first_only: bool = False) -> np.ndarray:
        """The rows of document ordinal `doc` (int64 [P]; [1]: its first passage only)."""
        a = int(self.first[doc])
        return np.arange(a, a + 1 if first_only else int(self.first[doc + 1]), dtype=np.int64)

    def span(self, row: int) -> tuple[int, int, int]:
        """(passage number, char_start, char_end) of `row` in its document's text."""
        return int(self.passage[row]), int(self.char_start[row]), int(self.char_end[row])

    def documents(self, rows: np.ndarray, scores: np.ndarray, depth: int,
                  skip: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first `depth` distinct documents of a ranked passage list (rows [n] with first-stage
        scores [n]; -1 padding ignored), skipping document ordinal `skip` -> (document ordinals
        [m], their first-stage score = best retrieved passage's [m], that passage's row [m]),
        m <= depth, in first-appearance order."""
        keep = rows >= 0
        rows, scores = rows[keep], scores[keep]
        best: dict[int, int] = {}  # document -> position of its best retrieved passage (insertion: first seen)
        for i, d in enumerate(self.doc_of[rows].tolist()):
            if d == skip:
                continue
            j = best.get(d)
            if j is None:
                if len(best) == depth:
                    continue  # only passages of documents already in are still looked at
                best[d] = i
            elif scores[i] > scores[j]:
                best[d] = i
        at = np.fromiter(best.values(), np.int64, len(best))
        return (np.fromiter(best.keys(), np.int64, len(best)), scores[at].astype(np.float32), rows[at].astype(np.int64))

    def aggregate(self, how: Aggregation, docs: np.ndarray, rows: np.ndarray,
                  scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per document of `docs` [m]: (aggregated score [m], row of the passage shown [m]), from
        `scores` [n] of `rows` [n] = the concatenation of `self.rows(d, how.first_only)` over docs."""
        out, shown = np.empty(len(docs), np.float32), np.empty(len(docs), np.int64)
        at = 0
        for j, d in enumerate(docs):
            mine = self.rows(int(d), how.first_only)
            assert np.array_equal(rows[at:at + len(mine)], mine)
            out[j], i = how.score(scores[at:at + len(mine)])
            shown[j] = mine[i]
            at += len(mine)
        return out, shown
