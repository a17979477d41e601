"""Dense candidate generator: a faiss inner-product index over L2-normalised embeddings.

Kinds (``DenseConfig.kind``):

- ``flat``: exact (IndexFlatIP). Search scans all N vectors: ~0.065 ms per 1,000 documents and
  query on one core here (BENCHMARKS.md, "Dense index at scale"), so ~65 ms at 1M.
- ``hnsw``: IndexHNSWFlat (graph + all vectors in memory while building).
- ``ivf``: IndexIVFFlat (all vectors in the inverted lists, in memory while building).
- ``ivfpq``: the memory-bounded kind for large corpora. IVF with 4-bit fast-scan product-quantiser
  codes (``IVF{nlist},PQ{m}x4fs``: m/2 bytes + an 8-byte id per vector, 56 B at D=384), trained
  on an evenly spaced sample of at most ``train_max_rows`` stored vectors and filled chunk by
  chunk, so build memory does not grow with N beyond the codes. Search takes the top
  ``k * refine_factor`` approximate candidates from ``nprobe`` lists and re-scores them exactly
  against the stored float32 vectors (:class:`StoredVectors`, memory-mapped), so the scores it
  returns are exact inner products. The index does not copy the vectors: its metadata names the
  files it was built from (relative paths; in an index, the build shards' ``dense.npy``), or, when
  it was built from an in-memory matrix, ``save`` writes them once as ``vectors.npy``.
- ``auto``: ``flat`` up to ``flat_max_docs`` documents (default :data:`AUTO_FLAT_MAX_DOCS`), else
  ``ivfpq``. Resolved at build time; the saved config holds the concrete kind and parameters.

:meth:`DenseIndex.recall_vs_flat` measures recall@100 of a built index against an exact scan.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import faiss
import numpy as np

from mice_index.candidates.base import (PAD_ROW, PAD_SCORE, Candidates, check_allowed, check_k, load_rows_map, map_rows,
                                        read_meta, to_ordinals, write_meta)
from mice_index.candidates.faiss_gpu import search_index, train_on_gpu
from mice_index.candidates.vectors import BULK_ROWS, StoredVectors
from mice_index.errors import IndexError_, SearchError, StorageError

logger = logging.getLogger(__name__)

DenseKind = Literal["auto", "flat", "hnsw", "ivf", "ivfpq"]
INDEX_FILE = "dense.faiss"
VECTORS_FILE = "vectors.npy"  # ivfpq built from an in-memory matrix: its own copy of the vectors
ADD_CHUNK = 16384  # rows per read / faiss add (24 MiB at D=384)
# auto: flat up to this many documents. Flat costs ~0.065 ms per 1,000 documents per query on one
# core (3 ms at 50k, 65 ms at 1M; BENCHMARKS.md "Dense index at scale"); ivfpq: 0.3-1.6 ms.
AUTO_FLAT_MAX_DOCS = 50_000
TRAIN_MAX_ROWS = 65_536  # ivfpq training sample cap: 96 MiB of float32 at D=384, whatever N is
IVFPQ_NPROBE = 32
IVFPQ_MIN_DOCS = 256  # below this, PQ training has too few points (and flat costs nothing)
RECALL_QUERIES = 200
# a filtered search of an approximate kind (hnsw / ivf / ivfpq) scores the allowed rows exactly when
# there are at most this many (one block of vectors), else it searches the index with an ID selector,
# widened by the filter's selectivity (nprobe / efSearch ÷ allowed fraction, so about as many
# allowed vectors are visited as unfiltered), and re-does exactly any query that came back short
# (BENCHMARKS.md → Filters)
EXACT_FILTER_ROWS = 4096
# IO_FLAG_MMAP_IFC maps the codes of IndexFlatCodes (flat, and the HNSW storage);
# IO_FLAG_MMAP maps IVF inverted lists. The two cannot be combined for IVF.
_MMAP_FLAGS = {"flat": faiss.IO_FLAG_MMAP_IFC, "hnsw": faiss.IO_FLAG_MMAP_IFC, "ivf": faiss.IO_FLAG_MMAP,
               "ivfpq": faiss.IO_FLAG_MMAP}


@dataclass(frozen=True)
class DenseConfig:
    """Which faiss index to build and how to search it (see the module docstring for the kinds).

    None fields are chosen at build time by :meth:`resolved` from N and D, and saved explicitly."""

    kind: DenseKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64  # raised to k at search time when k is larger
    ivf_nlist: int | None = None  # None -> ivf: auto_nlist(N); ivfpq: also at most sample rows // 39
    nprobe: int | None = None  # lists probed per query; None -> ivf 16, ivfpq IVFPQ_NPROBE
    pq_m: int | None = None  # ivfpq: 4-bit sub-quantisers (m/2 bytes per vector); None -> D/4
    refine_factor: int = 4  # ivfpq: exact re-scoring of the top k * refine_factor approximate hits
    flat_max_docs: int | None = None  # auto: flat up to this many documents; None -> AUTO_FLAT_MAX_DOCS
    train_max_rows: int = TRAIN_MAX_ROWS  # ivfpq: training sample cap (evenly spaced stored rows)

    def __post_init__(self) -> None:
        if self.kind not in DenseKind.__args__:
            raise SearchError(f"dense kind must be one of {', '.join(DenseKind.__args__)}; got {self.kind!r}")
        for field in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "refine_factor", "train_max_rows"):
            if getattr(self, field) < 1:
                raise SearchError(f"dense {field} must be >= 1, got {getattr(self, field)}")
        for field in ("ivf_nlist", "nprobe", "pq_m"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise SearchError(f"dense {field} must be >= 1 (or unset), got {getattr(self, field)}")
        if self.flat_max_docs is not None and self.flat_max_docs < 0:
            raise SearchError(f"dense flat_max_docs must be >= 0 (or unset), got {self.flat_max_docs}")

    def resolved(self, num_docs: int, dim: int) -> DenseConfig:
        """This config with ``auto`` and every None parameter the chosen kind uses made concrete
        for an index of `num_docs` vectors of `dim` dimensions. SearchError if `dim` does not
        split into ``pq_m`` sub-vectors."""
        kind = self.kind
        if kind == "auto":
            limit = AUTO_FLAT_MAX_DOCS if self.flat_max_docs is None else self.flat_max_docs
            kind = "flat" if num_docs <= limit else "ivfpq"
        if kind == "ivf":
            return replace(self, kind=kind, ivf_nlist=min(self.ivf_nlist or auto_nlist(num_docs), num_docs),
                           nprobe=self.nprobe or 16)
        if kind == "ivfpq":
            if num_docs < IVFPQ_MIN_DOCS:
                raise SearchError(f"dense kind ivfpq needs at least {IVFPQ_MIN_DOCS} documents, got {num_docs}; "
                                  "use flat (exact, and fast at this size) or auto")
            sample = min(num_docs, self.train_max_rows)
            nlist = min(self.ivf_nlist or min(auto_nlist(num_docs), max(1, sample // 39)), sample)
            pq_m = self.pq_m or _default_pq_m(dim)
            if dim % pq_m:
                raise SearchError(f"dense ivfpq: pq_m={pq_m} does not divide the dimension {dim}")
            return replace(self, kind=kind, ivf_nlist=nlist, nprobe=self.nprobe or IVFPQ_NPROBE, pq_m=pq_m)
        return replace(self, kind=kind)


def auto_nlist(num_docs: int) -> int:
    """4 * sqrt(N) lists, but at most N // 39 (faiss wants >= 39 training points per centroid;
    the cap only bites below ~24k documents)."""
    return max(1, min(num_docs // 39, round(4 * math.sqrt(num_docs))))


def _default_pq_m(dim: int) -> int:
    """The largest divisor of `dim` that is at most dim / 4 (96 at D=384: 48-byte codes)."""
    return next((m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0), 1)


def _as_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise SearchError(f"{what}: expected a [n, {dim or 'D'}] matrix, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SearchError(f"{what}: contains NaN or infinite values")
    return x


def _warn_if_not_unit(batch: np.ndarray) -> None:
    norms = np.linalg.norm(batch, axis=1)
    if batch.shape[0] and np.abs(norms - 1).max() > 1e-3:
        logger.warning("dense: embeddings are not L2-normalised (norms %.3f..%.3f)", norms.min(), norms.max())


def _build(source: StoredVectors, cfg: DenseConfig) -> DenseIndex:
    """Build a resolved-`cfg` index from `source`, reading it in ADD_CHUNK-row chunks."""
    n, d = source.num_docs, source.dim
    chunks = (_as_matrix(c, d, "dense embeddings") for c in source.chunks(ADD_CHUNK))
    if cfg.kind in ("flat", "hnsw"):
        index = _build_empty(cfg, d)
        for c in chunks:
            _warn_if_not_unit(c)
            index.add(c)
        return DenseIndex(index, cfg)
    if cfg.kind == "ivf":  # as before: sample up to 256 rows per list (not capped by train_max_rows)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cfg.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, 256 * cfg.ivf_nlist)
    else:
        index = faiss.index_factory(d, f"IVF{cfg.ivf_nlist},PQ{cfg.pq_m}x4fs", faiss.METRIC_INNER_PRODUCT)
        sample = min(n, cfg.train_max_rows)
    rows = np.linspace(0, n - 1, num=sample).astype(np.int64)  # evenly spaced: corpora are often sorted
    gpu = train_on_gpu(index)
    logger.info("dense %s: training %d lists on %d of %d vectors%s", cfg.kind, cfg.ivf_nlist, rows.size, n,
                " (k-means on the GPU)" if gpu else "")
    index.train(_as_matrix(source.take(rows), d, "dense embeddings"))
    for c in chunks:
        _warn_if_not_unit(c)
        index.add(c)
    return DenseIndex(index, cfg, vectors=source if cfg.kind == "ivfpq" else None)


class DenseIndexBuilder:
    """Streaming builder: ``add(batch)`` any number of times, then ``finish()``.

    ``flat``/``hnsw`` add batches to the index directly. ``ivf``, ``ivfpq`` and ``auto`` need the
    whole corpus (training sample, N) first: batches are spooled to a temporary raw float32 file
    (N * D * 4 bytes on disk) that ``finish()`` memory-maps and deletes. An ``ivfpq`` index from
    ``finish()`` keeps its training vectors in memory (a copy of the spool) for re-scoring; a
    caller whose vectors are already in .npy files should call
    ``DenseIndex.build(StoredVectors.open(paths), config)`` instead (no spool, no copy)."""

    def __init__(self, dim: int, config: DenseConfig = DenseConfig(), tmp_dir: str | Path | None = None) -> None:
        if dim < 1:
            raise SearchError(f"dense dim must be >= 1, got {dim}")
        self.dim, self.config, self.num_docs = dim, config, 0
        self._index: faiss.Index | None = None
        self._spool = None
        if config.kind in ("flat", "hnsw"):
            self._index = _build_empty(config, dim)
        else:
            self._spool = tempfile.NamedTemporaryFile(prefix="mice-dense-", suffix=".f32", dir=tmp_dir, delete=False)

    def add(self, batch: np.ndarray) -> None:
        batch = _as_matrix(batch, self.dim, "dense embeddings")
        _warn_if_not_unit(batch)
        if self._spool is not None:
            self._spool.write(batch.tobytes())
        else:
            self._index.add(batch)
        self.num_docs += batch.shape[0]

    def finish(self) -> DenseIndex:
        if self.num_docs == 0:
            self.close()
            raise IndexError_("dense: cannot build an index without embeddings")
        if self._spool is None:
            return DenseIndex(self._index, self.config)
        try:
            self._spool.flush()
            data = np.memmap(self._spool.name, dtype=np.float32, mode="r", shape=(self.num_docs, self.dim))
            cfg = self.config.resolved(self.num_docs, self.dim)
            index = _build(StoredVectors.of(data), cfg)
            if index.vectors is not None:  # ivfpq: the spool goes away, keep an in-memory copy
                index.vectors = StoredVectors.of(np.array(data))
            del data
            return index
        finally:
            self.close()

    def close(self) -> None:
        """Delete the spool file (finish() does this itself)."""
        if self._spool is not None:
            self._spool.close()
            if os.path.exists(self._spool.name):
                os.unlink(self._spool.name)


def _build_empty(cfg: DenseConfig, dim: int) -> faiss.Index:
    if cfg.kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    return index


FEW_QUERIES = 8  # below this many queries a search runs on one OpenMP thread


@contextmanager
def _threads(n: int | None):
    """faiss's OpenMP threads set to `n` for the block (None: unchanged). A few queries gain
    nothing from threads and lose a lot to their start-up on busy cores (one flat query over 1M
    vectors: 70 ms on 1 thread, 127 ms on 2, BENCHMARKS.md, Dense index at scale)."""
    before = faiss.omp_get_max_threads()
    if n is None or n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class DenseIndex:
    """Faiss inner-product index over corpus rows 0..N-1; search() takes query embeddings.

    ``vectors`` (:class:`StoredVectors`, [N, D]) is required by the ``ivfpq`` kind, which re-scores
    its candidates against them, and unused by the others."""

    name: ClassVar[str] = "dense"

    def __init__(self, index: faiss.Index, config: DenseConfig, vectors: StoredVectors | None = None) -> None:
        if config.kind == "auto":
            raise SearchError("dense: kind 'auto' must be resolved before an index exists (DenseConfig.resolved)")
        self.index = index
        self.config = config
        self.vectors = vectors
        self._searcher = None  # `index`, or its GPU copy (faiss-gpu), made at the first search
        self.rows_map: np.ndarray | None = None  # ordinal -> store row (candidates/base.py ROWS_FILE)
        if config.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(index).nprobe = config.nprobe
        if vectors is not None and (vectors.num_docs, vectors.dim) != (self.num_docs, self.dim):
            raise SearchError(f"dense: stored vectors are {vectors.num_docs}x{vectors.dim}, the index "
                              f"{self.num_docs}x{self.dim}")

    @property
    def num_docs(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(cls, embeddings: np.ndarray | StoredVectors, config: DenseConfig = DenseConfig(),
              tmp_dir: str | Path | None = None) -> DenseIndex:
        """One-shot build from an [N, D] float32 matrix (in memory or memory-mapped) or from
        :class:`StoredVectors` (e.g. per-shard .npy files), read in chunks of ADD_CHUNK rows.
        ``auto`` is resolved here (see :meth:`DenseConfig.resolved`). `tmp_dir` is unused (kept
        for callers of the spooling builder)."""
        source = StoredVectors.of(embeddings)
        if source.num_docs == 0:
            raise IndexError_("dense: cannot build an index without embeddings")
        return _build(source, config.resolved(source.num_docs, source.dim))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Candidates:
        """Top-k rows [Q, k] by inner product with `queries` [Q, D]. `allowed` (bool [N], store
        rows): the top-k of the allowed rows only, min(k, allowed rows) per query, never fewer:
        flat applies a faiss ID selector (exact); hnsw / ivf / ivfpq scan the allowed rows exactly
        when there are few (EXACT_FILTER_ROWS), else search with the selector (nprobe / efSearch
        widened by 1 / the allowed fraction) and score a query exactly over the allowed rows
        whenever the approximate search returned fewer. An index built over a subset of the store
        rows (after deletions) maps its ordinals to store rows (`rows_map`; `allowed` translated)."""
        return map_rows(self._search(queries, k, to_ordinals(allowed, self.rows_map)), self.rows_map)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Candidates:
        """`search` over this index's ordinals (no row map)."""
        queries = _as_matrix(queries, self.dim, "dense query embeddings")
        k = check_k(k, self.num_docs)
        allowed = check_allowed(allowed, self.num_docs)
        if allowed is not None:
            with _threads(1 if queries.shape[0] < FEW_QUERIES else None):
                return self._search_allowed(queries, k, allowed)
        if self.config.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.config.hnsw_ef_search, k)
        with _threads(1 if queries.shape[0] < FEW_QUERIES else None):
            if self.config.kind == "ivfpq":
                return self._search_refined(queries, k)
            if self._searcher is None:
                self._searcher = search_index(self.index, self.config.kind)
            scores, rows = self._searcher.search(queries, k)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows >= 0, scores, PAD_SCORE).astype(np.float32, copy=False)
        return Candidates(rows, scores)

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> Candidates:
        rows = np.flatnonzero(allowed)
        want = min(k, rows.size)
        if want == 0:
            return Candidates.empty(queries.shape[0], k)
        if self.config.kind != "flat" and rows.size <= EXACT_FILTER_ROWS:
            return self._exact(queries, k, rows)
        bits = np.packbits(allowed, bitorder="little")  # kept alive while faiss reads it
        sel = faiss.IDSelectorBitmap(self.num_docs, faiss.swig_ptr(bits))
        c = self.config
        widen = self.num_docs / rows.size  # 1 / the allowed fraction
        if c.kind == "hnsw":
            ef = min(self.num_docs, math.ceil(max(c.hnsw_ef_search, k) * widen))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        elif c.kind in ("ivf", "ivfpq"):
            nlist = faiss.extract_index_ivf(self.index).nlist
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(nlist, math.ceil(c.nprobe * widen)))
        else:
            params = faiss.SearchParameters(sel=sel)
        if c.kind == "ivfpq":
            out = self._search_refined(queries, k, params)
        else:  # the CPU index: faiss's GPU indexes take no ID selector
            scores, found = self.index.search(queries, k, params=params)
            found = found.astype(np.int64, copy=False)
            out = Candidates(found, np.where(found >= 0, scores, PAD_SCORE).astype(np.float32, copy=False))
        short = np.flatnonzero((out.rows >= 0).sum(axis=1) < want)
        if short.size:  # an approximate search that came back short: those queries, exactly
            exact = self._exact(queries[short], k, rows)
            out.rows[short], out.scores[short] = exact.rows, exact.scores
        del bits
        return out

    def _exact(self, queries: np.ndarray, k: int, rows: np.ndarray) -> Candidates:
        """The exact top-k of `rows` (sorted store rows) per query: inner products with their
        vectors (the stored vectors for ivfpq, the index's own for the other kinds), in blocks of
        BULK_ROWS rows (StoredVectors.take reads those through its map: cost ~ the allowed rows,
        not the corpus); ties broken by lower row, as flat."""
        out = Candidates.empty(queries.shape[0], k)
        best_s = np.full((queries.shape[0], 0), -np.inf, np.float32)
        best_r = np.zeros((queries.shape[0], 0), np.int64)
        for a in range(0, rows.size, BULK_ROWS):
            block = rows[a : a + BULK_ROWS]
            s = queries @ self._vectors_of(block).T  # [Q, len(block)]
            best_s = np.concatenate([best_s, s.astype(np.float32)], axis=1)
            best_r = np.concatenate([best_r, np.broadcast_to(block, s.shape)], axis=1)
            if best_s.shape[1] > k:
                keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s, best_r = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_r, keep, 1)
        order = np.lexsort((best_r, -best_s), axis=1) if best_s.shape[1] else best_r
        best_s, best_r = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)
        n = best_s.shape[1]
        out.rows[:, :n], out.scores[:, :n] = best_r, best_s
        return out

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] vectors of `rows`: the stored ones (ivfpq), else the index's."""
        if self.vectors is not None:
            return self.vectors.take(rows)
        if self.config.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()
        return self.index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))

    def _search_refined(self, queries: np.ndarray, k: int, params=None) -> Candidates:
        """Top k * refine_factor by PQ codes, then exact inner products with the stored vectors."""
        if self.vectors is None:
            raise SearchError("dense ivfpq index: no stored vectors to re-score against (open it with "
                              "DenseIndex.load(directory), or pass vectors=StoredVectors.open(...))")
        _, cand = self.index.search(queries, min(self.num_docs, k * self.config.refine_factor), params=params)
        out = Candidates.empty(queries.shape[0], k)
        for i, (q, c) in enumerate(zip(queries, cand)):
            c = c[c >= 0]
            if not c.size:
                continue
            s = self.vectors.take(c) @ q  # [len(c)] exact scores
            top = np.argsort(-s, kind="stable")[:k]
            out.rows[i, : top.size], out.scores[i, : top.size] = c[top], s[top]
        return out

    def recall_vs_flat(self, vectors: np.ndarray | StoredVectors, num_queries: int = RECALL_QUERIES, k: int = 100,
                       seed: int = 0) -> dict[str, Any]:
        """recall@k of this index against an exact scan of `vectors` (the [N, D] vectors it was
        built from), with `num_queries` stored vectors (seeded random rows) as queries: an
        in-distribution estimate (each query's own row is in both lists). The exact top-k is a
        chunked scan (faiss.contrib.exhaustive_search.knn_ground_truth: memory ~ one chunk).
        ``flat`` is exact by construction and is not measured (1.0). Returns a JSON-able dict:
        recall_at_100 (mean |approx ∩ exact| / k), queries, k, query_source."""
        from faiss.contrib.exhaustive_search import knn_ground_truth

        source = StoredVectors.of(vectors)
        if source.paths is not None and source.mmap:  # read, do not map: see candidates/vectors.py
            source = StoredVectors.open(source.paths, mmap=False)
        k = min(k, self.num_docs)
        base = {"k": k, "query_source": "stored document vectors (in-distribution)"}
        if self.config.kind == "flat":
            return {"recall_at_100": 1.0, "queries": 0, **base, "exact": True}
        if (source.num_docs, source.dim) != (self.num_docs, self.dim):
            raise SearchError(f"dense recall: vectors are {source.num_docs}x{source.dim}, the index "
                              f"{self.num_docs}x{self.dim}")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.num_docs, size=min(num_queries, self.num_docs), replace=False))
        xq = source.take(rows)
        _, exact = knn_ground_truth(xq, source.chunks(ADD_CHUNK), k, metric_type=faiss.METRIC_INNER_PRODUCT)
        approx = self._unmapped()._search(xq, k).rows
        hits = [np.intersect1d(a[a != PAD_ROW], e[e >= 0]).size for a, e in zip(approx, exact)]
        return {"recall_at_100": round(float(np.mean(hits)) / k, 4), "queries": int(rows.size), **base,
                "exact": False}

    def _unmapped(self) -> DenseIndex:
        """This index re-scoring with file reads instead of the map (Q * k * refine_factor rows
        read through a map would stay in the build's resident set; candidates/vectors.py)."""
        if self.vectors is None or self.vectors.paths is None or not self.vectors.mmap:
            return self
        return DenseIndex(self.index, self.config, StoredVectors.open(self.vectors.paths, mmap=False))

    def describe(self) -> dict[str, Any]:
        """The kind and the parameters it uses (for manifests and `mice-index info`)."""
        c = self.config
        keys = {"flat": (), "hnsw": ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"),
                "ivf": ("ivf_nlist", "nprobe"), "ivfpq": ("ivf_nlist", "nprobe", "pq_m", "refine_factor")}
        out = {"kind": c.kind, **{k: getattr(c, k) for k in keys[c.kind]}}
        if c.kind == "ivfpq":
            out["code_bytes"] = c.pq_m // 2 + c.pq_m % 2
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / INDEX_FILE
        try:  # through Python's file: faiss's own FILE* writer only prints a failed fclose (a full disk)
            with open(path, "wb") as fh:
                writer = faiss.PyCallbackIOWriter(fh.write)
                faiss.write_index(self.index, writer)
                del writer
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename is None:  # a failed write or flush names no file: name this one
                exc.filename = str(path)
            raise
        except RuntimeError as exc:  # faiss reports a failed fwrite (disk full, quota, I/O) as a RuntimeError
            raise StorageError(f"{path}: writing the faiss index failed ({_faiss_reason(exc)}); free some space "
                               "or fix the permissions there, then re-run (files already written are kept)") from None
        meta = {"name": self.name, "config": asdict(self.config), "num_docs": self.num_docs, "dim": self.dim}
        if self.config.kind == "ivfpq":
            meta["vectors"] = self._save_vectors(directory)
        write_meta(directory, meta)

    def _save_vectors(self, directory: Path) -> dict[str, Any]:
        """Where load() finds the stored vectors: the files they came from, relative to
        `directory` (so renaming the index folder keeps them valid), else a copy written here."""
        v = self.vectors
        if v is None:
            raise SearchError("dense ivfpq index: no stored vectors to save with it")
        if v.paths is None:
            out = np.lib.format.open_memmap(directory / VECTORS_FILE, mode="w+", dtype=np.float32,
                                            shape=(v.num_docs, v.dim))
            start = 0
            for c in v.chunks(ADD_CHUNK):
                out[start : start + c.shape[0]] = c
                start += c.shape[0]
            out.flush()
            del out
            return {"files": [VECTORS_FILE], "rows": [v.num_docs]}
        return {"files": [os.path.relpath(os.path.abspath(p), os.path.abspath(directory)) for p in v.paths],
                "rows": v.part_rows}

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True, vectors: StoredVectors | None = None) -> DenseIndex:
        """Open a saved index, memory-mapped unless `mmap` is False. ``ivfpq`` also opens its
        stored vectors (the files its metadata names, unless `vectors` is given; with `mmap`
        False it reads their rows with file reads). IndexError_ naming a missing or bad file."""
        directory = Path(directory)
        meta = read_meta(directory, cls.name)
        config = DenseConfig(**meta["config"])
        path = directory / INDEX_FILE
        if not path.is_file():
            raise IndexError_(f"{path}: missing faiss index file")
        try:
            index = faiss.read_index(str(path), _MMAP_FLAGS[config.kind] if mmap else 0)
        except RuntimeError as exc:
            raise IndexError_(f"{path}: cannot read faiss index ({str(exc).splitlines()[0]})") from None
        if index.ntotal != meta["num_docs"] or index.d != meta["dim"]:
            raise IndexError_(f"{path}: faiss index is {index.ntotal}x{index.d}, metadata says "
                              f"{meta['num_docs']}x{meta['dim']}")
        if config.kind == "ivfpq" and vectors is None:
            spec = meta.get("vectors") or {}
            files = [directory / f for f in spec.get("files", [])]
            vectors = StoredVectors.open(files, mmap=mmap) if files else None
            if vectors is None or vectors.part_rows != spec.get("rows") or vectors.dim != meta["dim"]:
                raise IndexError_(f"{directory}: the stored vectors of the dense ivfpq index do not match its "
                                  f"metadata ({len(spec.get('files', []))} files, rows {spec.get('rows')})")
        try:
            out = cls(index, config, vectors if config.kind == "ivfpq" else None)
        except SearchError as exc:
            raise IndexError_(f"{directory}: {exc}") from None
        out.rows_map = load_rows_map(directory, out.num_docs)
        return out


def _faiss_reason(exc: RuntimeError) -> str:
    """The OS reason in a faiss I/O error ("... write error in <file>: 0 != 1 (No space left on
    device)"), else its last line, cut short."""
    import re

    text = str(exc)
    m = re.search(r"\(([^()]*)\)\s*$", text.strip())
    return m.group(1) if m else text.strip().splitlines()[-1][:160]
