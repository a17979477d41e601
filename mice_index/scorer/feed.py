"""Feeding an accelerator: cross-query batches in bucketed shapes, a host buffer pool allocated
once, decoding on the device, and an optional device-resident cache of the encoded states.

`MiceScorer` uses this module when `ScorerConfig.batching` resolves to "cross" (the default on
CUDA; `batching="cross"` forces it on a CPU, which is how tests/test_scorer_cross.py proves the
logic without a GPU):

1. `plan_cross`: all (query, candidate) pairs of a call grouped by query-length class, sorted by
   document length and cut into batches that may span queries. Every batch's padded length is a *bucket* (`bucket_length`:
   16-token steps up to 128, then steps of 1/8 of the power of two below), and its size is
   `budget // bucket`, so one bucket always gives the same [B, T] shape (except its last batch):
   kernels, cuDNN / SDPA plans and the caching allocator's blocks are reused instead of re-planned
   for every new shape (profiled on an H200: 6.6 ms of host time per new bf16 attention shape).
2. `BufferPool`: `count` host byte buffers (pinned on CUDA, so copies are asynchronous) allocated
   on the first batch and reused; a batch larger than a buffer grows it (counted in `grown`).
3. decode "device": the codec's columns (32 B/token for "compact", 768 B/token for fp16 at D=384)
   go to the device in one copy and `Codec.decode_device` decodes them there, scattered into the
   padded [B, T, D] batch; decode "host" reads decoded float32 states into the buffer instead.
4. `DeviceCache`: the encoded columns of the first rows of the index (as many as fit a bound in
   MiB) copied to the device once; their batches need no host read and no copy.

Independence of queries: a pair's padded length and its batch neighbours change the shapes of
the products it goes through, so its float rounding (not its value) may change: measured and
bounded in tests/test_scorer_cross.py (fp32: 1e-5; bf16: `BF16_BOUND`).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mice_index.errors import SearchError

log = logging.getLogger(__name__)

__all__ = ["BATCHINGS", "BF16_BOUND", "DECODES", "BufferPool", "DeviceCache", "Feed", "bucket_length",
           "device_column", "plan_cross", "resolve_batching", "resolve_decode"]

BATCHINGS = ("auto", "query", "cross")
DECODES = ("auto", "host", "device")
# a query's bf16 scores in cross-query batches vs alone: |difference| <= BF16_BOUND * (1 + |score|)
# (bf16 keeps 8 significant bits: rounding of a product depends on its shape; measured in
# tests/test_scorer_cross.py on a random-init model, whose largest difference was ~1/3 of this)
BF16_BOUND = 0.06


def resolve_batching(batching: str, device: torch.device, quantize: str) -> str:
    """auto -> "cross" on CUDA (batches span queries), "query" elsewhere (a batch holds one
    query's candidates: on a CPU larger batches gain nothing). int8 scales activations per batch,
    so it needs "query". SearchError for an unknown value or cross + int8."""
    if batching not in BATCHINGS:
        raise SearchError(f"--batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
    if batching == "auto":
        return "cross" if device.type == "cuda" and quantize != "int8" else "query"
    if batching == "cross" and quantize == "int8":
        raise SearchError("--batching cross cannot be combined with --quantize int8 (its activations are "
                          "scaled per batch); use --quantize none")
    return batching


def resolve_decode(decode: str, device: torch.device, reader) -> str:
    """auto -> "device" on CUDA when the reader exposes its codec's columns (`codec` and
    `get_encoded`), else "host". SearchError for an unknown value or "device" without columns."""
    if decode not in DECODES:
        raise SearchError(f"--decode must be one of {', '.join(DECODES)}, got {decode!r}")
    columns = hasattr(reader, "codec") and hasattr(reader, "get_encoded")
    if decode == "auto":
        return "device" if device.type == "cuda" and columns else "host"
    if decode == "device" and not columns:
        raise SearchError("--decode device needs an index reader that returns codec columns")
    return decode


def bucket_length(n: int) -> int:
    """The padded length of a batch whose longest document has n tokens: a multiple of 16 up to
    128, above that a multiple of 1/8 of the largest power of two <= n (padding <= 12.5%, and
    about 8 shapes per doubling of the length)."""
    n = max(int(n), 1)
    step = max(16, (1 << (n.bit_length() - 1)) // 8)
    return -(-n // step) * step


QUERY_STEP = 8  # query lengths (tokens) per query-length class of a batch


def plan_cross(lengths: np.ndarray, pair_query: np.ndarray, budget: int,
               query_lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Pair positions per batch for pairs of any queries: grouped by query-length class
    (`query_lengths` [Q] tokens per query, in steps of QUERY_STEP: one long query must not pad
    every query of its batch, nor push them off the absorbed cross-attention path of fast.py),
    then longest documents first, cut at every class or bucket change and after
    `budget // bucket` pairs (at least 1); each batch ordered by query (one matrix product per
    run of a query's pairs). lengths, pair_query: int [P]."""
    lengths = np.asarray(lengths)
    qclass = (np.zeros(len(lengths), np.int64) if query_lengths is None
              else -(-np.asarray(query_lengths, dtype=np.int64)[pair_query] // QUERY_STEP))
    order = np.lexsort((np.arange(len(lengths)), -lengths, qclass))
    buckets = np.array([bucket_length(n) for n in lengths[order]], dtype=np.int64)
    keys = buckets * (int(qclass.max(initial=0)) + 1) + qclass[order]  # one key per (class, bucket)
    plan = []
    start = 0
    while start < len(order):
        T = int(buckets[start])
        end = min(start + max(1, budget // T), len(order))
        other = np.nonzero(keys[start:end] != keys[start])[0]
        end = start + int(other[0]) if len(other) else end
        batch = order[start:end]
        plan.append(batch[np.argsort(pair_query[batch], kind="stable")])
        start = end
    return plan


def device_column(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A codec column as a torch tensor on `device` (uint16 travels as int16: torch has few uint16
    kernels; `Codec.decode_device` masks it back)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        a = a.view(np.int16)
    return torch.from_numpy(a).to(device)


class BufferPool:
    """`count` reusable host byte buffers of `nbytes` each (pinned when `pin`), allocated on the
    first `acquire`; `acquire` waits for a free one, and enlarges it if a batch needs more.
    `allocated` counts every allocation (count + grown)."""

    def __init__(self, count: int, nbytes: int, pin: bool):
        self.count, self.nbytes, self.pin = max(1, count), int(nbytes), pin
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        self.allocated = self.grown = 0

    def _new(self, nbytes: int) -> torch.Tensor:
        self.allocated += 1
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    def acquire(self, nbytes: int) -> torch.Tensor:
        """A buffer of at least `nbytes` bytes (uint8 [>= nbytes]); give it back with `release`."""
        if self.allocated == 0:
            for _ in range(self.count):
                self._free.put(self._new(self.nbytes))
        buf = self._free.get()
        if buf.numel() < nbytes:
            self.grown += 1
            buf = self._new(nbytes)
        return buf

    def release(self, buf: torch.Tensor) -> None:
        self._free.put(buf)


class DeviceCache:
    """The codec columns of rows [0, rows) kept on the device: the longest prefix of the index
    whose encoded states fit `limit` bytes. Filled once at construction, in blocks of rows."""

    BLOCK = 4096  # rows read per block while filling

    def __init__(self, reader, device: torch.device, limit: int):
        self.device, self.limit = device, int(limit)
        lengths = np.asarray(reader.lengths(list(range(reader.num_docs))), dtype=np.int64)
        per_token = reader.codec.bytes_per_token
        fits = np.nonzero(np.cumsum(lengths) * per_token > self.limit)[0]
        self.rows = int(fits[0]) if len(fits) else len(lengths)
        self.starts = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths[: self.rows])]))
        blocks = [reader.get_encoded(list(range(a, min(a + self.BLOCK, self.rows))))
                  for a in range(0, self.rows, self.BLOCK)]
        names = list(reader.codec.columns())
        self.columns = {k: device_column(np.concatenate([p[k] for b in blocks for p in b]), device)
                        for k in names} if self.rows else {}
        self.nbytes = int(self.starts[-1]) * per_token
        log.info("gpu cache: %s of %s documents on %s (%.1f of %.0f MiB)", f"{self.rows:,}", f"{len(lengths):,}",
                 device, self.nbytes / 2**20, self.limit / 2**20)

    def describe(self) -> dict:
        return {"rows": self.rows, "bytes": self.nbytes, "limit_bytes": self.limit}

    def gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Concatenated columns of cached `rows` (in the order given), gathered on the device."""
        rows_t = torch.from_numpy(rows)
        start, n = self.starts[rows_t], self.starts[rows_t + 1] - self.starts[rows_t]
        first = torch.repeat_interleave(start - torch.cumsum(n, 0) + n, n)  # per token: start - offset
        idx = (first + torch.arange(int(n.sum()))).to(self.device, non_blocking=True)
        return {k: c.index_select(0, idx) for k, c in self.columns.items()}


@dataclass
class FedBatch:
    pairs: np.ndarray  # [B] positions in the flat pair list
    docs: torch.Tensor  # [B, T, D] states on the device (T: the batch's bucket)
    mask: torch.Tensor  # [B, T]
    buffer: torch.Tensor | None  # the pool buffer to give back once the batch is scored


class Feed:
    """Cross-query batches for one scorer: plans them, reads them through a `BufferPool` and
    decodes them on the host or the device (see the module docstring)."""

    def __init__(self, reader, device: torch.device, dtype: torch.dtype, hidden_size: int, budget: int,
                 decode: str, buffers: int, cache_mib: int = 0):
        self.reader, self.device, self.dtype, self.D, self.budget = reader, device, dtype, hidden_size, budget
        self.decode = decode
        self.codec = reader.codec if decode == "device" else None
        per_token = self.codec.bytes_per_token if self.codec is not None else 4 * hidden_size
        self.pool = BufferPool(buffers, budget * per_token + 64, pin=device.type == "cuda")
        self.cache = None
        if cache_mib:
            if decode != "device":
                raise SearchError("--gpu-cache needs device decoding (an index reader with codec columns, "
                                  "--decode device or auto on CUDA)")
            self.cache = DeviceCache(reader, device, cache_mib << 20)

    def plan(self, lengths: np.ndarray, pair_query: np.ndarray, query_lengths: np.ndarray | None = None
             ) -> list[np.ndarray]:
        return plan_cross(lengths, pair_query, self.budget, query_lengths)

    def load(self, pairs: np.ndarray, flat_rows: np.ndarray, flat_lengths: np.ndarray) -> FedBatch:
        rows, lengths = flat_rows[pairs], flat_lengths[pairs]
        B, T = len(rows), bucket_length(int(lengths.max()))
        lengths_t = torch.from_numpy(lengths)
        mask = (torch.arange(T)[None, :] < lengths_t[:, None]).long().to(self.device, non_blocking=True)
        if self.decode == "host":
            buf = self.pool.acquire(B * T * self.D * 4)
            host = buf[: B * T * self.D * 4].view(torch.float32).view(B, T, self.D)
            if hasattr(self.reader, "read_padded"):
                self.reader.read_padded(rows.tolist(), host)
            else:
                for i, s in enumerate(self.reader.get_states(rows.tolist())):
                    host[i, : len(s)] = torch.from_numpy(s)
                    host[i, len(s):] = 0
            docs = host.to(self.device, self.dtype, non_blocking=self.device.type == "cuda")
            return FedBatch(pairs, docs, mask, buf)
        return self._load_encoded(pairs, rows, lengths, T, mask)

    def _load_encoded(self, pairs, rows, lengths, T, mask) -> FedBatch:
        """Codec columns -> device (cached rows: gathered there) -> decoded and scattered into the
        padded batch on the device."""
        cached = rows < self.cache.rows if self.cache is not None else np.zeros(len(rows), bool)
        order = np.concatenate([np.nonzero(cached)[0], np.nonzero(~cached)[0]])  # cached first
        parts: list[dict[str, torch.Tensor]] = []
        if cached.any():
            parts.append(self.cache.gather(rows[cached]))
        buf = None
        if not cached.all():
            host = self.reader.get_encoded(rows[~cached].tolist())
            cols = {k: np.concatenate([p[k] for p in host]) for k in self.codec.columns()}
            buf = self.pool.acquire(sum(c.nbytes + 16 for c in cols.values()))
            parts.append(self._ship(cols, buf))
        flat = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        states = self.codec.decode_device(flat).to(self.dtype)  # [N, D], rows in `order`
        n = torch.from_numpy(lengths[order])
        base = torch.from_numpy(order.astype(np.int64)) * T - (torch.cumsum(n, 0) - n)  # per row: slot - offset
        dest = (torch.repeat_interleave(base, n) + torch.arange(int(n.sum()))).to(self.device, non_blocking=True)
        docs = torch.zeros(len(rows) * T, self.D, dtype=self.dtype, device=self.device)
        docs.index_copy_(0, dest, states)
        return FedBatch(pairs, docs.view(len(rows), T, self.D), mask, buf)

    def _ship(self, cols: dict[str, np.ndarray], buf: torch.Tensor) -> dict[str, torch.Tensor]:
        """Columns packed into `buf` and copied to the device in one transfer -> device columns."""
        spans, at = {}, 0
        for k, c in cols.items():
            c = np.ascontiguousarray(c.view(np.int16) if c.dtype == np.uint16 else c)
            buf[at: at + c.nbytes].numpy()[:] = c.reshape(-1).view(np.uint8)
            spans[k] = (at, c.nbytes, c.dtype, c.shape)
            at += -(-c.nbytes // 16) * 16  # each column 16-byte aligned (dtype views need it)
        dev = buf[:at].to(self.device, non_blocking=self.device.type == "cuda")  # on a CPU: `buf` itself
        return {k: dev[a: a + n].view(_TORCH[np.dtype(dt)]).view(shape) for k, (a, n, dt, shape) in spans.items()}

    def release(self, batch: FedBatch) -> None:
        if batch.buffer is not None:
            self.pool.release(batch.buffer)

    def describe(self) -> dict:
        """What `info` / logs report: batching mode, decode place, buffers, cache."""
        return {"batching": "cross", "decode": self.decode, "budget_tokens": self.budget,
                "buffers": self.pool.allocated, "grown": self.pool.grown,
                "gpu_cache": self.cache.describe() if self.cache is not None else None}


_TORCH = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8, np.dtype(np.int16): torch.int16,
          np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}

