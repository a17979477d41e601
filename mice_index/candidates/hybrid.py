"""Fusion of candidate lists (typically BM25 + dense; any number with :func:`fuse_lists`) into one.

Methods, per query, over the union of the lists (padding ignored):

- ``rrf``:    sum over lists of ``1 / (rrf_k + rank)``, rank 1-based; absent from a list -> 0.
- ``zscore``: sum of per-list z-normalised scores ``(s - mean) / std`` (mean/std over that list's
  returned entries; std 0 -> all 0). A document absent from a list gets that list's *minimum*
  z-score (it ranked below everything the list returned) -- ``missing="zero"`` (the list's mean)
  is available for comparison; see BENCHMARKS.md ("Candidate generation").
- ``minmax``: sum of per-list ``(s - min) / (max - min)`` (range 0 -> all 1); absent -> 0, which
  is the list's minimum normalised score, so both conventions coincide.

A list that is all padding for a query (e.g. BM25 on a stopword-only query) contributes nothing,
so the fused row is the other list's ranking: the fallback needs no special casing by callers.
Ties in the fused score are broken by lower row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mice_index.candidates.base import Candidates
from mice_index.errors import SearchError

FusionMethod = Literal["rrf", "zscore", "minmax"]
Missing = Literal["min", "zero"]


@dataclass(frozen=True)
class HybridConfig:
    """Default fusion (chosen from the six-collection comparison in BENCHMARKS.md)."""

    method: FusionMethod = "zscore"
    rrf_k: int = 60
    depth: int = 100  # candidates taken from each generator before fusion
    missing: Missing = "min"

    def __post_init__(self) -> None:
        if self.method not in _NORMALISERS:
            raise SearchError(f"fusion method must be one of {tuple(_NORMALISERS)}, got {self.method!r}")
        if self.missing not in ("min", "zero"):
            raise SearchError(f"fusion missing must be 'min' or 'zero', got {self.missing!r}")
        if self.rrf_k < 0 or self.depth < 1:
            raise SearchError(f"fusion needs rrf_k >= 0 and depth >= 1, got {self.rrf_k}, {self.depth}")

    def fuse(self, a: Candidates, b: Candidates, k: int) -> Candidates:
        return fuse(a, b, self.method, k, rrf_k=self.rrf_k, missing=self.missing)


def _rrf(scores: np.ndarray, rrf_k: int) -> tuple[np.ndarray, float]:
    return 1.0 / (rrf_k + np.arange(1, scores.size + 1, dtype=np.float64)), 0.0


def _zscore(scores: np.ndarray, rrf_k: int) -> tuple[np.ndarray, float]:
    std = scores.std()
    z = (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)
    return z, float(z.min())


def _minmax(scores: np.ndarray, rrf_k: int) -> tuple[np.ndarray, float]:
    lo, hi = scores.min(), scores.max()
    return ((scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)), 0.0


# each returns (normalised scores of the list, best first; value for a doc absent from the list)
_NORMALISERS = {"rrf": _rrf, "zscore": _zscore, "minmax": _minmax}


def fuse(
    a: Candidates,
    b: Candidates,
    method: FusionMethod = "zscore",
    k: int = 100,
    rrf_k: int = 60,
    missing: Missing = "min",
) -> Candidates:
    """Fuse two [Q, *] candidate lists into a [Q, k] one (padded with -1 / -inf)."""
    return fuse_lists([a, b], method, k, rrf_k, missing)


def fuse_lists(
    lists: Sequence[Candidates],
    method: FusionMethod = "zscore",
    k: int = 100,
    rrf_k: int = 60,
    missing: Missing = "min",
    weights: Sequence[float] | None = None,
) -> Candidates:
    """Fuse any number of [Q, *] candidate lists into a [Q, k] one (padded with -1 / -inf).

    Per query, each list's scores are normalised by ``method`` over that list; a document absent
    from a list gets that list's lowest normalised value (``missing="min"``) or 0; the fused score
    is the ``weights``-weighted sum (default: all 1), over the union of the lists' documents.
    Ties: lower row first. SearchError for unknown methods, mismatched query counts, k < 1 or a
    weight count other than the list count."""
    if method not in _NORMALISERS:
        raise SearchError(f"fusion method must be one of {tuple(_NORMALISERS)}, got {method!r}")
    if not lists or any(c.rows.shape[0] != lists[0].rows.shape[0] for c in lists):
        raise SearchError(f"fusion: query counts differ ({[c.rows.shape[0] for c in lists]})")
    if k < 1:
        raise SearchError(f"fusion k must be >= 1, got {k}")
    weights = [1.0] * len(lists) if weights is None else [float(w) for w in weights]
    if len(weights) != len(lists):
        raise SearchError(f"fusion: {len(weights)} weights for {len(lists)} lists")
    norm = _NORMALISERS[method]
    out = Candidates.empty(lists[0].rows.shape[0], k)
    for q in range(out.rows.shape[0]):
        parts = []
        for cand, w in zip(lists, weights):
            ok = cand.rows[q] >= 0
            rows, scores = cand.rows[q][ok], cand.scores[q][ok].astype(np.float64)
            if rows.size and w:
                values, absent = norm(scores, rrf_k)
                parts.append((rows, w * values, w * absent if missing == "min" else 0.0))
        if not parts:
            continue
        union = np.unique(np.concatenate([p[0] for p in parts]))
        fused = np.zeros(union.size)
        for rows, values, absent in parts:
            contrib = np.full(union.size, absent)
            contrib[np.searchsorted(union, rows)] = values
            fused += contrib
        order = np.lexsort((union, -fused))[:k]
        out.rows[q, : order.size] = union[order]
        out.scores[q, : order.size] = fused[order]
    return out


def interpolate(first_stage: np.ndarray, reranker: np.ndarray, alpha: float) -> np.ndarray:
    """Score interpolation of one query's candidate list (a standard re-ranking practice):
    ``alpha · z(first_stage) + (1 − alpha) · z(reranker)``, z-normalised over the list
    (std 0 -> all 0). Both arrays [N], aligned; returns float64 [N]. alpha = 0 returns the
    re-ranker's scores unchanged (pure re-ranking), alpha = 1 the first stage's z-scores."""
    if not 0.0 <= alpha <= 1.0:
        raise SearchError(f"--alpha must be in [0, 1], got {alpha}")
    reranker = np.asarray(reranker, dtype=np.float64)
    if alpha == 0.0 or reranker.size == 0:
        return reranker
    first = _zscore(np.asarray(first_stage, dtype=np.float64), 0)[0]
    return alpha * first + (1.0 - alpha) * _zscore(reranker, 0)[0]
