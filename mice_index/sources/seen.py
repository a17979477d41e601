"""The ids a reader has seen so far, for duplicate detection in bounded memory.

A Python set of a million id strings costs ~100 bytes per id; `SeenIds` keeps 64-bit hashes
instead: 8 bytes per id in one sorted numpy array, plus a set of the latest `CHUNK` hashes (a few
MB, merged into the array every `CHUNK` ids; a merge briefly holds 16 bytes per id). A hash hit
is only a *possible* duplicate: the caller re-checks the exact id (re-reading the source on that
error path), so a hash collision never rejects a corpus and the message names the exact first line.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 16


def id_hash(key: str) -> int:
    """64-bit hash of an id: Python's SipHash, salted per process (tables never leave the process)."""
    return hash(key)


class SeenIds:
    """`seen_before(key)`: True if key's hash was added before (possible duplicate), else adds it."""

    def __init__(self) -> None:
        self._sorted = np.empty(0, np.int64)  # [n] sorted hashes of all but the latest ids
        self._recent: set[int] = set()

    def seen_before(self, key: str) -> bool:
        h = id_hash(key)
        if h in self._recent:
            return True
        a = self._sorted
        if a.size:
            i = int(np.searchsorted(a, h))
            if i < a.size and a[i] == h:
                return True
        self._recent.add(h)
        if len(self._recent) >= CHUNK:
            new = np.fromiter(self._recent, np.int64, len(self._recent))
            new.sort()
            self._sorted = np.insert(a, np.searchsorted(a, new), new)
            self._recent = set()
        return False

    def __len__(self) -> int:
        return int(self._sorted.size) + len(self._recent)
