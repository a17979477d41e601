"""Reading an index: manifest, codec, random access to states by document row, texts, verify."""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pyarrow.parquet as pq
import zarr

from mice_index.codec import Codec, Parts
from mice_index.errors import IndexBusyError, IndexError_
from mice_index.sources import seen
from mice_index.store import layout as L
from mice_index.store.codecs import load_codec  # noqa: F401 (re-exported)
from mice_index.store.generation import Generation, IndexChanged  # noqa: F401 (re-exported)
from mice_index.store.lock import LOCK, is_locked  # noqa: F401
from mice_index.store.manifest import Manifest, ShardEntry, index_info, read_manifest, verify_shards  # noqa: F401
from mice_index.store.segments import deleted_mask, read_tombstones

log = logging.getLogger(__name__)

_MISSING = np.uint64(2**64 - 1)
# a candidate index (bm25 / dense) up to this size has its crc32c checked at every open (~10-30 ms);
# above it only file sizes, and `mice-index info --verify` checks the crc32c
CANDIDATE_CRC_BYTES = 64 << 20
GROUP_CACHE = 64  # Parquet row groups (≈ one encoded window of documents each) kept by IndexReader


def _crc32c(buf) -> bytes:
    return np.uint32(google_crc32c.value(buf)).tobytes()


