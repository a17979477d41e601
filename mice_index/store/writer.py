"""Writing one build shard: codec columns into zarr (aligned whole-zarr-shard writes, bounded
memory), the document table into Parquet, dense vectors into .npy; then checksum and commit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import Crc32cCodec

from mice_index.codec import Codec
from mice_index.encoder import EncodedWindow
from mice_index.errors import os_errors
from mice_index.store import layout as L

log = logging.getLogger(__name__)

ZARR_SHARD_TOKENS = 16384  # tokens per zarr shard file (one file per column per 16k tokens)
ZARR_CHUNK_TOKENS = 64  # tokens per inner chunk (the unit of a random read and of its crc32c check)

DOC_SCHEMA = pa.schema([
    ("row", pa.int64()), ("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string()),
    ("num_tokens", pa.int32()), ("truncated", pa.bool_()),
])


def doc_schema(fields=()) -> pa.Schema:
    """The document table's schema: DOC_SCHEMA plus one nullable column per declared field
    (sources/fields.py: int64, float64, string or bool), named as the field."""
    return pa.schema([*DOC_SCHEMA, *(pa.field(f.name, f.arrow_type, nullable=True) for f in fields)])


def create_column(group: zarr.Group, name: str, dtype, width: int) -> zarr.Array:
    return group.create_array(
        name, shape=(0, width), dtype=dtype, chunks=(ZARR_CHUNK_TOKENS, width),
        shards=(ZARR_SHARD_TOKENS, width), compressors=[Crc32cCodec()], fill_value=0,  # crc32c per inner chunk
        config={"write_empty_chunks": True},  # every chunk present -> contiguous, memory-mappable
    )


class ShardWriter:
    """Accumulates consecutive windows of one build shard in `tmp`, then `commit()`s it."""

    def __init__(self, root: Path, index: int, start_row: int, codec: Codec, fields=()):
        self.index, self.start_row, self.codec = index, start_row, codec
        self.fields = tuple(fields)  # declared document fields (sources.fields.Field): extra columns
        self.schema = doc_schema(self.fields)
        self.tmp = root / L.SHARDS_DIR / (L.TMP_PREFIX + L.shard_name(index))
        self.final = root / L.SHARDS_DIR / L.shard_name(index)
        with os_errors(self.tmp, f"creating build shard {self.final.name}"):
            self._open(codec)

    def _open(self, codec: Codec) -> None:
        L.remove(self.tmp)
        self.tmp.parent.mkdir(exist_ok=True)  # not parents=True: an index folder removed meanwhile is an error
        self.tmp.mkdir()
        self.group = zarr.open_group(str(self.tmp / L.STATES), mode="w")
        self.columns = {k: create_column(self.group, k, np.dtype(dt), w) for k, (dt, w) in codec.columns().items()}
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in self.columns}
        self.pending_tokens = 0
        self.written_tokens = 0
        self.lengths: list[np.ndarray] = []
        self.dense: list[np.ndarray] = []
        self.truncated = 0
        self.empty = 0
        self.num_docs = 0
        self.docs = pq.ParquetWriter(str(self.tmp / L.DOCS), self.schema, write_page_checksum=True)

    def add(self, win: EncodedWindow) -> None:
        """Append one encoded window (the next rows of this shard)."""
        with os_errors(self.tmp, f"writing build shard {self.final.name}"):
            self._add(win)

    def _add(self, win: EncodedWindow) -> None:
        assert win.start_row == self.start_row + self.num_docs, (win.start_row, self.start_row, self.num_docs)
        parts = win.parts if win.parts is not None else self.codec.encode(win.states)
        assert parts.keys() == self.columns.keys(), (sorted(parts), sorted(self.columns))
        for k, a in parts.items():
            self.pending[k].append(a)
        self.pending_tokens += int(win.lengths.sum())
        self._flush(final=False)
        n = len(win.docs)
        self.docs.write_table(pa.table({
            "row": np.arange(win.start_row, win.start_row + n, dtype=np.int64),
            "doc_id": [d.doc_id for d in win.docs], "title": [d.title for d in win.docs],
            "text": [d.text for d in win.docs], "num_tokens": win.lengths, "truncated": win.truncated,
            # per stored row, from the document it comes from (a passage row carries its document's)
            **{f.name: [d.fields[i] if d.fields else None for d in win.docs] for i, f in enumerate(self.fields)},
        }, schema=self.schema))
        self.lengths.append(win.lengths)
        if win.dense is not None:
            self.dense.append(win.dense)
        self.truncated += int(win.truncated.sum())
        self.empty += int((win.lengths <= 2).sum())
        self.num_docs += n

    def _flush(self, final: bool) -> None:
        """Write whole zarr shards (ZARR_SHARD_TOKENS tokens) as they fill up; the rest at the end."""
        block = ZARR_SHARD_TOKENS
        while self.pending_tokens >= block or (final and self.pending_tokens):
            take = min(block, self.pending_tokens)
            for k, arr in self.columns.items():
                buf = np.concatenate(self.pending[k])
                arr.resize((self.written_tokens + take, arr.shape[1]))
                arr[self.written_tokens:] = buf[:take]
                self.pending[k] = [buf[take:]]
            self.written_tokens += take
            self.pending_tokens -= take

    def commit(self) -> dict[str, Any]:
        """Finish all files, write shard.json with checksums, rename tmp -> final (atomic)."""
        with os_errors(self.tmp, f"writing build shard {self.final.name}"):
            return self._commit()

    def _commit(self) -> dict[str, Any]:
        self._flush(final=True)
        self.docs.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        assert offsets[-1] == self.written_tokens
        for name, data in (("offsets", offsets), ("lengths", lengths)):
            a = self.group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(max(1, data.size),),
                                        compressors=[Crc32cCodec()], fill_value=0)
            a[:] = data
        if self.dense:
            np.save(self.tmp / L.DENSE, np.concatenate(self.dense).astype(np.float32))
        meta = {
            "shard": self.index, "start_row": self.start_row, "num_docs": self.num_docs,
            "num_tokens": int(self.written_tokens), "truncated_docs": self.truncated, "empty_docs": self.empty,
            "files": L.file_table(self.tmp),
        }
        (self.tmp / L.SHARD_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        L.commit_dir(self.tmp, self.final)
        log.info("committed shard %s: %d docs, %d tokens", self.final.name, self.num_docs, self.written_tokens)
        return meta

    def abort(self) -> None:
        try:
            self.docs.close()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass
        L.remove(self.tmp)
