"""Encoder stage: documents -> layer-ℓ* token states (+ dense vectors), in corpus order.

Documents are streamed and cut into *windows* (at most `window_docs` documents / `window_tokens`
tokens, restarted at every `boundary`, i.e. build shard). Inside a window documents are sorted by
length and batched by a token budget (`batch_tokens` = batch size x padded length), so almost no
compute goes to padding; results are put back into corpus order before the window is yielded.
Because windows depend only on the corpus, the settings and the shard boundaries, every run (and
every resumed run) computes exactly the same batches and therefore bit-identical states.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mice_index.errors import MiceIndexError
from mice_index.dense_tower import DenseTower
from mice_index.model import MiceModel
from mice_index.prune import PRUNE_RULES, TokenPruner
from mice_index.sources import Document
from mice_index.text import bounded_token_ids

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "bf16", "fp32"]
TOKENIZE_CHUNK = 256  # documents tokenised per tokenizer call (result is chunking-independent)


@dataclass(frozen=True)
class EncoderConfig:
    max_doc_length: int = 256
    batch_tokens: int = 8192  # batch size x padded length per forward pass
    window_docs: int = 1024  # documents sorted together (bounded memory)
    window_tokens: int = 65536  # ... and at most this many real tokens per window
    device: Device = "auto"
    dtype: DType = "auto"  # compute dtype (see resolve_dtype); states are float32 before the codec
    prune: str = "none"  # document-token pruning after the bottom (mice_index.prune.PRUNE_RULES)
    # windows / tokenized chunks prepared ahead by a tokenizer thread and a forward-pass thread, so
    # that tokenizing, encoding and writing overlap (encoder/prefetch.py); 0: serial; None: 2 on
    # CUDA, 0 on a CPU (where the threads compete with compute for the same cores)
    prefetch: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "window_docs", "window_tokens"):
            if getattr(self, name) < 1:
                raise MiceIndexError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_doc_length < 3:
            raise MiceIndexError(f"--max-doc-length must be >= 3, got {self.max_doc_length}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MiceIndexError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise MiceIndexError(f"--dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.prefetch is not None and self.prefetch < 0:
            raise MiceIndexError(f"--prefetch must be >= 0, got {self.prefetch}")
        if self.prune not in PRUNE_RULES:
            raise MiceIndexError(f"--prune must be one of {', '.join(PRUNE_RULES)}, got {self.prune!r}")


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MiceIndexError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16() -> bool:
    """Native bf16 dot products: AVX512-BF16 or AMX."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_dtype(dtype: DType, device: torch.device) -> Literal["bf16", "fp32"]:
    """auto: bf16 autocast on CUDA and on CPUs with AMX tiles; fp32 elsewhere. On a CPU with only
    AVX512-BF16 (no AMX) bf16 autocast measured ~1.4x *slower* than fp32 (BENCHMARKS.md)."""
    if dtype != "auto":
        return dtype
    return "bf16" if device.type == "cuda" or cpu_has_amx() else "fp32"


@dataclass
class EncodedWindow:
    """Consecutive documents (corpus order) with their concatenated float32 states.

    `parts` (optional) holds the states already in the index codec's columns ({column: [T, width]},
    T = sum(lengths)); the shard writer then stores them as they are and `states` may be None.
    Only encoders that produce codec columns directly set it (benchmarks/scale.py's synthetic one)."""

    start_row: int
    docs: list[Document]
    lengths: np.ndarray  # int32 [n] tokens per document ([CLS] ... [SEP] included)
    states: np.ndarray | None  # float32 [sum(lengths), D]; None only when `parts` is given
    dense: np.ndarray | None  # float32 [n, Dd] (L2-normalised) or None
    truncated: np.ndarray  # bool [n]: the document was longer than max_doc_length
    parts: dict[str, np.ndarray] | None = None  # codec columns [sum(lengths), width] instead of states


