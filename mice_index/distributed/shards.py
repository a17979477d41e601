"""Engine-independent pieces of a distributed build: cutting the corpus stream into build shards,
encoding one shard (idempotently), finding committed shards (gaps allowed), publishing the codec
exactly once, and finalising an index whose shards were written by several processes.

Build shard j always holds corpus rows [j*S, (j+1)*S) (S = BuildConfig.shard_docs), and the
encoder's windows restart at every shard boundary, so a shard encoded on its own by any worker is
byte-identical to the same shard written by the single-process build.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from mice_index.candidates import DenseConfig
from mice_index.codec import Codec
from mice_index.encoder import DocumentEncoder
from mice_index.errors import IndexError_, MiceIndexError
from mice_index.sources import Document
from mice_index.store import layout as L
from mice_index.store.candidates_build import build_candidates
from mice_index.store.manifest import Manifest, ShardEntry, verify_shards, write_manifest
from mice_index.store.writer import ShardWriter

log = logging.getLogger(__name__)

# Test hook for fault injection inside the shard encoder: "fail:J" raises on build shard J,
# "kill:J:MARKER" SIGKILLs the worker process before committing shard J the first time
# (MARKER is a file created to remember that the kill already happened).
FAULT_ENV = "MICE_INDEX_TEST_SHARD_FAULT"


class ShardFault(MiceIndexError):
    """Raised by the fault-injection hook (tests only)."""


def shard_blocks(docs: Iterable[Document], shard_docs: int) -> Iterator[tuple[int, int, list[Document]]]:
    """(shard index, start row, documents) for consecutive blocks of `shard_docs` documents."""
    block: list[Document] = []
    j = 0
    for doc in docs:
        block.append(doc)
        if len(block) == shard_docs:
            yield j, j * shard_docs, block
            j, block = j + 1, []
    if block:
        yield j, j * shard_docs, block


def committed_shards(root: Path, shard_docs: int) -> dict[int, ShardEntry]:
    """{shard index: manifest entry} of every committed shard folder (gaps allowed; sizes checked,
    uncommitted `.tmp-*` folders ignored: each belongs to the worker writing it)."""
    sdir = Path(root) / L.SHARDS_DIR
    out: dict[int, ShardEntry] = {}
    if not sdir.is_dir():
        return out
    for d in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(L.TMP_PREFIX)):
        if not (d.name.isdigit() and len(d.name) == len(L.shard_name(0))):
            raise IndexError_(f"{d}: unexpected folder in {sdir}; the index is damaged")
        j = int(d.name)
        meta = L.read_json(d / L.SHARD_META, "shard metadata")
        if meta["start_row"] != j * shard_docs:
            raise IndexError_(f"{d / L.SHARD_META}: starts at row {meta['start_row']}, expected {j * shard_docs}")
        for rel, f in meta["files"].items():
            if not (d / rel).is_file() or (d / rel).stat().st_size != f["bytes"]:
                raise IndexError_(f"{d / rel}: missing or wrong size (shard {d.name} is damaged; delete that "
                                  "shard folder and re-run to rebuild it)")
        out[j] = ShardEntry.read(d)
    return out


def check_same_ids(root: Path, entry: ShardEntry, docs: list[Document], corpus) -> None:
    """A committed shard must hold exactly the ids the corpus has at its rows (resume safety)."""
    import pyarrow.parquet as pq

    path = Path(root) / L.SHARDS_DIR / entry.name / L.DOCS
    stored = pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()
    for k, (a, d) in enumerate(zip(stored, docs)):
        if a != d.doc_id:
            raise IndexError_(f"{root}: the corpus differs from the one this unfinished index was started with: "
                              f"row {entry.start_row + k} is {a!r} in the index, {d.doc_id!r} in {corpus}; "
                              "pass --overwrite to start over")
    if len(stored) != len(docs):
        raise IndexError_(f"{root}: shard {entry.name} holds {len(stored)} documents but the corpus has "
                          f"{len(docs)} at its rows; the corpus changed since the build started")


def _fault(fault: str | None, j: int, stage: str) -> None:
    if not fault:
        return
    kind, _, rest = fault.partition(":")
    target, _, marker = rest.partition(":")
    if target != str(j):
        return
    if kind == "fail" and stage == "start":
        raise ShardFault(f"injected failure on build shard {j} ({FAULT_ENV})")
    if kind == "kill" and stage == "precommit" and marker and not os.path.exists(marker):
        Path(marker).write_text("killed\n")
        os.kill(os.getpid(), signal.SIGKILL)


def encode_shard(encoder: DocumentEncoder, codec: Codec, root: Path, j: int, start_row: int,
                 docs: list[Document], shard_docs: int, fault: str | None = None, fields=()) -> ShardEntry:
    """Encode and atomically commit build shard j (rows start_row..); idempotent: a shard that is
    already committed (e.g. by an attempt whose reply was lost) is returned as is, never rewritten.
    `fields`: the build's declared document fields (sources.fields.Field), columns of its doc table."""
    root = Path(root)
    final = root / L.SHARDS_DIR / L.shard_name(j)
    if (final / L.SHARD_META).is_file():
        return ShardEntry.read(final)
    _fault(fault, j, "start")
    writer = ShardWriter(root, j, start_row, codec, fields=fields)
    try:
        for win in encoder.windows(docs, start_row, shard_docs):
            writer.add(win)
        assert writer.num_docs == len(docs), (writer.num_docs, len(docs))
        _fault(fault, j, "precommit")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ShardEntry.read(final)