class _Column:
    """One codec column of one build shard. Read through memory maps of its zarr shard files when
    they have the writer's layout (inner chunks stored contiguously, uncompressed, each followed by
    its crc32c in format 2), checking the crc32c of every chunk a read touches; other layouts are
    read through zarr (which checks the crc32c codec itself). Damage -> IndexError_ naming the file."""

    def __init__(self, arr: zarr.Array, path: Path, root: Path, shard: str):
        self.arr, self.path, self.root, self.shard = arr, path, root, shard
        self.n, self.width = arr.shape
        self.dtype = np.dtype(arr.dtype)
        self.maps: list[np.ndarray] | None = None
        self.opened = lambda: None  # the generation check after a by-path open (set by _Shard)
        self.crcs: list[np.ndarray] | None = None  # per zarr shard: [chunks] stored crc32c (format 2)
        self.chunks: list[np.ndarray] | None = None  # per zarr shard: [chunks, chunk_bytes] raw bytes
        layout = self._layout()
        if layout is None:
            log.debug("%s: not the writer's layout; reading through zarr", path)
        else:
            self._map(*layout)

    def _damaged(self, path: Path, detail: str) -> IndexError_:
        self.opened()  # a file removed by a later commit: IndexChanged, not damage
        return L.damaged(path, detail, self.root, self.shard)

    def _layout(self) -> tuple[int, int, bool, bool] | None:
        """(rows per zarr shard, rows per chunk, chunk crc?, index crc?) or None if not ours."""
        meta = L.read_json(self.path / "zarr.json", "zarr array metadata")
        try:
            (sh,) = meta["codecs"]
            conf = sh["configuration"]
            inner = [c["name"] for c in conf["codecs"]]
            index = [c["name"] for c in conf.get("index_codecs", [{"name": "bytes"}, {"name": "crc32c"}])]
            if sh["name"] != "sharding_indexed" or conf["index_location"] != "end":
                return None
            if inner not in (["bytes"], ["bytes", "crc32c"]) or index not in (["bytes"], ["bytes", "crc32c"]):
                return None
            if self.dtype.itemsize > 1 and conf["codecs"][0]["configuration"]["endian"] != "little":
                return None
            return (meta["chunk_grid"]["configuration"]["chunk_shape"][0], conf["chunk_shape"][0],
                    len(inner) == 2, len(index) == 2)
        except (KeyError, ValueError, TypeError, IndexError):
            return None

    def _map(self, shard_rows: int, chunk_rows: int, chunk_crc: bool, index_crc: bool) -> None:
        chunk_bytes = chunk_rows * self.width * self.dtype.itemsize
        rec = chunk_bytes + 4 * chunk_crc  # one stored chunk
        per_shard = shard_rows // chunk_rows
        index_bytes = 16 * per_shard + 4 * index_crc
        maps, crcs, chunks = [], [], []
        for s in range(-(-self.n // shard_rows)):
            f = self.path / "c" / str(s) / "0"
            used = -(-min(shard_rows, self.n - s * shard_rows) // chunk_rows)
            want = used * rec + index_bytes
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise self._damaged(f, "zarr shard file missing") from None
            if size != want:
                raise self._damaged(f, f"{size} bytes, expected {want} (truncated or overwritten)")
            raw = np.memmap(f, dtype=np.uint8, mode="r")
            tail = raw[size - index_bytes:]
            if index_crc and _crc32c(tail[:-4]) != tail[-4:].tobytes():
                raise self._damaged(f, "crc32c mismatch in the zarr shard index")
            index = np.frombuffer(tail[: 16 * per_shard].tobytes(), dtype="<u8").reshape(per_shard, 2)
            if not ((index[:used, 0] == np.arange(used, dtype=np.uint64) * rec).all()
                    and (index[:used, 1] == rec).all()):
                raise self._damaged(f, "the zarr shard index does not describe the stored chunks")
            stored = raw[: used * rec].reshape(used, rec)
            chunks.append(stored[:, :chunk_bytes])
            crcs.append(stored[:, chunk_bytes:].view("<u4").reshape(used) if chunk_crc else None)
            maps.append(stored[:, :chunk_bytes].view(self.dtype).reshape(used, chunk_rows, self.width))
        self.shard_rows, self.chunk_rows = shard_rows, chunk_rows
        self.maps, self.chunks = maps, chunks
        self.crcs = crcs if chunk_crc else None

    def read(self, ranges: list[tuple[int, int]], verify: bool = True) -> np.ndarray:
        """Rows [a, b) of every range, concatenated; `verify`: check each touched chunk's crc32c."""
        if not ranges:
            return np.zeros((0, self.width), self.dtype)
        out = [seg for segs in self.segments(ranges, verify) for seg in segs]
        return np.concatenate(out) if len(out) > 1 else np.array(out[0])

    def segments(self, ranges: list[tuple[int, int]], verify: bool = True) -> list[list[np.ndarray]]:
        """Per range, the arrays (memory-mapped views where possible) whose concatenation is rows
        [a, b); `verify`: check each touched chunk's crc32c first."""
        if self.maps is None:
            try:
                out = [[self.arr[a:b]] for a, b in ranges]  # zarr opens the chunk files by path
                self.opened()
                return out
            except IndexChanged:
                raise
            except Exception as exc:  # noqa: BLE001 - zarr raises ValueError / codec errors for bad bytes
                raise self._damaged(self.path, f"zarr cannot read it ({str(exc).splitlines()[0][:120]})") from None
        out, S, C = [], self.shard_rows, self.chunk_rows
        checked: set[tuple[int, int]] = set()
        for a, b in ranges:
            segs = []
            while a < b:
                s, c = a // S, (a % S) // C
                e = min(b, s * S + (c + 1) * C)  # rows of this range inside chunk (s, c)
                if verify and self.crcs is not None and (s, c) not in checked:
                    self._check(s, c)
                    checked.add((s, c))
                lo = a - s * S - c * C
                segs.append(self.maps[s][c, lo: lo + e - a])
                a = e
            out.append(segs)
        return out

    def _check(self, s: int, c: int) -> None:
        if google_crc32c.value(self.chunks[s][c]) != int(self.crcs[s][c]):
            raise self._damaged(self.path / "c" / str(s) / "0",
                                f"crc32c mismatch in chunk {c} (rows {s * self.shard_rows + c * self.chunk_rows}..)")


class _Shard:
    def __init__(self, root: Path, info: ShardEntry, columns: list[str]):
        self.root, self.name = root, info.name
        self.dir = root / L.SHARDS_DIR / info.name
        self.start, self.num_docs = info.start_row, info.num_docs
        self._names = columns
        self.opened = lambda: None  # called after each by-path open (IndexReader: its generation check)

    def damaged(self, path: Path, detail: str) -> IndexError_:
        self.opened()  # a file removed by a later commit (or a replaced index): IndexChanged, not damage
        return L.damaged(path, detail, self.root, self.name)

    @cached_property
    def group(self) -> zarr.Group:
        try:
            group = zarr.open_group(str(self.dir / L.STATES), mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises several types for a broken store
            raise self.damaged(self.dir / L.STATES, f"cannot open zarr group ({exc})") from None
        self.opened()
        return group

    def _array(self, name: str) -> zarr.Array:
        try:
            return self.group[name]
        except IndexChanged:
            raise
        except Exception as exc:  # noqa: BLE001 - KeyError for a missing array, ValueError for bad metadata
            raise self.damaged(self.dir / L.STATES / name, f"cannot open zarr array ({exc})") from None

    @cached_property
    def offsets(self) -> np.ndarray:
        path = self.dir / L.STATES / "offsets"
        try:
            off = np.asarray(self._array("offsets")[:], dtype=np.int64)
        except IndexError_:
            raise
        except Exception as exc:  # noqa: BLE001 - checksum ValueError, short reads
            raise self.damaged(path, f"cannot read document offsets ({str(exc).splitlines()[0][:120]})") from None
        if off.shape != (self.num_docs + 1,) or off[0] != 0 or (np.diff(off) < 0).any():
            raise self.damaged(path, "document offsets are inconsistent")
        return off

    @cached_property
    def columns(self) -> dict[str, _Column]:
        cols = {k: _Column(self._array(k), self.dir / L.STATES / k, self.root, self.name) for k in self._names}
        for c in cols.values():
            c.opened = self.opened
        for k, c in cols.items():
            if c.n != self.offsets[-1]:
                raise self.damaged(self.dir / L.STATES / k, f"holds {c.n} tokens, the offsets say {self.offsets[-1]}")
        self.opened()
        return cols

    def table(self, columns: list[str], group: int | None = None):
        """The document table's `columns` (all rows, or row group `group` only)."""
        path = self.dir / L.DOCS
        try:
            # ParquetFile reads the file directly; read_table goes through pyarrow.dataset, whose
            # import pulls in pandas (a large share of a cold `search --query`)
            f = pq.ParquetFile(path, memory_map=True, page_checksum_verification=True)
            self.opened()
            return f.read(columns=columns) if group is None else f.read_row_group(group, columns=columns)
        except IndexChanged:
            raise
        except FileNotFoundError:
            raise self.damaged(path, "document table missing") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
            raise self.damaged(path, f"cannot read document table ({str(exc).splitlines()[0][:120]})") from None

    @cached_property
    def group_starts(self) -> np.ndarray:
        """First local row of each Parquet row group of the document table, plus num_docs [G + 1]
        (the writer writes one row group per encoded window)."""
        path = self.dir / L.DOCS
        try:
            meta = pq.ParquetFile(path, memory_map=True).metadata
            self.opened()
        except IndexChanged:
            raise
        except FileNotFoundError:
            raise self.damaged(path, "document table missing") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
            raise self.damaged(path, f"cannot read document table ({str(exc).splitlines()[0][:120]})") from None
        starts = np.zeros(meta.num_row_groups + 1, np.int64)
        np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], out=starts[1:])
        if starts[-1] != self.num_docs:
            raise self.damaged(path, f"document table holds {starts[-1]} rows, the manifest says {self.num_docs}")
        return starts


class IndexReader:
    """Random access to a built index by store row (0..num_docs-1: build order, then the rows of
    later `add`s). Rows deleted by `delete` / `add --update` stay readable by row (their states are
    kept until `compact`), but `deleted` marks them, and `num_live`, `doc_ids`, `row_of` and
    `live_rows` skip them (store/segments.py)."""

    def __init__(self, root: Path, manifest: Manifest, writing: bool = False):
        """`writing`: a commit being written (mice_index/update.py) reads its own manifest before
        it is on disk; no generation checks then (the writer holds the lock)."""
        self.root, self.manifest = Path(root), manifest
        self.codec: Codec = load_codec(self.root, manifest)
        cols = list(self.codec.columns())
        self.generation = Generation(self.root, manifest)  # the build this reader holds
        self._shards = [_Shard(self.root, s, cols) for s in manifest.shards]
        for s in self._shards:
            if not writing:
                s.opened = self.generation.check
        self._starts = [s.start for s in self._shards]
        self.deleted_rows = read_tombstones(self.root, manifest)  # sorted int64 [n deleted]
        self.deleted = deleted_mask(self.num_docs, self.deleted_rows)  # bool [num_docs] | None
        self._groups: OrderedDict[tuple[int, int, bool], Any] = OrderedDict()  # row groups read lately
        self._id_hashes: tuple[np.ndarray, np.ndarray] | None = None  # for row_of, built on first use
        self._passage_columns: dict[str, np.ndarray] | None = None  # a passage index's, read on first use
        self.verify_chunks = True  # check each touched chunk's crc32c (False: benchmarks only)

    @classmethod
    def open(cls, path: str | Path, allow_incomplete: bool = False) -> IndexReader:
        manifest = read_manifest(Path(path))
        if not manifest.complete and not allow_incomplete:
            if is_locked(path):
                raise IndexBusyError(f"{path}: index is being built (another process holds the lock "
                                     f"{Path(path) / LOCK}); wait for that build to finish")
            raise IndexError_(f"{path}: index is incomplete (its build was interrupted or failed); "
                              "re-run the same `mice-index build` command to finish it")
        if manifest.format_version < L.CHUNK_CRC_VERSION:
            log.info("%s: index format %s has no per-chunk checksums (rebuild with --overwrite to add them)",
                     path, manifest.format_version)
        return cls(Path(path), manifest)

    # -- basic properties --
    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self._shards)

    @property
    def num_live(self) -> int:
        """Documents a search can return: store rows not deleted."""
        return self.num_docs - int(self.deleted_rows.size)

    def live_rows(self) -> np.ndarray:
        """The store rows not deleted, ascending (int64 [num_live])."""
        rows = np.arange(self.num_docs, dtype=np.int64)
        return rows if self.deleted is None else rows[~self.deleted]

    @property
    def num_tokens(self) -> int:
        return self.manifest.num_tokens

    @property
    def hidden_size(self) -> int:
        return int(self.manifest.model.hidden_size)

    @property
    def chunk_checksums(self) -> bool:
        """True if every state read checks the crc32c of the chunks it touches (format 2 layout)."""
        return all(c.crcs is not None for s in self._shards for c in s.columns.values())

    def shard_name(self, row: int) -> str:
        """Name of the build shard holding `row` (e.g. "00003")."""
        shard, _ = self._locate([row])
        return self._shards[int(shard[0])].name

    def check_states(self, rows) -> None:
        """IndexError_ naming the build shard if any of `rows`' decoded states is NaN or infinite."""
        for row, states in zip(np.asarray(rows).reshape(-1), self.get_states(rows)):
            if not np.isfinite(states).all():
                sh = self._shards[int(self._locate([row])[0][0])]
                raise sh.damaged(sh.dir / L.STATES, f"document row {int(row)} ({self.doc_id(int(row))!r}) has "
                                 "non-finite stored states")

    def check_candidates(self, name: str) -> Path:
        """The folder of candidate index `name` (bm25 / dense) after checking its files against
        the manifest: every file's size, and, when the index's files total at most
        CANDIDATE_CRC_BYTES, their crc32c too (a larger index would be read whole at every open;
        `mice-index info --verify` checks every crc32c). Indexes built before these were recorded:
        not checked."""
        folder = self.root / self.candidate_folder(name)
        files = {rel: want for rel, want in self.manifest.candidates.files.items()
                 if rel.startswith(folder.name + "/")}
        deep = sum(want["bytes"] for want in files.values()) <= CANDIDATE_CRC_BYTES
        for rel, want in files.items():
            path = self.root / rel
            if not path.is_file():
                raise L.damaged(path, f"file of the {name} index missing", self.root)
            if path.stat().st_size != want["bytes"]:
                raise L.damaged(path, f"size mismatch in the {name} index ({path.stat().st_size} bytes, "
                                f"expected {want['bytes']})", self.root)
            if deep and L.crc32c_file(path) != want["crc32c"]:
                raise L.damaged(path, f"checksum mismatch in the {name} index", self.root)
        return folder

    def candidate_folder(self, name: str) -> str:
        """The folder name of candidate index `name` (bm25 / dense) in this commit: the build's
        `bm25` / `dense`, or the `bm25-<generation>` / ... of a later update (store/segments.py)."""
        return getattr(self.manifest.candidates, name, None) or name

    @property
    def bm25_path(self) -> Path:
        return self.root / self.candidate_folder(L.BM25_DIR)

    @property
    def dense_path(self) -> Path | None:
        path = self.root / self.candidate_folder(L.DENSE_DIR)
        return path if path.is_dir() else None

    # -- rows <-> ids --
    def _locate(self, rows) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_docs):
            bad = rows[(rows < 0) | (rows >= self.num_docs)][0]
            raise IndexError_(f"{self.root}: row {int(bad)} out of range (index has {self.num_docs} documents)")
        shard = np.searchsorted(np.asarray(self._starts), rows, side="right") - 1
        return shard, rows - np.asarray(self._starts, dtype=np.int64)[shard]

    @cached_property
    def fields(self) -> tuple:
        """The document fields this index was built with (sources.fields.Field; empty: none)."""
        from mice_index.sources.fields import Field

        return tuple(Field(f.name, f.type) for f in self.manifest.settings.fields)

    def field_table(self):
        """pyarrow Table [num_docs rows] of the field columns, in row order (read from every
        shard's document table: a few bytes per document and field; the Searcher keeps it)."""
        import pyarrow as pa

        names = [f.name for f in self.fields]
        tables = [s.table(names) for s in self._shards]
        return pa.concat_tables(tables) if tables else pa.table({n: [] for n in names})

    @property
    def doc_ids(self) -> list[str]:
        """The id of every live (not deleted) row, in row order. Reads every shard's id column into
        Python strings (for tests and small tools); searching reads only the rows it needs (`doc_ids_of`)."""
        ids: list[str] = []
        for s in self._shards:
            ids.extend(s.table(["doc_id"]).column("doc_id").to_pylist())
        if self.deleted is not None:
            ids = [d for d, gone in zip(ids, self.deleted.tolist()) if not gone]
        return ids

    def _group(self, s: int, g: int, texts: bool):
        """Row group g of shard s's document table: doc_id (+ title and text when `texts`), from a
        small LRU cache (GROUP_CACHE row groups: memory independent of the corpus size)."""
        key = (s, g, texts)
        t = self._groups.get(key)
        if t is None:
            t = self._shards[s].table(["doc_id", "title", "text"] if texts else ["doc_id"], g)
            self._groups[key] = t
            if len(self._groups) > GROUP_CACHE:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return t

    def _read_rows(self, rows, texts: bool) -> list[tuple[Any, int]]:
        """(row-group table, row inside it) per row, in the order given; reads each group once."""
        shard, local = self._locate(rows)
        out, held = [], {}  # held: this call's groups (the LRU may evict them before the call ends)
        for s, l in zip(shard.tolist(), local.tolist()):
            starts = self._shards[s].group_starts
            g = int(np.searchsorted(starts, l, side="right")) - 1
            if (s, g) not in held:
                held[s, g] = self._group(s, g, texts)
            out.append((held[s, g], l - int(starts[g])))
        return out

    def doc_ids_of(self, rows) -> list[str]:
        """The ids of `rows` (in the order given), reading only the Parquet row groups holding them."""
        return [t.column("doc_id")[i].as_py() for t, i in self._read_rows(rows, texts=False)]

    def doc_id(self, row: int) -> str:
        return self.doc_ids_of([row])[0]

    def row_of(self, doc_id: str) -> int:
        """The (first live) row of `doc_id`; IndexError_ if the index has no such live document. The first call
        builds a sorted table of 64-bit id hashes (16 bytes per document: ~16 MB per million),
        reading every id once; only --remove-query and MiceReranker look rows up by id."""
        if self._id_hashes is None:
            hashes = np.empty(self.num_docs, np.int64)
            for s in self._shards:
                col = s.table(["doc_id"]).column("doc_id").to_pylist()
                hashes[s.start: s.start + len(col)] = np.fromiter(map(seen.id_hash, col), np.int64, len(col))
            order = np.argsort(hashes, kind="stable")
            if self.deleted is not None:  # a deleted row has no id any more
                order = order[~self.deleted[order]]
            self._id_hashes = (hashes[order], order)
        hashes, order = self._id_hashes
        h = seen.id_hash(doc_id)
        lo, hi = np.searchsorted(hashes, h, side="left"), np.searchsorted(hashes, h, side="right")
        for row in order[lo:hi].tolist():  # usually one row; more only for a hash collision
            if self.doc_id(row) == doc_id:
                return int(row)
        raise IndexError_(f"{self.root}: no document with id {doc_id!r}")

    # -- states --
    def _by_shard(self, rows):
        """Per build shard holding some of `rows`: (shard, positions in `rows`, token ranges
        [a, b) of those rows in the shard's columns), positions in storage order."""
        shard, local = self._locate(rows)
        for s in np.unique(shard):
            sh = self._shards[int(s)]
            pos = np.nonzero(shard == s)[0]
            pos = pos[np.argsort(local[pos], kind="stable")]  # read in storage order
            off = sh.offsets
            yield sh, pos, [(int(off[r]), int(off[r + 1])) for r in local[pos]]

    def get_encoded(self, rows) -> list[Parts]:
        """Raw codec columns per row (in the order given): [{column: [T_i, width]}]."""
        out: list[Parts | None] = [None] * len(self._locate(rows)[0])
        for sh, pos, ranges in self._by_shard(rows):
            data = {k: c.read(ranges, self.verify_chunks) for k, c in sh.columns.items()}
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

    def read_padded(self, rows, out) -> np.ndarray:
        """Decoded states of `rows` written into out[i, :T_i] (a float32 torch tensor [B, >= max
        T_i, D]; the rest of each row zeroed) without intermediate copies where the codec allows
        it (fp16 / fp32: one converting copy from the memory-mapped chunks, by torch, whose
        float16 conversion is vectorised) -> lengths int64 [B]."""
        import warnings

        import torch

        lengths = np.zeros(len(self._locate(rows)[0]), dtype=np.int64)
        direct = self.codec.name in ("fp16", "fp32")  # one "values" column holding the states
        for sh, pos, ranges in self._by_shard(rows):
            lengths[pos] = [b - a for a, b in ranges]
            if direct:
                with warnings.catch_warnings():  # read-only memory maps: torch only reads them here
                    warnings.simplefilter("ignore", UserWarning)
                    for p, segs in zip(pos, sh.columns["values"].segments(ranges, self.verify_chunks)):
                        t = 0
                        for seg in segs:
                            out[p, t: t + len(seg)].copy_(torch.from_numpy(seg))
                            t += len(seg)
            else:
                data = {k: c.read(ranges, self.verify_chunks) for k, c in sh.columns.items()}
                states = self.codec.decode_torch(data)
                bounds = np.cumsum([0] + [b - a for a, b in ranges])
                for j, p in enumerate(pos):
                    out[p, : bounds[j + 1] - bounds[j]] = states[bounds[j]: bounds[j + 1]]
        for p, n in enumerate(lengths):
            out[p, n:] = 0
        return lengths

    def lengths(self, rows) -> np.ndarray:
        shard, local = self._locate(rows)
        return np.array([int(np.diff(self._shards[s].offsets[l: l + 2])[0]) for s, l in zip(shard, local)],
                        dtype=np.int64)

    def dense_vectors(self, rows=None) -> np.ndarray | None:
        """Stored dense vectors [n, Dd] (all rows by default); None without a dense model."""
        if self.manifest.dense is None:
            return None
        mats = []
        for s in self._shards:
            try:
                mats.append(np.load(s.dir / L.DENSE, mmap_mode="r"))
            except (OSError, ValueError, EOFError) as exc:
                raise s.damaged(s.dir / L.DENSE, f"cannot read dense vectors ({exc})") from None
        self.generation.check()
        if rows is None:
            return np.concatenate(mats) if mats else None
        shard, local = self._locate(rows)
        return np.stack([mats[s][l] for s, l in zip(shard, local)]).astype(np.float32)

    # -- passages (build --passages) --
    @property
    def passages(self) -> tuple[int, int] | None:
        """(window, stride) of a passage index (several rows per document), else None."""
        p = self.manifest.settings.passages  # None: an index of one row per document
        return (p.window, p.stride) if p is not None else None

    def passage_columns(self) -> dict[str, np.ndarray]:
        """A passage index's per-row passage number (int32 [N]) and character span in its document's
        text (char_start, char_end: int64 [N]), every shard's columns read once."""
        if self.passages is None:
            raise IndexError_(f"{self.root}: not a passage index (built without --passages)")
        if self._passage_columns is None:  # read once per reader (Searcher.with_config shares it)
            names = ("passage", "char_start", "char_end")
            tables = [s.table(list(names)) for s in self._shards]
            self._passage_columns = {n: np.concatenate([t.column(n).to_numpy() for t in tables]) if tables
                                     else np.zeros(0, np.int64) for n in names}
        return self._passage_columns

    # -- texts --
    def texts(self, rows) -> list[tuple[str, str]]:
        """(title, text) per row, reading only the Parquet row groups holding them."""
        return [(t.column("title")[i].as_py(), t.column("text")[i].as_py()) for t, i in self._read_rows(rows, True)]

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
