"""Shared types for first-stage candidate generators.

Documents are addressed by integer *row* (0..N-1, corpus order); the store maps rows <-> doc ids.
Every generator returns a :class:`Candidates` pair of ``[Q, k]`` arrays, best first, where
missing results are padded with row ``-1`` and score ``-inf``. A row made only of padding means
"this generator found nothing for that query" (e.g. a BM25 query made only of stopwords), so the
caller can fall back to another generator (see :func:`mice_index.candidates.hybrid.fuse`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from mice_index.errors import IndexError_, SearchError

PAD_ROW = -1
PAD_SCORE = np.float32(-np.inf)
META_FILE = "candidates.json"
# ordinal -> store row (int64 [n]) of an index built over a subset of the store rows (the live rows
# after `delete`, mice_index/update.py); absent: ordinal i is store row i
ROWS_FILE = "rows.npy"


class Candidates(NamedTuple):
    """Top-k results for a batch of queries, best first.

    rows:   int64   [Q, k], corpus rows, ``-1`` for padding (always at the end of a row).
    scores: float32 [Q, k], generator scores, ``-inf`` for padding.
    """

    rows: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, num_queries: int, k: int) -> Candidates:
        """All-padding result of shape [num_queries, k]."""
        return cls(
            np.full((num_queries, k), PAD_ROW, dtype=np.int64),
            np.full((num_queries, k), PAD_SCORE, dtype=np.float32),
        )

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask [Q, k] of real (non-padding) entries."""
        return self.rows >= 0

    @property
    def found(self) -> np.ndarray:
        """Boolean [Q]: False where the generator returned nothing for that query."""
        return self.valid.any(axis=1)


@runtime_checkable
class CandidateGenerator(Protocol):
    """What the retrieval pipeline needs from a first-stage generator.

    ``queries`` is generator-specific: a list of query strings for BM25, a float32 ``[Q, D]``
    matrix of L2-normalised query embeddings for dense indexes.
    """

    name: ClassVar[str]

    @property
    def num_docs(self) -> int: ...

    def search(self, queries: Any, k: int, allowed: np.ndarray | None = None) -> Candidates:
        """Top-k rows per query; `allowed` (bool [num_docs], store rows): only those rows, exact
        top-k among them (see `check_allowed`)."""

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> CandidateGenerator: ...


def check_k(k: int, num_docs: int) -> int:
    """Validate a requested depth and clamp it to the corpus size (at least 1 column)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SearchError(f"k must be a positive integer, got {k!r}")
    return max(1, min(int(k), int(num_docs)))


def check_allowed(allowed: np.ndarray | None, num_docs: int) -> np.ndarray | None:
    """`allowed` as a bool [num_docs] array (None: every row allowed). SearchError for another shape.

    A generator given `allowed` returns the exact top-k of the allowed rows (the mask is applied
    before the depth cut, never after): equal to its unfiltered search with every other row removed."""
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.shape != (num_docs,):
        raise SearchError(f"allowed must be a bool mask over the {num_docs} rows, got {allowed.dtype} "
                          f"{allowed.shape}")
    return allowed


def topk_rows(scores: np.ndarray, k: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (row, score) of one dense score vector, best first, ties broken by lower row.

    ``keep`` (bool mask) restricts candidates; the result can be shorter than k.
    """
    idx = np.flatnonzero(keep) if keep is not None else np.arange(scores.shape[0])
    if idx.size > k:
        part = np.argpartition(-scores[idx], k - 1)[:k]
        idx = idx[part]
    order = np.lexsort((idx, -scores[idx]))
    idx = idx[order]
    return idx.astype(np.int64), scores[idx].astype(np.float32)


def write_meta(directory: Path, payload: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_meta(directory: Path, expected_name: str) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise IndexError_(f"{path}: missing candidate-generator metadata (not a saved {expected_name} index?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IndexError_(f"{path}: corrupt metadata ({exc.msg} at line {exc.lineno})") from None
    if meta.get("name") != expected_name:
        raise IndexError_(f"{path}: holds a {meta.get('name')!r} index, expected {expected_name!r}")
    return meta


def save_rows_map(directory: Path, rows: np.ndarray | None) -> None:
    """Write the ordinal -> store-row map of an index built over `rows` (None: identity, no file)."""
    if rows is not None:
        np.save(Path(directory) / ROWS_FILE, np.asarray(rows, dtype=np.int64), allow_pickle=False)


def load_rows_map(directory: Path, num_docs: int) -> np.ndarray | None:
    """The ordinal -> store-row map saved with an index (None when absent: identity); IndexError_
    when it does not fit the index's `num_docs` ordinals."""
    path = Path(directory) / ROWS_FILE
    if not path.is_file():
        return None
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexError_(f"{path}: cannot read the row map ({exc})") from None
    if rows.shape != (num_docs,) or rows.dtype != np.int64 or (rows.size > 1 and (np.diff(rows) <= 0).any()):
        raise IndexError_(f"{path}: row map does not fit the index ({rows.shape} for {num_docs} documents)")
    return rows


def to_ordinals(allowed: np.ndarray | None, rows_map: np.ndarray | None) -> np.ndarray | None:
    """A bool mask over store rows as a mask over an index's ordinals (`allowed[rows_map]`);
    unchanged without a map or a mask. SearchError when the mask is not over the store rows."""
    if allowed is None or rows_map is None:
        return allowed
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.ndim != 1 or (rows_map.size and allowed.size <= rows_map[-1]):
        raise SearchError(f"allowed must be a bool mask over the store rows (more than {int(rows_map[-1])}), got "
                          f"{allowed.dtype} {allowed.shape}")
    return allowed[rows_map]


def map_rows(cands: Candidates, rows_map: np.ndarray | None) -> Candidates:
    """`cands` with ordinals replaced by store rows (padding kept); unchanged without a map. The
    map is increasing, so ties broken by lower ordinal stay broken by lower store row."""
    if rows_map is None:
        return cands
    rows = np.where(cands.rows >= 0, rows_map[np.maximum(cands.rows, 0)], PAD_ROW)
    return Candidates(rows.astype(np.int64, copy=False), cands.scores)
