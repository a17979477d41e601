"""Scorer stage: MICE query side over stored document states, streamed from the index.

    scorer = MiceScorer(model, reader, ScorerConfig(dtype="bf16"))
    scores = scorer.score(["query a", "query b"], [rows_a, rows_b])   # list of float32 arrays

The bottom layers run once per query. All (query, candidate) pairs of a call are sorted by
document length (known from the index without reading states) and cut into batches by a token
budget, so little is padding and one batch may hold pairs of several queries. A background
thread reads, decodes and pads batch k+1 while batch k computes. Batches are scored by the
inference path in `fast.py` (query-only work once per query, absorbed cross-attention), which
equals `MiceModel.score_states`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from mice_index.encoder import resolve_device, resolve_dtype
from mice_index.errors import SearchError
from mice_index.model import MiceModel
from mice_index.scorer.fast import score_pairs

__all__ = ["MiceScorer", "ScorerConfig", "StateReader"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class StateReader(Protocol):
    def lengths(self, rows: Sequence[int]) -> np.ndarray: ...  # tokens per row, without reading states

    def get_states(self, rows: Sequence[int]) -> list[np.ndarray]: ...  # float32 [T_i, D] each


@dataclass(frozen=True)
class ScorerConfig:
    batch_tokens: int = 16_384  # padded document tokens per forward pass
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA and on CPUs with AMX tiles
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefetch: int = 2  # batches read, decoded and padded ahead of compute


@dataclass
class _Batch:
    pairs: np.ndarray  # [B] positions in the flat pair list
    docs: torch.Tensor  # [B,Tmax,D] padded states, on the device
    mask: torch.Tensor  # [B,Tmax]


class MiceScorer:
    """Scores (query, candidate row) pairs with a MICE model over an index's stored states."""

    def __init__(self, model: MiceModel, reader: StateReader, config: ScorerConfig = ScorerConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[resolve_dtype(config.dtype, self.device)]
        self.model = model.to(self.device, self.dtype).eval()
        self.reader = reader

    @torch.inference_mode()
    def score(self, queries: Sequence[str], candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """queries[i] against rows candidates[i] -> float32 scores aligned with candidates[i]."""
        assert len(queries) == len(candidates)
        flat_q = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(candidates)] or [[]])
        flat_rows = np.concatenate([np.asarray(c, dtype=np.int64) for c in candidates] or [[]])
        out = np.empty(len(flat_rows), dtype=np.float32)
        if len(flat_rows):
            lengths = np.asarray(self.reader.lengths(flat_rows.tolist()), dtype=np.int64)
            order = np.argsort(-lengths, kind="stable")  # longest first: little padding per batch
            # within a batch, pairs of one query are made contiguous (one matrix product per query)
            plan = [b[np.argsort(flat_q[b], kind="stable")]
                    for b in (order[s] for s in _token_batches(lengths[order], self.config.batch_tokens))]
            q_states, q_mask = self.model.encode_queries(list(queries))  # bottom once per query
            for batch in self._prefetched(plan, flat_rows):
                out[batch.pairs] = self._score_batch(q_states, q_mask, flat_q[batch.pairs], batch)
            if not np.isfinite(out).all():
                raise _non_finite(self.reader, flat_rows[~np.isfinite(out)])
        bounds = np.cumsum([0] + [len(c) for c in candidates])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _prefetched(self, plan: list[np.ndarray], flat_rows: np.ndarray) -> Iterator[_Batch]:
        """Read + decode + pad the planned batches in a background thread, `prefetch` ahead."""
        results: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch))
        stop = threading.Event()

        def produce():
            try:
                for pairs in plan:
                    if stop.is_set():
                        return
                    results.put(_Batch(pairs, *self._pad(self.reader.get_states(flat_rows[pairs].tolist()))))
                results.put(None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer thread
                results.put(exc)

        worker = threading.Thread(target=produce, name="mice-prefetch", daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    results.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)

    def _score_batch(self, q_states: torch.Tensor, q_mask: torch.Tensor, pair_query: np.ndarray,
                     batch: _Batch) -> np.ndarray:
        present, local = np.unique(pair_query, return_inverse=True)
        sel = torch.as_tensor(present, device=self.device)
        qm = q_mask[sel]
        tq = int(qm.sum(1).max())  # drop padding columns no query of this batch needs
        s = score_pairs(self.model.interaction, q_states[sel, :tq], qm[:, :tq],
                        torch.as_tensor(local, device=self.device), batch.docs, batch.mask)
        return s.float().cpu().numpy()

    def _pad(self, states: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([s.shape[0] for s in states])
        docs = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(s) for s in states], batch_first=True)
        mask = (torch.arange(docs.shape[1])[None, :] < lengths[:, None]).long()
        pin = self.device.type == "cuda"
        if pin:  # pinned host buffers: the copies below run asynchronously
            docs, mask = docs.pin_memory(), mask.pin_memory()
        return docs.to(self.device, self.dtype, non_blocking=pin), mask.to(self.device, non_blocking=pin)


def _non_finite(reader: StateReader, rows: np.ndarray) -> Exception:
    """A NaN / infinite score is never returned: blame the stored states (the reader names the
    damaged shard) when they are non-finite, else the model."""
    check = getattr(reader, "check_states", None)
    if check is not None:
        check(rows.tolist())  # raises IndexError_ naming the shard
    return SearchError(f"the MICE model gave a non-finite score for {rows.size} candidate(s) (rows "
                       f"{', '.join(map(str, rows[:5].tolist()))}) although their stored states are finite; "
                       "the model's weights are damaged or overflow: try --dtype fp32 or another --model")


def _token_batches(sorted_lengths: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of a descending length list whose padded size (n × max) fits `budget`."""
    start = 0
    while start < len(sorted_lengths):
        longest = max(int(sorted_lengths[start]), 1)
        n = max(1, budget // longest)
        yield slice(start, min(start + n, len(sorted_lengths)))
        start += n
