"""Static sharding for schedulers other than Ray (Slurm arrays, Kubernetes jobs, plain shells).

    mice-index build --corpus C --index I --num-shards 4 --shard-id 0   # ... one per slice id 0..3
    mice-index merge --index I                                          # once all four finished

Slice i of N encodes the build shards j with j % N == i (round robin over whole build shards of
`shard_docs` consecutive documents, so no slice needs the corpus size up front); every slice
streams the whole corpus (reading is cheap next to encoding) and skips the other slices'
documents. The first slice to arrive trains the codec and publishes it (atomic rename; the others
load the published parameters, so every slice encodes with the same codec). Each slice writes
`slices/<i>-of-<N>.json` when done; `merge` checks all slices and shards are there, verifies every
shard's checksums, builds the BM25/dense candidate indexes and writes the manifest with
complete=true. The merged index is identical to the single-process build of the same corpus.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mice_index.build import BuildConfig, _Builder, _load_dense
from mice_index.codec import Codec
from mice_index.distributed.shards import (
    FAULT_ENV,
    check_same_ids,
    committed_shards,
    encode_shard,
    finalize,
    publish_codec,
    shard_blocks,
)
from mice_index.encoder import DocumentEncoder
from mice_index.errors import IndexError_, MiceIndexError
from mice_index.model import MiceModel
from mice_index.store import layout as L
from mice_index.store.lock import LOCK, IndexLock
from mice_index.store.codecs import load_codec
from mice_index.store.manifest import (CodecInfo, DenseInfo, Manifest, ModelInfo, index_info, new_manifest,
                                       read_manifest, write_manifest)

log = logging.getLogger(__name__)

SLICES_DIR = "slices"
# What a folder may hold before its first manifest while several slices start at once.
_STARTING = {L.CODEC_DIR, L.SHARDS_DIR, SLICES_DIR, L.MANIFEST + ".tmp"}


@dataclass(frozen=True)
class SliceResult:
    path: Path
    slice_id: int
    num_slices: int
    shards: list[int]  # build shards this slice is responsible for
    encoded_docs: int  # documents encoded by this call (0 when all its shards were committed)
    num_docs: int  # documents in the whole corpus
    seconds: float


def check_url(index: str | os.PathLike) -> Path:
    """The store commits shards by renaming folders, which object stores cannot do atomically."""
    s = str(index)
    if "://" in s and not s.startswith("file://"):
        raise MiceIndexError(f"--index {s}: fsspec URLs are not supported by the shard store yet (it commits "
                             "shards by atomic folder renames); use a shared file system mounted at the same "
                             "path on every worker (NFS, Lustre, a FUSE mount of the bucket)")
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def make_encoder(b: _Builder) -> tuple[DocumentEncoder, DenseInfo | None]:
    """The document encoder of the single-process build (same settings, same dense source)."""
    tower, dmodel, dtower, dense_desc = _load_dense(b.model, b.cfg)
    encoder = DocumentEncoder(b.model, b.encoder_config(), tower, dmodel, dtower)
    if dense_desc is not None:
        dense_desc = replace(dense_desc, dim=encoder.dense_dim)
    return encoder, dense_desc


def manifest_for(b: _Builder, codec: Codec, dense: DenseInfo | None) -> Manifest:
    """The single-process build's first (incomplete) manifest for an already published codec."""
    assert (b.root / L.CODEC_DIR).is_dir()
    return new_manifest(corpus=str(b.corpus), model=ModelInfo.of(b.model, b.model_name), settings=b.settings,
                        codec=CodecInfo.of(codec), dense=dense)


def open_shared(b: _Builder, encoder: DocumentEncoder, dense: DenseInfo | None) -> Manifest:
    """Join (or start) an index that several slices write at once; returns its manifest."""
    root = b.root
    if (root / L.MANIFEST).exists():
        m = b.prepare()  # compatible + incomplete, else a clear error
        assert m is not None
        return m
    if root.exists():
        foreign = [e.name for e in root.iterdir() if e.name not in _STARTING
                   and not e.name.startswith((L.TMP_PREFIX, LOCK))]
        if foreign:
            raise IndexError_(f"{root}: folder is not empty and holds no index ({foreign[0]!r}, ...); "
                              "refusing to write into it")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / L.CODEC_DIR).is_dir():
        fitted = b.fit_codec(encoder)
        if publish_codec(root, fitted):
            log.info("published the %s codec", fitted.name)
    codec = published_codec(b, root)
    m = manifest_for(b, codec, dense)
    if not (root / L.MANIFEST).exists():
        write_manifest(root, m)  # racing slices write the same content
    return read_manifest(root)


def published_codec(b: _Builder, root: Path) -> Codec:
    """The codec whose parameters were published in INDEX/codec (by this or another slice)."""
    import numpy as np

    from mice_index.codec import codec_from_params, make_codec

    fresh = make_codec(b.codec_name, dim=b.model.config.hidden_size)
    config = {"codec": fresh.name, "dim": fresh.dim, "options": fresh.options()}
    arrays = {p.stem: np.load(p, allow_pickle=False) for p in sorted((root / L.CODEC_DIR).glob("*.npy"))}
    return codec_from_params(config, arrays)