def publish_codec(root: Path, codec: Codec) -> bool:
    """Write the codec parameters to INDEX/codec unless another process already did (first one
    wins, by an atomic rename of a private tmp folder). Returns True if this call published."""
    config, arrays = codec.to_params()
    final = Path(root) / L.CODEC_DIR
    if final.is_dir():
        return False
    tmp = Path(root) / f"{L.TMP_PREFIX}{L.CODEC_DIR}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a, allow_pickle=False)
    L.fsync_tree(tmp)
    try:
        os.rename(tmp, final)  # fails if `final` exists and is not empty
    except OSError:
        L.remove(tmp)
        if not final.is_dir():
            raise
        return False
    L.fsync_dir(final.parent)
    return True


def finalize(root: Path, m: Manifest, entries: dict[int, ShardEntry], num_docs: int, shard_docs: int,
             bm25: bool, dense_kind: str, dense_nprobe: int | None = None) -> Manifest:
    """All shards of a `num_docs`-document corpus committed -> verify their checksums, build the
    candidate indexes, write the manifest with complete=true (the single-process build's last
    step, through the same store functions); returns the committed manifest."""
    root = Path(root)
    expected = -(-num_docs // shard_docs)
    missing = [j for j in range(expected) if j not in entries]
    extra = sorted(j for j in entries if j >= expected)
    if missing:
        raise IndexError_(f"{root}: build shard(s) {', '.join(L.shard_name(j) for j in missing[:10])} "
                          f"{'are' if len(missing) > 1 else 'is'} not committed yet")
    if extra:
        raise IndexError_(f"{root}: shard {L.shard_name(extra[0])} lies beyond the corpus end "
                          f"({num_docs} documents); the corpus changed since the build started")
    m = replace(m, shards=tuple(entries[j] for j in range(expected)))
    if m.num_docs != num_docs:
        raise IndexError_(f"{root}: committed shards hold {m.num_docs} documents, the corpus has {num_docs}")
    verify_shards(root, m, deep=True)
    write_manifest(root, m)
    m = build_candidates(root, m, bm25=bm25, dense=DenseConfig(kind=dense_kind, nprobe=dense_nprobe))
    m = replace(m, complete=True)
    write_manifest(root, m)
    return m
