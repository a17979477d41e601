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

import copy
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from mice_index.choices import QUANTIZE  # one source for the CLI and the scorer
from mice_index.encoder import cpu_has_bf16, resolve_device
from mice_index.encoder.prefetch import ahead
from mice_index.errors import SearchError
from mice_index.model import MiceModel
from mice_index.scorer.fast import score_pairs
from mice_index.scorer.feed import Feed, resolve_batching, resolve_decode

__all__ = ["MiceScorer", "ScorerConfig", "StateReader"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SDPA = ("flash", "efficient", "math", "cudnn")


class StateReader(Protocol):
    def lengths(self, rows: Sequence[int]) -> np.ndarray: ...  # tokens per row, without reading states

    def get_states(self, rows: Sequence[int]) -> list[np.ndarray]: ...  # float32 [T_i, D] each


@dataclass(frozen=True)
class ScorerConfig:
    batch_tokens: int = 16_384  # padded document tokens per forward pass
    # auto: bf16 on CUDA and on CPUs with native bf16 dot products (AVX512-BF16 or AMX): there the
    # interaction runs ~1.8x faster than fp32 with the same nDCG@10 (BENCHMARKS.md, Latency)
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # batches read, decoded and padded ahead of compute by a reader thread; 0: none, read in the
    # calling thread; None: 2 on CUDA, 0 on a CPU (where the reader competes with compute for the
    # same cores: one query took 7% longer with it on 2 cores, BENCHMARKS.md, Latency)
    prefetch: int | None = None
    # int8: dynamic int8 quantization (torch.ao, fbgemm/x86 kernels) of the interaction layers'
    # linear sublayers (not the cross-attention key/value weights, which the absorbed path folds
    # into the query, nor the score head): weights int8 per tensor, activations quantized per
    # batch (so with int8 a batch holds one query's candidates only). CPU + fp32 only; bounded
    # error, measured in BENCHMARKS.md (Latency). none: exact, independent of batching.
    # auto: int8 where it runs (CPU, fp32, an x86/fbgemm quantized engine), else none.
    quantize: Literal["auto", "none", "int8"] = "auto"
    # query: a batch holds one query's candidates (`batch_tokens`); cross: batches span queries,
    # sorted by length in bucketed shapes of `cross_batch_tokens` (scorer/feed.py; a query's
    # scores equal its scores alone within 1e-5 in fp32, feed.BF16_BOUND in bf16). auto: cross on
    # CUDA, query elsewhere
    batching: Literal["auto", "query", "cross"] = "auto"
    cross_batch_tokens: int = 131_072  # padded document tokens per cross-query batch
    # where stored states are decoded: device (codec columns cross PCIe: 32 B/token for compact
    # instead of 1,536 B/token float32), host; auto: device on CUDA with an index reader
    decode: Literal["auto", "host", "device"] = "auto"
    gpu_cache: int = 0  # MiB of the device kept for the index's encoded states (0: none; cross only)
    # scaled-dot-product attention kernels on CUDA: auto = flash, memory-efficient, math (not
    # cuDNN, which builds a plan per new shape); or one of them by name
    sdpa: Literal["auto", "flash", "efficient", "math", "cudnn"] = "auto"

    def __post_init__(self):
        if self.quantize not in QUANTIZE:
            raise SearchError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.sdpa != "auto" and self.sdpa not in SDPA:
            raise SearchError(f"--sdpa must be one of auto, {', '.join(SDPA)}, got {self.sdpa!r}")
        for name in ("batch_tokens", "cross_batch_tokens"):
            if getattr(self, name) < 1:
                raise SearchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpu_cache < 0:
            raise SearchError(f"--gpu-cache must be >= 0 MiB, got {self.gpu_cache}")


@dataclass
class _Batch:
    pairs: np.ndarray  # [B] positions in the flat pair list
    docs: torch.Tensor  # [B,Tmax,D] padded states, on the device
    mask: torch.Tensor  # [B,Tmax]
    buffer: tuple  # the host buffers `docs` was read into (back to the pool once scored)


class MiceScorer:
    """Scores (query, candidate row) pairs with a MICE model over an index's stored states."""

    def __init__(self, model: MiceModel, reader: StateReader, config: ScorerConfig = ScorerConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[resolve_scorer_dtype(config.dtype, self.device)]
        first = next(model.parameters())
        if first.device != self.device or first.dtype != self.dtype:  # a copy: the caller's model
            model = copy.deepcopy(model).to(self.device, self.dtype)  # (shared, e.g. fp32) stays as it is
        self.model = model.eval()
        self.interaction = self.model.interaction
        self.quantize = resolve_quantize(config.quantize, self.device, self.dtype)
        if self.quantize == "int8":
            self.interaction = quantized_interaction(self.model.interaction, self.device, self.dtype)
        self.reader = reader
        self.prefetch = config.prefetch if config.prefetch is not None else 2 if self.device.type == "cuda" else 0
        self._buffers: queue.SimpleQueue[tuple] = queue.SimpleQueue()  # reused host buffers
        self.batching = resolve_batching(config.batching, self.device, self.quantize)
        self.feed = None
        if self.batching == "cross":
            self.feed = Feed(reader, self.device, self.dtype, self.model.config.hidden_size,
                             config.cross_batch_tokens, resolve_decode(config.decode, self.device, reader),
                             self.prefetch + 2, config.gpu_cache)
        elif config.gpu_cache:
            raise SearchError("--gpu-cache needs cross-query batching (--batching cross, the default on CUDA)")

    @torch.inference_mode()
    def score(self, queries: Sequence[str], candidates: Sequence[Sequence[int]],
              query_states: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[np.ndarray]:
        """queries[i] against rows candidates[i] -> float32 scores aligned with candidates[i].
        `query_states`: the queries' layer-ℓ* states and mask ([Q,Tq,D], [Q,Tq], from the same
        bottom, e.g. computed once for the dense first stage too); default: computed here."""
        assert len(queries) == len(candidates)
        flat_q = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(candidates)] or [[]])
        flat_rows = np.concatenate([np.asarray(c, dtype=np.int64) for c in candidates] or [[]])
        out = np.empty(len(flat_rows), dtype=np.float32)
        if len(flat_rows):
            lengths = np.asarray(self.reader.lengths(flat_rows.tolist()), dtype=np.int64)
            if query_states is None:
                q_states, q_mask = encode_queries_alone(self.model, list(queries))  # bottom once per query
            else:
                q_states, q_mask = query_states[0].to(self.device, self.dtype), query_states[1].to(self.device)
            plan = (self.feed.plan(lengths, flat_q, q_mask.sum(1).cpu().numpy()) if self.feed
                    else self._plan(flat_q, flat_rows, lengths))
            with _sdpa_backends(self.config.sdpa, self.device):
                for batch in self._prefetched(plan, flat_rows, lengths):
                    out[batch.pairs] = self._score_batch(q_states, q_mask, flat_q[batch.pairs], batch)
                    self.release(batch)  # _score_batch synchronised with the device (.cpu())
            if not np.isfinite(out).all():
                raise _non_finite(self.reader, flat_rows[~np.isfinite(out)])
        bounds = np.cumsum([0] + [len(c) for c in candidates])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _plan(self, flat_q: np.ndarray, flat_rows: np.ndarray, lengths: np.ndarray | None = None) -> list[np.ndarray]:
        """Pair positions per batch: longest documents first (little padding per batch), cut by the
        token budget. Batches never mix queries, so a query's scores do not depend on which other
        queries were searched with it: with bf16 a product's rounding depends on its shape, and with
        int8 the activations are scaled per batch (measured: mixing moved scores by up to 0.06 in
        bf16 and 0.37 in int8). `lengths`: the rows' token counts, if already known."""
        if lengths is None:
            lengths = np.asarray(self.reader.lengths(flat_rows.tolist()), dtype=np.int64)
        groups = [np.nonzero(flat_q == q)[0] for q in np.unique(flat_q)]
        plan = []
        for group in groups:
            order = group[np.argsort(-lengths[group], kind="stable")]
            plan += [b[np.argsort(flat_q[b], kind="stable")]
                     for b in (order[s] for s in _token_batches(lengths[order], self.config.batch_tokens))]
        return plan

    def _load(self, pairs: np.ndarray, flat_rows: np.ndarray, flat_lengths: np.ndarray) -> _Batch:
        """Read, decode and pad the states of one planned batch into a reused host buffer (a fresh
        [B,Tmax,D] allocation costs page faults on every batch), then move it to the device.
        Cross-query batching: `Feed.load` (bucketed shapes, buffer pool, device decoding)."""
        if self.feed is not None:
            return self.feed.load(pairs, flat_rows, flat_lengths)
        rows, lengths = flat_rows[pairs].tolist(), flat_lengths[pairs]
        B, T, D = len(rows), max(1, int(lengths.max())), self.model.config.hidden_size
        buffer = self._buffer(B * T * D)
        host = buffer[0][: B * T * D].view(B, T, D)
        if hasattr(self.reader, "read_padded"):  # decodes straight into the buffer
            self.reader.read_padded(rows, host)
        else:
            for i, s in enumerate(self.reader.get_states(rows)):
                host[i, : len(s)] = torch.from_numpy(s)
                host[i, len(s):] = 0
        mask = (torch.arange(T)[None, :] < torch.from_numpy(lengths)[:, None]).long()
        pin = self.device.type == "cuda"  # pinned host buffers: the copies below run asynchronously
        if pin:
            mask = mask.pin_memory()
        if buffer[1] is not None:  # CPU bf16: one vectorised fp32 -> bf16 cast into the second buffer
            docs = buffer[1][: B * T * D].view(B, T, D).copy_(host)  # (torch casts fp16 -> bf16 ~8x slower)
        else:
            docs = host.to(self.device, self.dtype, non_blocking=pin)
        return _Batch(pairs, docs, mask.to(self.device, non_blocking=pin), buffer)

    def _buffer(self, numel: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Host buffers of at least `numel` elements, a pooled pair if it fits: float32 (pinned on
        CUDA) for reading, plus one in the compute dtype on a CPU that does not compute in fp32."""
        try:
            buf = self._buffers.get_nowait()
            if buf[0].numel() >= numel:
                return buf
        except queue.Empty:
            pass
        size = max(numel, (self.config.batch_tokens + 512) * self.model.config.hidden_size)
        cast = self.device.type == "cpu" and self.dtype != torch.float32
        return (torch.empty(size, dtype=torch.float32, pin_memory=self.device.type == "cuda"),
                torch.empty(size, dtype=self.dtype) if cast else None)

    def release(self, batch: _Batch) -> None:
        """Give a scored batch's host buffer back to the pool (at most prefetch + 2 are kept)."""
        if self.feed is not None:
            return self.feed.release(batch)
        if self._buffers.qsize() < self.prefetch + 2:
            self._buffers.put(batch.buffer)

    def prepare(self, rows: Sequence[int]) -> list[_Batch]:
        """The batches of one query's candidate rows, read in this thread (benchmarks: stage timing)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.asarray(self.reader.lengths(rows.tolist()), dtype=np.int64)
        return [self._load(pairs, rows, lengths) for pairs in self._plan(np.zeros(len(rows), np.int64), rows, lengths)]

    def _prefetched(self, plan: list[np.ndarray], flat_rows: np.ndarray, lengths: np.ndarray) -> Iterator[_Batch]:
        """Read + decode + pad the planned batches in a background thread, `prefetch` ahead (0: in
        this thread, one batch at a time)."""
        if self.prefetch <= 0:
            yield from (self._load(pairs, flat_rows, lengths) for pairs in plan)
            return
        yield from ahead((self._load(pairs, flat_rows, lengths) for pairs in plan), self.prefetch,
                         name="mice-prefetch")

    def _score_batch(self, q_states: torch.Tensor, q_mask: torch.Tensor, pair_query: np.ndarray,
                     batch: _Batch) -> np.ndarray:
        present, local = np.unique(pair_query, return_inverse=True)
        sel = torch.as_tensor(present, device=self.device)
        qm = q_mask[sel]
        tq = int(qm.sum(1).max())  # drop padding columns no query of this batch needs
        s = score_pairs(self.interaction, q_states[sel, :tq], qm[:, :tq],
                        torch.as_tensor(local, device=self.device), batch.docs, batch.mask)
        return s.float().cpu().numpy()


def _sdpa_backends(sdpa: str, device: torch.device):
    """Context choosing the scaled-dot-product attention kernels (ScorerConfig.sdpa); on a CPU
    only an explicit choice applies."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
    if sdpa == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        return sdpa_kernel([names["flash"], names["efficient"], names["math"]])
    return sdpa_kernel([names[sdpa]])


def encode_queries_alone(model: MiceModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.encode_queries`, each query through the bottom on its own (then padded), so its
    states do not depend on the other queries' lengths (padding changes float rounding by ~1e-7,
    which bf16 and int8 scoring can amplify) -> (states [Q,Tq,D], mask [Q,Tq])."""
    if len(texts) == 1:
        return model.encode_queries(texts)
    alone = [model.encode_queries([t]) for t in texts]
    T = max(m.shape[1] for _, m in alone)
    states = torch.zeros((len(texts), T, alone[0][0].shape[-1]), dtype=alone[0][0].dtype, device=alone[0][0].device)
    mask = torch.zeros((len(texts), T), dtype=alone[0][1].dtype, device=alone[0][1].device)
    for i, (s, m) in enumerate(alone):
        states[i, : s.shape[1]], mask[i, : m.shape[1]] = s[0], m[0]
    return states, mask


def resolve_scorer_dtype(dtype: str, device: torch.device, bf16_cpu: bool | None = None) -> str:
    """auto -> bf16 on CUDA and on CPUs with native bf16 dot products (`bf16_cpu`, default: read
    from the CPU flags), else fp32. Unlike the build's bf16 autocast (slower than fp32 without
    AMX), the scorer's products are large matrix products, which AVX512-BF16 speeds up."""
    if dtype != "auto":
        return dtype
    bf16_cpu = cpu_has_bf16() if bf16_cpu is None else bf16_cpu
    return "bf16" if device.type == "cuda" or bf16_cpu else "fp32"


def resolve_quantize(quantize: str, device: torch.device, dtype: torch.dtype, engines=None) -> str:
    """auto -> int8 on CPU in fp32 where torch has x86/fbgemm int8 kernels (`engines`, default:
    torch.backends.quantized.supported_engines), else none."""
    if quantize != "auto":
        return quantize
    engines = torch.backends.quantized.supported_engines if engines is None else engines
    fast = device.type == "cpu" and dtype == torch.float32 and ("x86" in engines or "fbgemm" in engines)
    return "int8" if fast else "none"


def quantized_interaction(inter: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `inter` whose per-pair linear sublayers use dynamic int8 quantization
    (`torch.ao.quantization.quantize_dynamic`, x86/fbgemm kernels). Kept in fp32: the cross-
    attention key/value projections (the absorbed path reads their weight matrices), the late-
    interaction term (query side only) and the score head. SearchError off CPU or off fp32."""
    import warnings

    if device.type != "cpu" or dtype != torch.float32:
        raise SearchError(f"--quantize int8 runs on CPU in fp32 only (got {device.type}, "
                          f"{str(dtype).removeprefix('torch.')}); add --dtype fp32, or use --quantize none")
    keep = {"head", "pooler"}
    names = {name for name, m in inter.named_modules() if isinstance(m, torch.nn.Linear)
             and name not in keep and not name.startswith("late.")
             and not name.endswith(("cross_attn.key", "cross_attn.value"))}
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao,
        warnings.simplefilter("ignore")  # whose int8 CPU path measured 6x slower here (no fbgemm)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(inter), names, dtype=torch.qint8)


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
