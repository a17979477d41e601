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

`add` / `delete` / `compact` (mice_index/update.py) commit a new manifest with a new generation id
too, but they never change a file in place: every commit writes new segment / tombstone /
candidate files and keeps the files of the commit before it (the manifest's `previous`). So a
reader of the previous generation stays valid: `is_current()` is False (reopen to see the
change), while `check()` passes as long as the index holds its generation or the one right after
it; two commits later its files may be gone and `check()` raises IndexChanged.
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
        self._kept: tuple[int, int, int, int] | None = None  # manifest stamp that still keeps our files

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

    def files_kept(self) -> bool:
        """True while the files of this generation are still in `root`: it is the current one, or
        the one right before it (an update keeps the previous commit's files; `previous`)."""
        if self.is_current():
            return True
        stamp = _stamp(self.root / L.MANIFEST)
        if stamp is None or self.id is None:
            return False
        if stamp == self._kept:
            return True
        try:
            now = json.loads((self.root / L.MANIFEST).read_bytes())
            previous = (now.get("previous") or {}).get("generation")
        except (OSError, ValueError, AttributeError):
            return False
        if previous == self.id:
            self._kept = stamp
            return True
        return False

    def check(self) -> None:
        """IndexChanged unless `root` still holds this generation's files (call it after opening a file)."""
        if not self.files_kept():
            raise IndexChanged(f"{self.root}: the index was replaced (build --overwrite) or changed twice (add / "
                               "delete / compact) while it was being read; open it again and repeat the search")
