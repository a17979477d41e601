"""Reading an index: manifest, codec, random access to states by document row, texts, verify."""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import zarr

from mice_index.codec import Codec, Parts, codec_from_params
from mice_index.errors import IndexError_
from mice_index.store import layout as L
from mice_index.store.manifest import index_info, read_manifest, verify_shards  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

_MISSING = np.uint64(2**64 - 1)


def load_codec(root: Path, manifest: dict[str, Any]) -> Codec:
    arrays = {}
    for name in manifest["codec"].get("arrays", []):
        path = Path(root) / L.CODEC_DIR / f"{name}.npy"
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path}: cannot read codec parameters ({exc})") from None
    return codec_from_params(manifest["codec"]["config"], arrays)


class _Column:
    """One codec column of one build shard: zarr array read through memory maps of its zarr shard
    files when they are laid out contiguously (always, as written by ShardWriter), else via zarr."""

    def __init__(self, arr: zarr.Array, path: Path):
        self.arr, self.path = arr, path
        self.n, self.width = arr.shape
        self.dtype = np.dtype(arr.dtype)
        self.maps: list[np.ndarray] | None = None
        try:
            self.maps = self._map()
        except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:
            log.debug("%s: not memory-mappable (%s); reading through zarr", path, exc)

    def _map(self) -> list[np.ndarray]:
        meta = L.read_json(self.path / "zarr.json", "zarr array metadata")
        (sh,) = meta["codecs"]
        assert sh["name"] == "sharding_indexed" and sh["configuration"]["index_location"] == "end"
        inner = sh["configuration"]["codecs"]
        assert len(inner) == 1 and inner[0]["name"] == "bytes"
        assert self.dtype.itemsize == 1 or inner[0]["configuration"]["endian"] == "little"
        shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        chunk_rows = sh["configuration"]["chunk_shape"][0]
        chunk_bytes = chunk_rows * self.width * self.dtype.itemsize
        per_shard = shard_rows // chunk_rows
        maps = []
        for s in range(-(-self.n // shard_rows)):
            f = self.path / "c" / str(s) / "0"
            raw = np.memmap(f, dtype=np.uint8, mode="r")
            index = np.frombuffer(raw[-(16 * per_shard + 4):-4].tobytes(), dtype="<u8").reshape(per_shard, 2)
            used = -(-min(shard_rows, self.n - s * shard_rows) // chunk_rows)
            assert (index[:used, 0] == np.arange(used, dtype=np.uint64) * chunk_bytes).all()
            assert (index[:used, 1] == chunk_bytes).all()
            maps.append(raw[: used * chunk_bytes].view(self.dtype).reshape(used * chunk_rows, self.width))
        self.shard_rows = shard_rows
        return maps

    def read(self, ranges: list[tuple[int, int]]) -> np.ndarray:
        """Rows [a, b) of every range, concatenated."""
        if not ranges:
            return np.zeros((0, self.width), self.dtype)
        if self.maps is None:
            return np.concatenate([self.arr[a:b] for a, b in ranges])
        out, S = [], self.shard_rows
        for a, b in ranges:
            while a < b:
                s = a // S
                e = min(b, (s + 1) * S)
                out.append(self.maps[s][a - s * S: e - s * S])
                a = e
        return np.concatenate(out) if len(out) > 1 else np.array(out[0])


class _Shard:
    def __init__(self, root: Path, info: dict[str, Any], columns: list[str]):
        self.dir = root / L.SHARDS_DIR / info["name"]
        self.start, self.num_docs = info["start_row"], info["num_docs"]
        self._names = columns

    @cached_property
    def group(self) -> zarr.Group:
        try:
            return zarr.open_group(str(self.dir / L.STATES), mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises several types for a broken store
            raise IndexError_(f"{self.dir / L.STATES}: cannot open zarr group ({exc})") from None

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.asarray(self.group["offsets"][:], dtype=np.int64)

    @cached_property
    def columns(self) -> dict[str, _Column]:
        return {k: _Column(self.group[k], self.dir / L.STATES / k) for k in self._names}

    def table(self, columns: list[str]):
        path = self.dir / L.DOCS
        try:
            # ParquetFile reads the file directly; read_table goes through pyarrow.dataset, whose
            # import pulls in pandas (a large share of a cold `search --query`)
            return pq.ParquetFile(path, memory_map=True).read(columns=columns)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
            raise IndexError_(f"{path}: cannot read document table ({exc})") from None


class IndexReader:
    """Random access to a built index by document row (0..num_docs-1, corpus order)."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root, self.manifest = Path(root), manifest
        self.codec: Codec = load_codec(self.root, manifest)
        cols = list(self.codec.columns())
        self._shards = [_Shard(self.root, s, cols) for s in manifest["shards"]]
        self._starts = [s.start for s in self._shards]
        self._tables: OrderedDict[int, Any] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path, allow_incomplete: bool = False) -> IndexReader:
        manifest = read_manifest(Path(path))
        if not manifest.get("complete") and not allow_incomplete:
            raise IndexError_(f"{path}: index is incomplete (its build was interrupted or failed); "
                              "re-run the same `mice-index build` command to finish it")
        return cls(Path(path), manifest)

    # -- basic properties --
    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self._shards)

    @property
    def num_tokens(self) -> int:
        return int(sum(s["num_tokens"] for s in self.manifest["shards"]))

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["model"]["hidden_size"])

    @property
    def bm25_path(self) -> Path:
        return self.root / L.BM25_DIR

    @property
    def dense_path(self) -> Path | None:
        return self.root / L.DENSE_DIR if (self.root / L.DENSE_DIR).is_dir() else None

    # -- rows <-> ids --
    def _locate(self, rows) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_docs):
            bad = rows[(rows < 0) | (rows >= self.num_docs)][0]
            raise IndexError_(f"{self.root}: row {int(bad)} out of range (index has {self.num_docs} documents)")
        shard = np.searchsorted(np.asarray(self._starts), rows, side="right") - 1
        return shard, rows - np.asarray(self._starts, dtype=np.int64)[shard]

    @cached_property
    def doc_ids(self) -> list[str]:
        ids: list[str] = []
        for s in self._shards:
            ids.extend(s.table(["doc_id"]).column("doc_id").to_pylist())
        return ids

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.doc_ids)}

    def doc_id(self, row: int) -> str:
        self._locate([row])
        return self.doc_ids[int(row)]

    def row_of(self, doc_id: str) -> int:
        try:
            return self._row_of[doc_id]
        except KeyError:
            raise IndexError_(f"{self.root}: no document with id {doc_id!r}") from None

    # -- states --
    def get_encoded(self, rows) -> list[Parts]:
        """Raw codec columns per row (in the order given): [{column: [T_i, width]}]."""
        shard, local = self._locate(rows)
        out: list[Parts | None] = [None] * shard.size
        for s in np.unique(shard):
            sh = self._shards[int(s)]
            pos = np.nonzero(shard == s)[0]
            pos = pos[np.argsort(local[pos], kind="stable")]  # read in storage order
            off = sh.offsets
            ranges = [(int(off[r]), int(off[r + 1])) for r in local[pos]]
            data = {k: c.read(ranges) for k, c in sh.columns.items()}
            bounds = np.cumsum([0] + [b - a for a, b in ranges])
            for j, p in enumerate(pos):
                out[p] = {k: v[bounds[j]: bounds[j + 1]] for k, v in data.items()}
        return out  # type: ignore[return-value]

    def get_states(self, rows) -> list[np.ndarray]:
        """Decoded float32 layer-ℓ* states [T_i, D] per row (in the order given)."""
        parts = self.get_encoded(rows)
        if not parts:
            return []
        cat = self.codec.decode_torch({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}).numpy()
        bounds = np.cumsum([0] + [next(iter(p.values())).shape[0] for p in parts])
        return [cat[bounds[i]: bounds[i + 1]] for i in range(len(parts))]

    def lengths(self, rows) -> np.ndarray:
        shard, local = self._locate(rows)
        return np.array([int(np.diff(self._shards[s].offsets[l: l + 2])[0]) for s, l in zip(shard, local)],
                        dtype=np.int64)

    def dense_vectors(self, rows=None) -> np.ndarray | None:
        """Stored dense vectors [n, Dd] (all rows by default); None without a dense model."""
        if not self.manifest.get("dense"):
            return None
        mats = [np.load(s.dir / L.DENSE, mmap_mode="r") for s in self._shards]
        if rows is None:
            return np.concatenate(mats) if mats else None
        shard, local = self._locate(rows)
        return np.stack([mats[s][l] for s, l in zip(shard, local)]).astype(np.float32)

    # -- texts --
    def _table(self, s: int):
        if s not in self._tables:
            self._tables[s] = self._shards[s].table(["doc_id", "title", "text"])
            if len(self._tables) > 8:
                self._tables.popitem(last=False)
        self._tables.move_to_end(s)
        return self._tables[s]

    def texts(self, rows) -> list[tuple[str, str]]:
        """(title, text) per row."""
        shard, local = self._locate(rows)
        out = []
        for s, l in zip(shard, local):
            t = self._table(int(s))
            out.append((t.column("title")[int(l)].as_py(), t.column("text")[int(l)].as_py()))
        return out

    def iter_texts(self, title_sep: str = " "):
        """Every document's title + text in row order (streams shard tables; for BM25)."""
        for s in self._shards:
            t = s.table(["title", "text"])
            for title, text in zip(t.column("title").to_pylist(), t.column("text").to_pylist()):
                yield f"{title}{title_sep}{text}" if title else text

    # -- integrity --
    def verify(self) -> None:
        """Recompute every shard file's sha256; IndexError_ naming the first mismatching file."""
        verify_shards(self.root, self.manifest)
