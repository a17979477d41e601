"""Segments with tombstones: the files an update commit writes, references and garbage-collects.

The Lucene model (Lucene's `SegmentInfos` / `IndexFileDeleter`): build shards are immutable
segments; `add` writes new ones after the last store row, `delete` writes a tombstone file (the
sorted store rows deleted so far), and the manifest, written last and atomically, is the commit
point that names the segments, the tombstone file and the candidate folders of one state. Every
commit writes new files under names no earlier commit used (`<kind>-<generation>`), and keeps the
files of the commit before it (`Manifest.previous.files`) so that a reader opened on that
one keeps working until it reopens (store/generation.py). Everything else under the index folder
that a commit does not reference is garbage of a killed run or of an older commit: `collect`
removes it, under the write lock, before and after each commit.

Manifest parts (store/manifest.py; None = an index never updated): `tombstones` (Tombstones:
file "tombstones-<gen>.npy", count, sha256), `previous` (Previous: generation, files kept for its
readers), `last_op` (LastOp: "add" | "delete" | "compact", sha256 of its input).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mice_index.errors import IndexError_, os_errors
from mice_index.store import layout as L
from mice_index.store.manifest import Manifest, Tombstones

log = logging.getLogger(__name__)

__all__ = ["TOMBSTONE_PREFIX", "collect", "deleted_mask", "read_tombstones", "referenced", "write_tombstones"]

TOMBSTONE_PREFIX = "tombstones-"
# root-level names a commit may own (plus the fixed ones of a build: bm25/, dense/, codec/)
_OWNED_PREFIXES = (TOMBSTONE_PREFIX, L.BM25_DIR, L.DENSE_DIR)


def referenced(manifest: Manifest) -> set[str]:
    """Root-relative names (folders or files) that the commit `manifest` reads."""
    refs = {f"{L.SHARDS_DIR}/{s.name}" for s in manifest.shards}
    if manifest.tombstones is not None:
        refs.add(manifest.tombstones.file)
    refs.update(name for name in (manifest.candidates.bm25, manifest.candidates.dense) if name)
    return refs


def write_tombstones(root: Path, name: str, rows: np.ndarray) -> Tombstones:
    """Write the sorted deleted store rows (int64 [n]) to root/name (tmp + fsync + rename) -> the
    manifest entry."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    path, tmp = root / name, root / (L.TMP_PREFIX + name)
    with os_errors(path, "writing the tombstones"):
        with open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        L.fsync_dir(root)
    return Tombstones(file=name, count=int(rows.size), sha256=L.sha256_file(path))


def read_tombstones(root: Path, manifest: Manifest) -> np.ndarray:
    """Sorted deleted store rows (int64 [n]; empty without tombstones); IndexError_ naming the file
    when it is missing, altered or out of range."""
    entry = manifest.tombstones
    if entry is None:
        return np.zeros(0, np.int64)
    path = Path(root) / entry.file
    if not path.is_file():
        raise L.damaged(path, "tombstone file missing", Path(root))
    if L.sha256_file(path) != entry.sha256:
        raise L.damaged(path, "checksum mismatch in the tombstone file", Path(root))
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise L.damaged(path, f"cannot read the tombstone file ({exc})", Path(root)) from None
    num_rows = manifest.num_docs
    if rows.ndim != 1 or rows.size != entry.count or (rows.size and (rows[0] < 0 or rows[-1] >= num_rows)):
        raise L.damaged(path, "tombstone rows do not fit the index", Path(root))
    return rows.astype(np.int64, copy=False)


def deleted_mask(num_rows: int, rows: np.ndarray) -> np.ndarray | None:
    """bool [num_rows], True for a deleted store row; None when nothing is deleted."""
    if not len(rows):
        return None
    mask = np.zeros(num_rows, dtype=bool)
    mask[rows] = True
    return mask


def collect(root: Path, keep: set[str]) -> list[str]:
    """Remove what no commit in `keep` references: unreferenced segment folders (and `.tmp-`
    leftovers) under shards/, and unreferenced tombstone files / candidate folders / `.tmp-`
    entries at the root (the build's own names — codec/, manifest.json, .lock — are never touched).
    Returns the names removed. Call it holding the write lock."""
    removed = []
    shards = root / L.SHARDS_DIR
    if shards.is_dir():
        for entry in shards.iterdir():
            if f"{L.SHARDS_DIR}/{entry.name}" not in keep:
                removed.append(f"{L.SHARDS_DIR}/{entry.name}")
    for entry in root.iterdir():
        name = entry.name
        if name in keep or name in (L.CODEC_DIR, L.MANIFEST, L.SHARDS_DIR, ".lock"):
            continue
        if name.startswith(_OWNED_PREFIXES) or (name.startswith(L.TMP_PREFIX) and name != L.TMP_PREFIX + L.CODEC_DIR):
            removed.append(name)
    for name in removed:
        with os_errors(root / name, "removing files no commit references"):
            L.remove(root / name)
    if removed:
        log.info("%s: removed %d unreferenced file(s) of older commits or interrupted runs", root, len(removed))
    return removed


def check_rows(manifest: Manifest) -> None:
    """IndexError_ unless the manifest's segments tile the store rows 0..N-1 in order."""
    row = 0
    for s in manifest.shards:
        if s.start_row != row:
            raise IndexError_(f"segment {s.name} starts at row {s.start_row}, expected {row} (the index is damaged)")
        row += s.num_docs
