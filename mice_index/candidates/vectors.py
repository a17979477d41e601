"""Stored dense vectors as one read-only [N, D] float32 matrix over several memory-mapped parts.

An index keeps its document vectors in one ``dense.npy`` per build shard. :class:`StoredVectors`
strings those files together, in order, without loading them: the dense index builder reads them
in fixed-size chunks (bounded memory) and the ``ivfpq`` index re-scores its candidates against
them at search time (a few hundred rows per query, read through the page cache).

Bulk reads (``chunks``, ``take`` of many rows) of file-backed parts use plain reads into a fresh
buffer rather than the memory map: pages touched through a map stay in the process's resident
set (counted by its peak RSS) until unmapped, and the kernel maps whole folios around each touched
row (measured: 50 rows of a 150 MB set added 83 MB of RSS), so one pass over 1M x 384 vectors
through the map would add 1.5 GB to the build's RSS; read, they only pass through the page cache.
``open(paths, mmap=False)`` reads every row that way (``take``: one ``readinto`` per run of
consecutive rows), for builds; searches use the map (faster per row; its RSS is file-backed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mice_index.errors import IndexError_, SearchError

BULK_ROWS = 4096  # take() of more rows than this reads sequentially instead of through the map
BULK_CHUNK = 16384


class StoredVectors:
    """Rows 0..N-1 of ``parts`` concatenated (each part a float32 [n_i, D] array, usually an
    ``np.memmap``); ``paths`` (one per part) when the parts are files, else None."""

    def __init__(self, parts: Sequence[np.ndarray], paths: Sequence[Path] | None = None, mmap: bool = True) -> None:
        if not parts:
            raise SearchError("stored vectors: no parts given")
        dims = {p.shape[1] if p.ndim == 2 else None for p in parts}
        if len(dims) != 1 or None in dims:
            raise SearchError(f"stored vectors: every part must be a [n, D] matrix of one D, got shapes "
                              f"{sorted({p.shape for p in parts})}")
        if any(p.dtype != np.float32 for p in parts):
            raise SearchError("stored vectors: parts must be float32")
        self._parts = list(parts)
        self.paths = [Path(p) for p in paths] if paths is not None else None
        self.mmap = mmap  # False: take() reads rows with file reads instead of through the map
        # (file, byte offset of row 0) of C-ordered memory-mapped parts, read with np.fromfile in bulk
        self._files = [(p.filename, p.offset) if isinstance(p, np.memmap) and p.filename and p.flags.c_contiguous
                       else None for p in self._parts]
        self._starts = np.concatenate([[0], np.cumsum([p.shape[0] for p in parts])]).astype(np.int64)

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike], mmap: bool = True) -> StoredVectors:
        """Memory-map the .npy files `paths` (read-only, in order; only their headers are read
        here); with `mmap` False, rows are then read with file reads (see the module docstring).
        IndexError_ naming a file that cannot be read."""
        parts = []
        for path in paths:
            try:
                parts.append(np.load(path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError, EOFError) as exc:
                raise IndexError_(f"{path}: cannot read stored dense vectors ({str(exc).splitlines()[0]})") from None
        return cls(parts, [Path(p) for p in paths], mmap=mmap)

    @classmethod
    def of(cls, vectors: np.ndarray | StoredVectors) -> StoredVectors:
        """`vectors` itself, or a one-part view of an in-memory / memory-mapped [N, D] matrix."""
        if isinstance(vectors, StoredVectors):
            return vectors
        x = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if x.ndim != 2:
            raise SearchError(f"dense embeddings: expected a [N, D] matrix, got shape {x.shape}")
        return cls([x if x.dtype == np.float32 else x.astype(np.float32)])

    @property
    def num_docs(self) -> int:
        return int(self._starts[-1])

    @property
    def dim(self) -> int:
        return int(self._parts[0].shape[1])

    @property
    def part_rows(self) -> list[int]:
        return [int(p.shape[0]) for p in self._parts]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] copy of `rows` (any order, repeats allowed; all in 0..N-1).
        More than BULK_ROWS rows are gathered in one sequential pass of `chunks` instead."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        if not rows.size:
            return out
        if rows.size > BULK_ROWS and any(self._files):
            order = np.argsort(rows, kind="stable")
            srt = rows[order]
            start = 0
            for chunk in self.chunks(BULK_CHUNK):
                lo, hi = np.searchsorted(srt, [start, start + chunk.shape[0]])
                out[order[lo:hi]] = chunk[srt[lo:hi] - start]
                start += chunk.shape[0]
            return out
        if len(self._parts) == 1 and (self.mmap or self._files[0] is None):
            out[:] = self._parts[0][rows]
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        part = np.searchsorted(self._starts, srt, side="right") - 1
        bounds = np.flatnonzero(np.diff(part)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [srt.size]])):
            p = int(part[lo])
            local = srt[lo:hi] - self._starts[p]
            if self.mmap or self._files[p] is None:
                out[order[lo:hi]] = self._parts[p][local]
            else:
                out[order[lo:hi]] = self._read_rows(self._files[p], local)
        return out

    def _read_rows(self, file: tuple[str, int], local: np.ndarray) -> np.ndarray:
        """Rows `local` (sorted) of one file, one read per run of consecutive rows."""
        buf = np.empty((local.size, self.dim), dtype=np.float32)
        row_bytes = self.dim * 4
        cuts = np.flatnonzero(np.diff(local) != 1) + 1
        try:
            with open(file[0], "rb", buffering=0) as fh:
                for i, j in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [local.size]])):
                    fh.seek(file[1] + int(local[i]) * row_bytes)
                    if fh.readinto(memoryview(buf[i:j]).cast("B")) != (j - i) * row_bytes:
                        raise IndexError_(f"{file[0]}: stored dense vectors are truncated (changed while in use?)")
        except OSError as exc:
            raise IndexError_(f"{file[0]}: cannot read stored dense vectors ({exc})") from None
        return buf

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive C-contiguous float32 [size, D] blocks (the last one: the rest), crossing part
        boundaries: a view of a part where one part holds the block, else a copy (memory: ~1 block)."""
        pending: list[np.ndarray] = []
        have = 0
        for part, file in zip(self._parts, self._files):
            start = 0
            while start < part.shape[0]:
                piece = part[start : start + size - have] if file is None else self._read(part, file, start, size - have)
                pending.append(piece)
                have += piece.shape[0]
                start += piece.shape[0]
                if have == size:
                    yield np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])
                    pending, have = [], 0
        if have:
            yield np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])

    def _read(self, part: np.ndarray, file: tuple[str, int], start: int, rows: int) -> np.ndarray:
        rows = min(rows, part.shape[0] - start)
        row_bytes = self.dim * 4
        try:
            x = np.fromfile(file[0], dtype=np.float32, count=rows * self.dim, offset=file[1] + start * row_bytes)
        except OSError as exc:
            raise IndexError_(f"{file[0]}: cannot read stored dense vectors ({exc})") from None
        if x.size != rows * self.dim:
            raise IndexError_(f"{file[0]}: stored dense vectors are truncated (the file changed while in use?)")
        return x.reshape(rows, self.dim)
