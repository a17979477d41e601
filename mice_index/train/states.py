"""Frozen-bottom document states for training and evaluation, computed once and cached.

With the bottom frozen (it equals the backbone's), a document's layer-ℓ* states never change
during training, so they are computed once per corpus (one bottom pass, which also yields the
backbone's dense embedding through the DenseTower) and kept as fp16 numpy arrays:

    <cache>/<fingerprint>/<corpus key>/states.f16   concatenated [sum T_i, D] float16
                                      /offsets.npy  int64 [N+1]
                                      /dense.npy    float32 [N, D] (when a dense tower exists)
                                      /meta.json    fingerprint, doc ids hash, counts

A cache whose fingerprint differs from the model's is refused (IndexError_), never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mice_index.errors import IndexError_
from mice_index.dense_tower import DenseTower
from mice_index.model import MiceModel
from mice_index.text import bounded_token_ids

log = logging.getLogger(__name__)


@dataclass
class CorpusStates:
    """Layer-ℓ* states of a corpus (rows 0..N-1) and, optionally, dense embeddings."""

    doc_ids: list[str]
    flat: np.ndarray  # [sum T_i, D] float16 (may be a memmap)
    offsets: np.ndarray  # [N+1] int64
    dense: np.ndarray | None  # [N, D] float32, L2-normalised
    fingerprint: str

    def __len__(self) -> int:
        return len(self.doc_ids)

    def get(self, row: int) -> np.ndarray:
        return self.flat[self.offsets[row] : self.offsets[row + 1]]

    def tensors(self, rows) -> list[torch.Tensor]:
        return [torch.from_numpy(np.asarray(self.get(int(r)), dtype=np.float32)) for r in rows]


def _ids_hash(doc_ids: list[str]) -> str:
    h = hashlib.sha256()
    for d in doc_ids:
        h.update(d.encode() + b"\0")
    return h.hexdigest()[:16]


@torch.inference_mode()
def encode_corpus(model: MiceModel, texts: list[str], tower: DenseTower | None = None,
                  batch_size: int = 32, progress=None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Bottom states (fp16, unpadded) and dense embeddings of `texts`, batched by length."""
    model.eval()
    input_ids = bounded_token_ids(model.tokenizer, list(texts), model.config.max_doc_length)
    lengths = np.array([len(x) for x in input_ids])
    order = np.argsort(-lengths, kind="stable")
    states: list[np.ndarray | None] = [None] * len(texts)
    dense = np.zeros((len(texts), model.config.hidden_size), np.float32) if tower is not None else None
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        T = int(lengths[rows].max())
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : lengths[r]] = torch.tensor(input_ids[r])
            mask[i, : lengths[r]] = 1
        out = model.encode_document_batch(ids.to(model.device), mask.to(model.device))
        if tower is not None:
            dense[rows] = tower(out, mask.to(out.device)).float().cpu().numpy()
        for i, r in enumerate(rows):
            states[r] = out[i, : lengths[r]].to(torch.float16).cpu().numpy()
        if progress is not None:
            progress(len(rows))
    return states, dense  # type: ignore[return-value]


def load_or_encode(model: MiceModel, doc_ids: list[str], texts: list[str], cache_dir: str | Path | None,
                   key: str, tower: DenseTower | None = None, batch_size: int = 32,
                   progress=None) -> CorpusStates:
    """States of a corpus from `cache_dir` if present (and made by the same bottom), else encoded
    (and written there when `cache_dir` is given)."""
    fp = model.fingerprint()
    folder = Path(cache_dir) / key if cache_dir else None
    if folder is not None and (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        if meta["fingerprint"] != fp:
            raise IndexError_(f"{folder}: states were computed by a model with fingerprint "
                              f"{meta['fingerprint']}, but this model's bottom is {fp}; use another cache "
                              "folder or the matching model")
        if meta["ids_hash"] == _ids_hash(doc_ids) and (tower is None or (folder / "dense.npy").exists()):
            offsets = np.load(folder / "offsets.npy")
            flat = np.memmap(folder / "states.f16", dtype=np.float16, mode="r",
                             shape=(int(offsets[-1]), meta["dim"]))
            dense = np.load(folder / "dense.npy") if (folder / "dense.npy").exists() else None
            log.info("states of %s read from %s", key, folder)
            return CorpusStates(list(doc_ids), flat, offsets, dense, fp)
        log.info("%s: cached states are for another document list; re-encoding", folder)
    states, dense = encode_corpus(model, texts, tower, batch_size, progress)
    offsets = np.zeros(len(states) + 1, np.int64)
    offsets[1:] = np.cumsum([s.shape[0] for s in states])
    flat = np.concatenate(states) if states else np.zeros((0, model.config.hidden_size), np.float16)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        flat.tofile(folder / "states.f16")
        np.save(folder / "offsets.npy", offsets)
        if dense is not None:
            np.save(folder / "dense.npy", dense)
        (folder / "meta.json").write_text(json.dumps({"fingerprint": fp, "ids_hash": _ids_hash(doc_ids),
                                                      "num_docs": len(doc_ids), "dim": flat.shape[1]}))
    return CorpusStates(list(doc_ids), flat, offsets, dense, fp)


def round_trip(states: CorpusStates, codec_name: str, fit_tokens: int = 100_000, seed: int = 0,
               chunk_tokens: int = 65_536) -> CorpusStates:
    """The same corpus with every state encoded and decoded by `codec_name`, fitted as `build`
    fits it (on the corpus's first `fit_tokens` tokens): what a model sees through an index of that
    codec. Used to train codec-aware models (`model.train_codec`) and to measure codec loss."""
    from mice_index.codec import make_codec

    codec = make_codec(codec_name, dim=states.flat.shape[1])
    if codec.needs_fit:
        codec.fit(np.asarray(states.flat[:fit_tokens], dtype=np.float32), seed=seed)
    flat = np.empty(states.flat.shape, dtype=np.float16)
    for a in range(0, flat.shape[0], chunk_tokens):
        x = np.asarray(states.flat[a:a + chunk_tokens], dtype=np.float32)
        flat[a:a + len(x)] = codec.decode(codec.encode(x))
    return CorpusStates(states.doc_ids, flat, states.offsets, states.dense, states.fingerprint)
