"""Dense candidate generator: a faiss inner-product index over L2-normalised embeddings.

Kinds: ``flat`` (exact, IndexFlatIP), ``hnsw`` (IndexHNSWFlat, METRIC_INNER_PRODUCT) and ``ivf``
(IndexIVFFlat with a flat IP quantiser). Embeddings arrive in batches through
:class:`DenseIndexBuilder` (the encoder produces them in the same pass as the MICE states).

IVF training choice: the builder spools every batch to a temporary raw float32 file and, in
``finish()``, memory-maps it, trains k-means on an evenly spaced sample of at most
``256 * nlist`` rows, then adds all rows in chunks. Spooling (rather than training on the first
chunk) keeps the sample representative of the whole corpus (corpora are often sorted by source
or date) and lets ``nlist`` default to ``4 * sqrt(N)`` with the true N; the cost is one extra
temporary copy of the embeddings on disk (N * D * 4 bytes), deleted afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import faiss
import numpy as np

from mice_index.candidates.base import PAD_SCORE, Candidates, check_k, read_meta, write_meta
from mice_index.errors import IndexError_, SearchError

logger = logging.getLogger(__name__)

DenseKind = Literal["flat", "hnsw", "ivf"]
INDEX_FILE = "dense.faiss"
ADD_CHUNK = 65536
# IO_FLAG_MMAP_IFC maps the codes of IndexFlatCodes (flat, and the HNSW storage);
# IO_FLAG_MMAP maps IVF inverted lists. The two cannot be combined for IVF.
_MMAP_FLAGS = {"flat": faiss.IO_FLAG_MMAP_IFC, "hnsw": faiss.IO_FLAG_MMAP_IFC, "ivf": faiss.IO_FLAG_MMAP}


@dataclass(frozen=True)
class DenseConfig:
    kind: DenseKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64  # raised to k at search time when k is larger
    ivf_nlist: int | None = None  # None -> auto_nlist(N): round(4 * sqrt(N)), capped at N // 39
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in DenseKind.__args__:
            raise SearchError(f"dense kind must be one of {DenseKind.__args__}, got {self.kind!r}")
        for field in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "nprobe"):
            if getattr(self, field) < 1:
                raise SearchError(f"dense {field} must be >= 1, got {getattr(self, field)}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise SearchError(f"dense ivf_nlist must be >= 1 or None, got {self.ivf_nlist}")


def auto_nlist(num_docs: int) -> int:
    """4 * sqrt(N) lists, but at most N // 39 (faiss wants >= 39 training points per centroid;
    the cap only bites below ~24k documents)."""
    return max(1, min(num_docs // 39, round(4 * math.sqrt(num_docs))))


def _as_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise SearchError(f"{what}: expected a [n, {dim or 'D'}] matrix, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SearchError(f"{what}: contains NaN or infinite values")
    return x


class DenseIndexBuilder:
    """Streaming builder: ``add(batch)`` any number of times, then ``finish()``."""

    def __init__(self, dim: int, config: DenseConfig = DenseConfig(), tmp_dir: str | Path | None = None) -> None:
        if dim < 1:
            raise SearchError(f"dense dim must be >= 1, got {dim}")
        self.dim, self.config, self.num_docs = dim, config, 0
        self._index: faiss.Index | None = None
        self._spool = None
        if config.kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif config.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = config.hnsw_ef_construction
        else:
            self._spool = tempfile.NamedTemporaryFile(prefix="mice-ivf-", suffix=".f32", dir=tmp_dir, delete=False)

    def add(self, batch: np.ndarray) -> None:
        batch = _as_matrix(batch, self.dim, "dense embeddings")
        norms = np.linalg.norm(batch, axis=1)
        if batch.shape[0] and np.abs(norms - 1).max() > 1e-3:
            logger.warning("dense: embeddings are not L2-normalised (norms %.3f..%.3f)", norms.min(), norms.max())
        if self._spool is not None:
            self._spool.write(batch.tobytes())
        else:
            self._index.add(batch)
        self.num_docs += batch.shape[0]

    def finish(self) -> DenseIndex:
        if self.num_docs == 0:
            self.close()
            raise IndexError_("dense: cannot build an index without embeddings")
        if self._spool is not None:
            try:
                self._spool.flush()
                self._index = self._train_ivf()
            finally:
                self.close()
        return DenseIndex(self._index, self.config)

    def _train_ivf(self) -> faiss.Index:
        n, cfg = self.num_docs, self.config
        data = np.memmap(self._spool.name, dtype=np.float32, mode="r", shape=(n, self.dim))
        nlist = min(cfg.ivf_nlist or auto_nlist(n), n)
        sample_rows = np.linspace(0, n - 1, num=min(n, 256 * nlist)).astype(np.int64)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        logger.info("dense ivf: training %d lists on %d of %d vectors", nlist, sample_rows.size, n)
        index.train(np.ascontiguousarray(data[sample_rows]))
        for start in range(0, n, ADD_CHUNK):
            index.add(np.ascontiguousarray(data[start : start + ADD_CHUNK]))
        index.nprobe = cfg.nprobe
        del data
        return index

    def close(self) -> None:
        """Delete the IVF spool file (finish() does this itself)."""
        if self._spool is not None:
            self._spool.close()
            if os.path.exists(self._spool.name):
                os.unlink(self._spool.name)


class DenseIndex:
    """Faiss inner-product index over corpus rows 0..N-1; search() takes query embeddings."""

    name: ClassVar[str] = "dense"

    def __init__(self, index: faiss.Index, config: DenseConfig) -> None:
        self.index = index
        self.config = config
        if config.kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = config.nprobe

    @property
    def num_docs(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls, embeddings: np.ndarray, config: DenseConfig = DenseConfig(), tmp_dir: str | Path | None = None
    ) -> DenseIndex:
        """One-shot build from an in-memory (or memory-mapped) [N, D] float32 matrix."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise SearchError(f"dense embeddings: expected a [N, D] matrix, got shape {embeddings.shape}")
        builder = DenseIndexBuilder(embeddings.shape[1], config, tmp_dir=tmp_dir)
        for start in range(0, embeddings.shape[0], ADD_CHUNK):
            builder.add(embeddings[start : start + ADD_CHUNK])
        return builder.finish()

    def search(self, queries: np.ndarray, k: int) -> Candidates:
        queries = _as_matrix(queries, self.dim, "dense query embeddings")
        k = check_k(k, self.num_docs)
        if self.config.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.config.hnsw_ef_search, k)
        scores, rows = self.index.search(queries, k)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows >= 0, scores, PAD_SCORE).astype(np.float32, copy=False)
        return Candidates(rows, scores)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        meta = {"name": self.name, "config": asdict(self.config), "num_docs": self.num_docs, "dim": self.dim}
        write_meta(directory, meta)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> DenseIndex:
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
        return cls(index, config)
