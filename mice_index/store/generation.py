"""Which build of an index a reader holds: a reader keeps one generation, or says it cannot.

`build` writes a random `generation` id into a new manifest; `build --overwrite` swaps in a new
folder holding a new id. A reader opens some files once (BM25 arrays, the faiss index, memory
maps of the states) and others by path when it first needs them (Parquet row groups of ids and
texts, a shard's zarr group, the dense vectors). After a swap those by-path opens would read the
*new* index while the rest is the old one: wrong documents with the right scores. So every
by-path open is followed by `Generation.check()` (one `stat` of the manifest, and a re-read of it
only when that changed): still the generation the reader was opened on, or IndexChanged. Checking
*after* the open is what makes it sound: a file opened before the swap is from the old index, and
a swap before the open changes the manifest before the check.

Who holds a reader picks up a new generation only as a whole: `Searcher.reopened()`; the server
reloads between requests (never within one) and re-runs a request that met IndexChanged once.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from mice_index.errors import IndexError_
from mice_index.store import layout as L

if TYPE_CHECKING:
    from mice_index.store.manifest import Manifest

__all__ = ["Generation", "IndexChanged", "new_generation"]


class IndexChanged(IndexError_):
    """The index folder was replaced (`build --overwrite`) while a reader of its previous build
    was using it; re-open it (`Searcher.reopened()`) and repeat the request."""


def new_generation() -> str:
    """A fresh generation id for a new manifest (random, 32 hex digits)."""
    return uuid.uuid4().hex


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class Generation:
    """The generation of the index in `root` that a reader was opened on (its manifest's
    `generation` id; for an index written before ids existed, the manifest file's identity)."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root, self.id = Path(root), manifest.generation
        self._stamp = _stamp(self.root / L.MANIFEST)

    def is_current(self) -> bool:
        """True while `root` still holds the generation this reader was opened on."""
        stamp = _stamp(self.root / L.MANIFEST)
        if stamp is None:
            return False  # folder being swapped, or removed
        if stamp == self._stamp:
            return True
        if self.id is None:
            return False
        try:
            now = json.loads((self.root / L.MANIFEST).read_bytes()).get("generation")
        except (OSError, ValueError, AttributeError):
            return False
        if now == self.id:  # the same build's manifest rewritten in place
            self._stamp = stamp
            return True
        return False

    def check(self) -> None:
        """IndexChanged unless `root` still holds this generation (call it after opening a file)."""
        if not self.is_current():
            raise IndexChanged(f"{self.root}: the index was replaced (build --overwrite) while it was being "
                               "read; open it again and repeat the search")
