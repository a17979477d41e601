"""`mice-index upgrade`: rewrite an index's manifest in the current format (format 2 -> 3).

Format 3 changed only the manifest (typed, with optional fields / passages / tombstones entries
that a format-2 index does not use); shard files, codec and candidate indexes stay as they are.
The new manifest is committed atomically under the index's write lock, and keeps its generation
id, so a searcher or server that has the index open keeps working.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from mice_index.errors import IndexError_
from mice_index.store import layout as L
from mice_index.store.lock import IndexLock
from mice_index.store.manifest import read_manifest, verify_shards, write_manifest

log = logging.getLogger(__name__)

__all__ = ["UpgradeResult", "upgrade_index"]


@dataclass(frozen=True)
class UpgradeResult:
    path: Path
    from_version: int  # format version found on disk
    to_version: int  # format version on disk now (L.FORMAT_VERSION)
    changed: bool  # False: the index was already current (nothing written)


def upgrade_index(index: str | Path) -> UpgradeResult:
    """Rewrite the manifest of the index in `index` as format `L.FORMAT_VERSION` (idempotent: an
    index already in that format is left untouched, `changed=False`).

    Raises IndexError_ (one line, nothing written) when `index` is not an index, its manifest or a
    shard's metadata is damaged (shard.json checksums, file sizes), it is format 1 (its state
    chunks carry no crc32c: rebuild it), and IndexBusyError when another process holds its lock."""
    root = Path(index)
    read_manifest(root)  # not an index / damaged manifest: a clear error before locking
    with IndexLock(root, holder="another process (a build, a merge or an upgrade) is writing this index"):
        m = read_manifest(root)  # again under the lock: what was there before may have changed
        if m.format_version == L.FORMAT_VERSION:
            return UpgradeResult(root, m.format_version, m.format_version, False)
        if m.format_version < L.CHUNK_CRC_VERSION:
            raise IndexError_(f"{root}: index format {m.format_version} cannot be upgraded in place (its stored "
                              f"states carry no per-chunk checksums); rebuild it: {L.rebuild_command(root)}")
        verify_shards(root, m, deep=False)  # shard.json checksums + file sizes: a damaged index stays as it is
        write_manifest(root, replace(m, format_version=L.FORMAT_VERSION))
        log.info("%s: manifest upgraded from format %d to %d", root, m.format_version, L.FORMAT_VERSION)
        return UpgradeResult(root, m.format_version, L.FORMAT_VERSION, True)
