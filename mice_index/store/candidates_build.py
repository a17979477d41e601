"""Building the candidate indexes (BM25, dense) of an index whose shards are all committed.

One function for every writer: `build`, the distributed engines (`merge`, `--engine ray`) and
the segment operations (add / delete / compact) all call `build_candidates`, then commit the
manifest it returns with `store.manifest.write_manifest`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from mice_index.candidates import BM25Index, DenseConfig, DenseIndex, StoredVectors
from mice_index.errors import os_errors
from mice_index.store import layout as L
from mice_index.store.manifest import Candidates, Manifest

log = logging.getLogger(__name__)

__all__ = ["build_candidates"]


def build_candidates(root: str | Path, m: Manifest, *, bm25: bool = True,
                     dense: DenseConfig = DenseConfig(kind="auto")) -> Manifest:
    """Build INDEX/bm25 (when `bm25`) and INDEX/dense (when the manifest has dense vectors) over
    the shards of `m` unless the folder already exists (a resumed build keeps a committed one),
    each written into a tmp folder and committed by rename; return `m` with its `candidates`
    entry (folders, dense kind asked and resolved, recall@100 vs flat, crc32c of every file).
    Nothing is written to the manifest: the caller commits the returned value.
    Raises IndexError_ (damaged shards) / OSError wrapped by `os_errors` (disk full, ...)."""
    from mice_index.store.reader import IndexReader

    root = Path(root)
    reader = IndexReader(root, m)
    n = reader.num_docs
    if bm25 and not (root / L.BM25_DIR).is_dir():
        log.info("building BM25 over %d documents", n)
        tmp = root / (L.TMP_PREFIX + L.BM25_DIR)
        L.remove(tmp)
        # streamed straight into tmp, its temporary files inside tmp: memory bounded by batches
        with os_errors(tmp, "writing the BM25 index"):
            BM25Index.build_into(tmp, reader.iter_texts(), num_docs=n)
        L.commit_dir(tmp, root / L.BM25_DIR)
    dense_index = None
    if m.dense is not None:  # the shards' vectors, read in chunks (file reads, not the map): never all in memory
        vectors = StoredVectors.open([s.dir / L.DENSE for s in reader._shards], mmap=False)
        if not (root / L.DENSE_DIR).is_dir():
            tmp = root / (L.TMP_PREFIX + L.DENSE_DIR)
            L.remove(tmp)
            index = DenseIndex.build(vectors, dense)
            with os_errors(tmp, "writing the dense index"):
                index.save(tmp)
            L.commit_dir(tmp, root / L.DENSE_DIR)
        built = DenseIndex.load(root / L.DENSE_DIR)  # what searches will open
        dense_index = {**built.describe(), **built.recall_vs_flat(vectors)}
        log.info("dense index %s: recall@100 vs flat %.4f", dense_index["kind"], dense_index["recall_at_100"])
    has_dense = m.dense is not None
    return replace(m, candidates=Candidates(
        bm25=L.BM25_DIR if bm25 else None, dense=L.DENSE_DIR if has_dense else None,
        dense_kind=dense.kind if has_dense else None, dense_nprobe=dense.nprobe if has_dense else None,
        dense_index=dense_index,  # resolved kind, parameters, recall@100 vs flat
        # checked when a searcher opens them (crc32c: ~10 GB/s)
        files={k: v for name in (L.BM25_DIR, L.DENSE_DIR) if (root / name).is_dir()
               for k, v in L.crc32c_table(root, name).items()}))
