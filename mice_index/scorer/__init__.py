"""Scorer stage: MICE query side over stored document states, streamed from the index.

    scorer = MiceScorer(model, reader, ScorerConfig(dtype="bf16"))
    scores = scorer.score(["query a", "query b"], [rows_a, rows_b])   # list of float32 arrays

For a group of queries the bottom layers run once per query; their candidates' states are read
and decoded by a background thread (I/O and decoding overlap compute), sorted by length and cut
into batches by a token budget, so one batch may hold pairs of several queries. Batches are scored
by the inference path in `fast.py` (query-only work once per query, absorbed cross-attention),
which equals `MiceModel.score_states`.
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
from mice_index.model import MiceModel
from mice_index.scorer.fast import score_pairs

__all__ = ["MiceScorer", "ScorerConfig", "StateReader"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class StateReader(Protocol):
    def get_states(self, rows: Sequence[int]) -> list[np.ndarray]: ...  # float32 [T_i, D] each


@dataclass(frozen=True)
class ScorerConfig:
    batch_tokens: int = 16_384  # padded document tokens per forward pass
    pairs_per_group: int = 512  # (query, document) pairs read ahead as one unit
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA and on CPUs with AMX tiles
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefetch: int = 2  # groups decoded ahead of compute


@dataclass
class _Group:
    pair_query: np.ndarray  # [P] query index (within the group's query batch) of each pair
    pair_slot: tuple[int, int]  # (first, last+1) positions of these pairs in the flat pair list
    states: list[np.ndarray]  # [P] decoded document states [T_i, D]


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
            q_states, q_mask = self.model.encode_queries(list(queries))  # bottom once per query
            for group in self._prefetched(flat_q, flat_rows):
                first, last = group.pair_slot
                out[first:last] = self._score_group(q_states, q_mask, group)
        bounds = np.cumsum([0] + [len(c) for c in candidates])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _prefetched(self, flat_q: np.ndarray, flat_rows: np.ndarray) -> Iterator[_Group]:
        """Read + decode groups of pairs in a background thread, `prefetch` groups ahead."""
        size = self.config.pairs_per_group
        slots = [(i, min(i + size, len(flat_rows))) for i in range(0, len(flat_rows), size)]
        results: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch))
        stop = threading.Event()

        def produce():
            try:
                for a, b in slots:
                    if stop.is_set():
                        return
                    results.put(_Group(flat_q[a:b], (a, b), self.reader.get_states(flat_rows[a:b].tolist())))
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

    def _score_group(self, q_states: torch.Tensor, q_mask: torch.Tensor, group: _Group) -> np.ndarray:
        lengths = np.array([s.shape[0] for s in group.states])
        order = np.argsort(-lengths, kind="stable")  # longest first: little padding per batch
        scores = np.empty(len(order), dtype=np.float32)
        for batch in _token_batches(lengths[order], self.config.batch_tokens):
            idx = order[batch]
            docs, d_mask = self._pad([group.states[i] for i in idx])
            present, pair_query = np.unique(group.pair_query[idx], return_inverse=True)
            sel = torch.as_tensor(present, device=self.device)
            qm = q_mask[sel]
            tq = int(qm.sum(1).max())  # drop padding columns no query of this batch needs
            s = score_pairs(self.model.interaction, q_states[sel, :tq], qm[:, :tq],
                            torch.as_tensor(pair_query, device=self.device), docs, d_mask)
            scores[idx] = s.float().cpu().numpy()
        return scores

    def _pad(self, states: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        T, D = max(s.shape[0] for s in states), states[0].shape[1]
        pin = self.device.type == "cuda"
        docs = torch.zeros((len(states), T, D), dtype=torch.float32, pin_memory=pin)
        mask = torch.zeros((len(states), T), dtype=torch.long, pin_memory=pin)
        for i, s in enumerate(states):
            docs[i, : s.shape[0]] = torch.from_numpy(s)
            mask[i, : s.shape[0]] = 1
        return (docs.to(self.device, self.dtype, non_blocking=pin), mask.to(self.device, non_blocking=pin))


def _token_batches(sorted_lengths: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of a descending length list whose padded size (n × max) fits `budget`."""
    start = 0
    while start < len(sorted_lengths):
        longest = max(int(sorted_lengths[start]), 1)
        n = max(1, budget // longest)
        yield slice(start, min(start + n, len(sorted_lengths)))
        start += n