def build_slice(corpus, index, config: BuildConfig, num_slices: int, slice_id: int, *,
                model: MiceModel | None = None, progress: Callable[[int], None] | None = None) -> SliceResult:
    """Encode slice `slice_id` of `num_slices` of `corpus` into the shared index folder `index`."""
    if num_slices < 1 or not 0 <= slice_id < num_slices:
        raise MiceIndexError(f"--shard-id must be in 0..{num_slices - 1} for --num-shards {num_slices}, got {slice_id}")
    if config.overwrite:
        raise MiceIndexError("--overwrite cannot be combined with --num-shards/--shard-id (slices run concurrently); "
                             "delete the index folder before starting the slices")
    t0 = time.perf_counter()
    root = check_url(index)
    b = _Builder(corpus, root, config, model, None)
    encoder, dense = make_encoder(b)
    if root.exists() and not root.is_dir():
        raise IndexError_(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    # slices share the index lock (a plain build or a merge holds it alone); one process per slice
    with IndexLock(root, shared=True, holder="another process (a build or a merge) holds this index"), \
            IndexLock(root, path=root / f"{LOCK}-slice-{L.shard_name(slice_id)}-of-{L.shard_name(num_slices)}",
                      holder=f"slice {slice_id} of {num_slices} is already being built by another process"):
        return _build_slice(b, encoder, dense, corpus, config, num_slices, slice_id, progress, t0)


def _build_slice(b: _Builder, encoder: DocumentEncoder, dense: DenseInfo | None, corpus, config: BuildConfig,
                 num_slices: int, slice_id: int, progress, t0: float) -> SliceResult:
    root = b.root
    m = open_shared(b, encoder, dense)
    codec = load_codec(root, m)
    S = config.shard_docs
    done = committed_shards(root, S)
    fault = os.environ.get(FAULT_ENV)
    mine, encoded, num_docs = [], 0, 0
    for j, start, docs in shard_blocks(b.docs(), S):
        num_docs = start + len(docs)
        if j % num_slices != slice_id:
            continue
        mine.append(j)
        if j in done:
            check_same_ids(root, done[j], docs, corpus)
        else:
            encode_shard(encoder, codec, root, j, start, docs, S, fault, fields=config.field_specs())
            encoded += len(docs)
        if progress:
            progress(len(docs))
    marker = {"slice_id": slice_id, "num_slices": num_slices, "num_docs": num_docs, "shard_docs": S,
              "shards": mine, "bm25": config.bm25, "dense_kind": config.dense_kind,
              "dense_nprobe": config.dense_nprobe}
    sdir = root / SLICES_DIR
    sdir.mkdir(exist_ok=True)
    L.write_json_atomic(sdir / _marker_name(slice_id, num_slices), marker)
    log.info("slice %d/%d done: %d shards, %d documents encoded", slice_id, num_slices, len(mine), encoded)
    return SliceResult(root, slice_id, num_slices, mine, encoded, num_docs, time.perf_counter() - t0)


def _marker_name(i: int, n: int) -> str:
    return f"{L.shard_name(i)}-of-{L.shard_name(n)}.json"


def merge_index(index) -> dict[str, Any]:
    """Assemble a complete index from the committed slices (see module doc); returns `info`."""
    root = check_url(index)
    read_manifest(root)  # a clear error before locking if this is no index
    with IndexLock(root, holder="another process (a build, a slice or a merge) is writing this index"):
        return _merge(root)


def _merge(root: Path) -> dict[str, Any]:
    m = read_manifest(root)
    if m.complete:
        log.info("%s is already complete", root)
        return index_info(root)
    sdir = root / SLICES_DIR
    markers = [json.loads(p.read_text()) for p in sorted(sdir.glob("*-of-*.json"))] if sdir.is_dir() else []
    if not markers:
        raise IndexError_(f"{root}: no slice has finished yet (no {SLICES_DIR}/*.json); run every "
                          "`mice-index build ... --num-shards N --shard-id i` first")
    n = {mk["num_slices"] for mk in markers}
    if len(n) > 1:
        raise IndexError_(f"{root}: slices were started with different --num-shards ({sorted(n)})")
    (num_slices,) = n
    have = {mk["slice_id"] for mk in markers}
    missing = [i for i in range(num_slices) if i not in have]
    if missing:
        raise IndexError_(f"{root}: slice(s) {', '.join(map(str, missing))} of {num_slices} have not finished; "
                          "run them (--shard-id ...) and merge again")
    first = markers[0]
    for key in ("num_docs", "shard_docs", "bm25", "dense_kind", "dense_nprobe"):
        if any(mk.get(key) != first.get(key) for mk in markers):
            raise IndexError_(f"{root}: slices disagree on {key} ({sorted({str(mk.get(key)) for mk in markers})})")
    S = first["shard_docs"]
    if S != m.settings.shard_docs:
        raise IndexError_(f"{root}: slices used shard_docs {S}, the manifest says {m.settings.shard_docs}")
    finalize(root, m, committed_shards(root, S), first["num_docs"], S, first["bm25"], first["dense_kind"],
             dense_nprobe=first.get("dense_nprobe"))
    L.remove(sdir)
    for f in root.glob(f"{LOCK}-slice-*"):
        L.remove(f)  # no slice can hold one: this merge holds the index lock exclusively
    return index_info(root)
