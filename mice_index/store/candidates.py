"""Candidate indexes (BM25, dense) derived from what the store holds: the live rows' stored texts
and stored dense vectors. Nothing is re-encoded, so an index derived after any sequence of `add`s
and `delete`s equals the one a fresh build of the same documents writes:

- BM25 is re-indexed from the live rows' title + text in row order: the same N, average length,
  idf and term ids as a fresh build, hence the same scores (bm25s's, bit for bit).
- dense `flat` / `hnsw` are rebuilt from the live rows' stored vectors (flat: exact, equal to a
  fresh build's); `ivf` / `ivfpq` keep the trained coarse quantizer and PQ codebooks of the
  previous index (faiss `reset()` empties the lists) and add the live vectors again, so their
  recall vs flat, measured again here, can drift as the corpus drifts (stated in the manifest).

Each index is built over the live rows only and saves its ordinal -> store-row map
(candidates/base.py ROWS_FILE) when rows are deleted; searches return store rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

from mice_index.candidates import BM25Index, DenseIndex, StoredVectors
from mice_index.candidates.base import read_meta, save_rows_map
from mice_index.candidates.bm25 import BM25Config
from mice_index.errors import os_errors
from mice_index.store import layout as L
from mice_index.store.manifest import Candidates

log = logging.getLogger(__name__)

__all__ = ["derive_candidates"]


def _live_texts(reader, deleted: np.ndarray | None):
    texts = reader.iter_texts()
    if deleted is None:
        yield from texts
        return
    for gone, text in zip(deleted.tolist(), texts):
        if not gone:
            yield text


def _live_vectors(reader, rows_map: np.ndarray | None) -> StoredVectors:
    """The live rows' stored dense vectors: the shards' files as they are (nothing deleted), else
    a float32 [num_live, Dd] copy of the live rows (memory: 4 * Dd bytes per live document)."""
    paths = [s.dir / L.DENSE for s in reader._shards]
    if rows_map is None:
        return StoredVectors.open(paths, mmap=False)
    parts, start = [], 0
    for s, p in zip(reader._shards, paths):
        local = rows_map[(rows_map >= s.start) & (rows_map < s.start + s.num_docs)] - s.start
        if local.size:
            parts.append(np.asarray(np.load(p, mmap_mode="r")[local], dtype=np.float32))
        start += s.num_docs
    return StoredVectors.of(np.concatenate(parts))


def _commit(root: Path, folder: str, write) -> None:
    tmp = root / (L.TMP_PREFIX + folder)
    L.remove(tmp)
    with os_errors(tmp, f"writing the {folder} index"):
        write(tmp)
    L.commit_dir(tmp, root / folder)


def derive_candidates(root: Path, reader, previous: Candidates, names: dict[str, str]) -> Candidates:
    """Build the candidate indexes of `reader`'s commit (its live rows) into root/names["bm25"] and
    root/names["dense"] (each written to a `.tmp-` folder, then renamed) -> the manifest's
    "candidates" entry. `previous`: the candidates entry of the commit this one follows (which
    indexes exist, BM25 parameters, the dense kind and its trained quantizer are kept)."""
    root = Path(root)
    rows_map = None if reader.deleted is None else reader.live_rows()
    n = reader.num_live
    out = {"bm25": None, "dense": None, "dense_index": None}
    if previous.bm25:
        old = root / previous.bm25
        config = BM25Config(**read_meta(old, BM25Index.name)["config"])

        def write_bm25(tmp: Path) -> None:
            BM25Index.build_into(tmp, _live_texts(reader, reader.deleted), config, num_docs=n)
            save_rows_map(tmp, rows_map)

        log.info("BM25 over %d live documents", n)
        _commit(root, names["bm25"], write_bm25)
        out["bm25"] = names["bm25"]
    if previous.dense:
        old = DenseIndex.load(root / previous.dense, mmap=False)
        vectors = _live_vectors(reader, rows_map)
        cfg = old.config
        if cfg.kind in ("ivf", "ivfpq"):  # keep the trained quantizer / codebooks; add the live vectors
            index = old.index
            index.reset()
            for chunk in vectors.chunks(1 << 16):
                index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            built = DenseIndex(index, cfg, vectors=vectors if cfg.kind == "ivfpq" else None)
        else:
            built = DenseIndex.build(vectors, cfg)
        recall = built.recall_vs_flat(vectors)

        def write_dense(tmp: Path) -> None:
            built.save(tmp)
            save_rows_map(tmp, rows_map)

        _commit(root, names["dense"], write_dense)
        out["dense"] = names["dense"]
        out["dense_index"] = {**built.describe(), **recall}
        log.info("dense index %s over %d live documents: recall@100 vs flat %.4f", cfg.kind, n,
                 recall["recall_at_100"])
    files = {k: v for name in (out["bm25"], out["dense"]) if name for k, v in L.crc32c_table(root, name).items()}
    return Candidates(bm25=out["bm25"], dense=out["dense"], dense_kind=previous.dense_kind,
                      dense_nprobe=previous.dense_nprobe, dense_index=out["dense_index"], files=files)