class _Pass:
    """One tokenizer + bottom (+ optional tower) used for forward passes over token id lists."""

    def __init__(self, model: MiceModel, tower: DenseTower | None, max_length: int, device: torch.device):
        self.model, self.tower, self.max_length, self.device = model, tower, max_length, device
        tok = model.tokenizer
        if tok is None:
            raise MiceIndexError("the model has no tokenizer; cannot encode documents")
        self.tok, self.sep, self.pad = tok, tok.sep_token_id, tok.pad_token_id or 0

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids truncated to max_length exactly like `MiceModel.tokenize`, plus a flag per
        text telling whether truncation happened (asks for one token more to find out)."""
        L = self.max_length
        enc = bounded_token_ids(self.tok, texts, L + 1)  # a long text is tokenized from a prefix
        out, cut = [], []
        for ids in enc:
            if len(ids) > L:
                out.append(ids[: L - 1] + [self.sep])
                cut.append(True)
            else:
                out.append(ids)
                cut.append(False)
        return out, cut


class DocumentEncoder:
    """Encodes documents with `model`'s bottom; dense vectors from `tower` over the same states,
    or (when `dense_model` is given) from a second pass through another bottom + its tower."""

    def __init__(self, model: MiceModel, config: EncoderConfig, tower: DenseTower | None = None,
                 dense_model: MiceModel | None = None, dense_tower: DenseTower | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.autocast = self.dtype == "bf16"
        self.prefetch = config.prefetch if config.prefetch is not None else 2 if self.device.type == "cuda" else 0
        model = model.to(self.device).eval()
        tower = tower.to(self.device).eval() if tower is not None else None
        self.main = _Pass(model, tower, config.max_doc_length, self.device)
        self.pruner = TokenPruner(model.tokenizer, config.prune)
        self.second = None
        if dense_model is not None:
            if dense_tower is None:
                raise MiceIndexError("dense_model needs its dense_tower")
            dense_model = dense_model.to(self.device).eval()
            self.second = _Pass(dense_model, dense_tower.to(self.device).eval(),
                                dense_model.config.max_doc_length, self.device)
        self.hidden_size = model.config.hidden_size
        self.dense_dim = (dense_model or model).config.hidden_size if (tower or self.second) else None

    # -- forward passes --
    def _forward(self, p: _Pass, ids: list[list[int]], want_states: bool):
        """ids of one batch -> (list of float32 [T_i,D] states | None, dense [B,Dd] | None)."""
        T = max(len(x) for x in ids)
        arr = np.full((len(ids), T), p.pad, dtype=np.int64)
        mask = np.zeros((len(ids), T), dtype=np.int64)
        for i, x in enumerate(ids):
            arr[i, : len(x)] = x
            mask[i, : len(x)] = 1
        t_ids, t_mask = torch.from_numpy(arr), torch.from_numpy(mask)
        if self.device.type == "cuda":
            t_ids = t_ids.pin_memory().to(self.device, non_blocking=True)
            t_mask = t_mask.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.autocast):
            states = p.model.encode_document_batch(t_ids, t_mask)
            dense = p.tower(states, t_mask).float().cpu().numpy() if p.tower is not None else None
            out = None
            if want_states:
                st = states.float().cpu().numpy()
                out = [st[i, : len(x)] for i, x in enumerate(ids)]
        return out, dense

    def _batches(self, lengths: list[int]) -> Iterator[list[int]]:
        """Indices sorted by length (longest first, stable), cut so that B * Tmax <= batch_tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batch: list[int] = []
        for i in order:
            tmax = lengths[batch[0]] if batch else lengths[i]
            if batch and (len(batch) + 1) * tmax > self.config.batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _encode_ids(self, p: _Pass, ids: list[list[int]], want_states: bool):
        states: list[np.ndarray | None] = [None] * len(ids)
        dense = np.zeros((len(ids), self.dense_dim or 0), np.float32)
        for b in self._batches([len(x) for x in ids]):
            st, dn = self._forward(p, [ids[i] for i in b], want_states)
            for j, i in enumerate(b):
                if st is not None:
                    states[i] = st[j]
                if dn is not None:
                    dense[i] = dn[j]
        return states, dense

    def encode_window(self, start_row: int, docs: list[Document], ids: list[list[int]],
                      truncated: list[bool]) -> EncodedWindow:
        states, dense = self._encode_ids(self.main, ids, want_states=True)
        if self.pruner.active:  # after the bottom: kept states are exactly the unpruned ones
            states = [s[self.pruner.keep(x)] for s, x in zip(states, ids)]
        if self.second is not None:
            texts = [self.second.model.format_document(d.title, d.text) for d in docs]
            _, dense = self._encode_ids(self.second, self.second.tokenize(texts)[0], want_states=False)
        lengths = np.array([len(s) for s in states], dtype=np.int32)
        cat = np.concatenate(states) if states else np.zeros((0, self.hidden_size), np.float32)
        return EncodedWindow(start_row, docs, lengths, np.ascontiguousarray(cat, dtype=np.float32),
                             dense if self.dense_dim else None, np.array(truncated, dtype=bool))

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Convenience: texts -> float32 states [T_i, D] as stored (pruned by the config's rule; one
        window, no shard logic)."""
        ids, _ = self.main.tokenize(texts)
        states = self._encode_ids(self.main, ids, want_states=True)[0]
        return [s[self.pruner.keep(x)] for s, x in zip(states, ids)]

    # -- streaming --
    def windows(self, docs: Iterable[Document], start_row: int = 0, boundary: int | None = None,
                stop_row: int | None = None) -> Iterator[EncodedWindow]:
        """Encode `docs` (the corpus from row `start_row` on) window by window, in corpus order.
        Windows never cross a multiple of `boundary` rows; encoding stops before `stop_row`.
        With `prefetch` > 0, tokenization and forward passes run in threads of their own, ahead
        of the caller (encoder/prefetch.py): the same windows, bit-identical states."""
        chunks = self._chunks(docs, start_row, boundary, stop_row)
        if self.prefetch:
            from mice_index.encoder.prefetch import ahead

            return ahead(self._windows(ahead(chunks, self.prefetch, "mice-tokenize"), start_row, boundary),
                         self.prefetch, "mice-encode")
        return self._windows(chunks, start_row, boundary)

    def _chunks(self, docs: Iterable[Document], row: int, boundary: int | None,
                stop_row: int | None) -> Iterator[tuple[list[Document], list[list[int]], list[bool]]]:
        """(documents, token ids, truncated flags) in chunks of at most TOKENIZE_CHUNK documents."""
        docs = iter(docs)
        while True:
            # never read past the next shard boundary before that shard is done: a bad line further
            # on must not keep the documents before it from being committed
            n = TOKENIZE_CHUNK
            if boundary:
                n = min(n, boundary - row % boundary)
            if stop_row is not None:
                n = min(n, stop_row - row)
            chunk = list(itertools.islice(docs, n)) if n > 0 else []
            if not chunk:
                return
            ids, cut = self.main.tokenize([self.main.model.format_document(d.title, d.text) for d in chunk])
            yield chunk, ids, cut
            row += len(chunk)

    def _windows(self, chunks, start_row: int, boundary: int | None) -> Iterator[EncodedWindow]:
        cfg = self.config
        row = start_row
        pending: list[tuple[Document, list[int], bool]] = []
        n_tokens = 0

        def flush():
            nonlocal pending, n_tokens
            win = self.encode_window(row - len(pending), [d for d, _, _ in pending],
                                     [x for _, x, _ in pending], [c for _, _, c in pending])
            pending, n_tokens = [], 0
            return win

        for chunk, ids, cut in chunks:
            for doc, x, c in zip(chunk, ids, cut):
                if pending and (n_tokens + len(x) > cfg.window_tokens or len(pending) >= cfg.window_docs
                                or (boundary and row % boundary == 0)):
                    yield flush()
                pending.append((doc, x, c))
                n_tokens += len(x)
                row += 1
            if boundary and row % boundary == 0 and pending:
                yield flush()
        if pending:
            yield flush()

__all__ = ["DType", "Device", "DocumentEncoder", "EncodedWindow", "EncoderConfig", "resolve_device", "resolve_dtype"]
