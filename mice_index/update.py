"""Living indexes: add, update, delete documents and compact segments (`mice-index add / delete / compact`).

    add_documents("idx/", "new.jsonl")                  # new ids appended as a new segment
    add_documents("idx/", "changed.jsonl", update=True)  # existing ids replaced (delete + add)
    delete_documents("idx/", ["d3", "d7"])
    compact_index("idx/")                               # drop deleted rows, merge small segments

The Lucene model (store/segments.py): build shards are immutable segments; an add encodes only
the new documents (the index's model, encoder settings and stored codec: never refitted) into
new segments after the last store row; a delete writes a tombstone file of deleted store rows
(every row of each id); the manifest, written last and atomically with a new generation, is the
commit point. Readers see one commit point, never a half-applied change; a kill -9 at any moment
leaves the previous or the next commit, and re-running the same command finishes it (an input
whose digest equals the last commit's is reported as already applied).

BM25 and the dense index are re-derived over the live rows from stored texts and vectors
(store/candidates.py), so the result of any sequence of adds and deletes equals a fresh build of
the final corpus in the same row order (tests/test_update.py). Deleted rows keep their states
until `compact` rewrites the segments without them (renumbering rows, merging small segments),
which a later add / delete runs by itself when `UpdateConfig`'s policy says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mice_index.errors import IndexError_, MiceIndexError
from mice_index.model import MiceModel
from mice_index.sources import Document, read_documents
from mice_index.store import layout as L
from mice_index.store.candidates import derive_candidates
from mice_index.store.generation import new_generation
from mice_index.store.lock import IndexLock
from mice_index.store.manifest import (CodecDrift, LastOp, Manifest, Previous, Settings, ShardEntry, index_info,
                                       read_manifest, write_manifest)
from mice_index.store.segments import check_rows, collect, referenced, write_tombstones

log = logging.getLogger(__name__)

__all__ = ["UpdateConfig", "UpdateResult", "add_documents", "compact_index", "delete_documents"]

_HOLDER = "another process is writing this index (build / add / delete / compact)"


@dataclass(frozen=True)
class UpdateConfig:
    model: str | None = None  # None: the index's own model (its fingerprint is checked either way)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] | None = None  # None: the dtype the index was built with
    # compaction policy, checked after every add / delete (the Lucene merge policy's role)
    auto_compact: bool = True
    compact_deleted_fraction: float = 0.2  # compact when deleted rows / store rows reaches this
    compact_small_segments: int = 8  # ... or when more segments than this hold < small_segment of shard_docs
    small_segment: float = 0.25
    drift_sample_docs: int = 64  # build documents re-encoded once (first add, trained codecs) for the baseline error

    def __post_init__(self) -> None:
        if not 0 < self.compact_deleted_fraction <= 1:
            raise MiceIndexError(f"compact_deleted_fraction must be in (0, 1], got {self.compact_deleted_fraction}")
        if self.compact_small_segments < 1 or not 0 < self.small_segment <= 1 or self.drift_sample_docs < 1:
            raise MiceIndexError("compact_small_segments and drift_sample_docs must be >= 1, small_segment in (0, 1]")


@dataclass(frozen=True)
class UpdateResult:
    path: Path
    op: Literal["add", "delete", "compact"]
    added: int  # new documents (ids not in the index before)
    updated: int  # documents replaced (add with update=True)
    deleted: int  # documents deleted (delete), or deleted rows dropped (compact)
    already_applied: bool  # the same input was the last commit (a re-run after a kill): nothing done
    compacted: bool  # this call compacted the index (compact, or the policy after an add / delete)
    seconds: float
    info: dict[str, Any]


# -- commit --
def _complete_manifest(root: Path) -> Manifest:
    m = read_manifest(root)
    if not m.complete:
        raise IndexError_(f"{root}: index is incomplete (its build was interrupted); finish it by re-running the same "
                          "`mice-index build` command before adding or deleting documents")
    return m


def _check_supported(m: Manifest, root: Path, what: str) -> None:
    """IndexError_ for an index whose rows carry more than this module rewrites (passages): `add`
    and `compact` would write segments without those columns."""
    if m.settings.passages is not None:
        raise IndexError_(f"{root}: {what} is not supported yet for an index built with --passages; rebuild it "
                          "with `mice-index build --overwrite` instead")


def _fields(m: Manifest) -> tuple:
    """The index's declared document fields (sources.fields.Field), carried by added and compacted rows."""
    from mice_index.sources.fields import Field

    return tuple(Field(f.name, f.type) for f in m.settings.fields)


def _keep(m: Manifest) -> set[str]:
    return referenced(m) | set(m.previous.files if m.previous else ())


def _commit(root: Path, old: Manifest, shards: list[ShardEntry], deleted: np.ndarray, op: str, digest: str,
            **changes: Any) -> Manifest:
    """Write the tombstones and candidate indexes of the new state, then its manifest (the commit
    point), then remove the files of the commit before `old` -> the new manifest."""
    from mice_index.store.reader import IndexReader

    gen = new_generation()
    tag = gen[:12]
    new = replace(old, shards=tuple(shards))
    check_rows(new)
    new = replace(new, tombstones=write_tombstones(root, f"tombstones-{tag}.npy", deleted) if len(deleted) else None)
    reader = IndexReader(root, new, writing=True)
    candidates = derive_candidates(root, reader, old.candidates,
                                   {"bm25": f"{L.BM25_DIR}-{tag}", "dense": f"{L.DENSE_DIR}-{tag}"})
    new = replace(new, candidates=candidates, generation=gen, last_op=LastOp(op=op, digest=digest),
                  previous=Previous(generation=old.generation, files=tuple(sorted(referenced(old)))), **changes)
    write_manifest(root, new)  # the commit point
    collect(root, referenced(new) | referenced(old))  # the commit before `old` is no longer readable
    log.info("%s: committed %s (generation %s): %d live of %d rows", root, op, tag, reader.num_live, reader.num_docs)
    return new


def _live_rows_by_id(reader) -> dict[str, list[int]]:
    """{doc_id: its live store rows} (several rows share an id when documents are split into passages)."""
    out: dict[str, list[int]] = {}
    deleted = reader.deleted
    for s in reader._shards:
        for i, doc_id in enumerate(s.table(["doc_id"]).column("doc_id").to_pylist()):
            row = s.start + i
            if deleted is None or not deleted[row]:
                out.setdefault(doc_id, []).append(row)
    return out


def _shard_entry(writer) -> ShardEntry:
    """Commit `writer`'s segment -> its manifest entry."""
    writer.commit()
    return ShardEntry.read(writer.final)


class _Segments:
    """Appends encoded windows to new segments of `size` documents from segment number `first` on,
    committing each full one into `shards` (a list of ShardEntry, extended in place)."""

    def __init__(self, root: Path, first: int, size: int, codec, fields, shards: list) -> None:
        self.root, self.idx, self.size, self.codec, self.fields, self.shards = root, first, size, codec, fields, shards
        self.writer = None

    def room(self) -> int:
        """Documents the open segment still takes."""
        return self.size - (self.writer.num_docs if self.writer is not None else 0)

    def add(self, win) -> None:
        from mice_index.store.writer import ShardWriter
        if self.writer is None:
            self.writer = ShardWriter(self.root, self.idx, win.start_row, self.codec, fields=self.fields)
        self.writer.add(win)
        if self.writer.num_docs == self.size:
            self.shards.append(_shard_entry(self.writer))
            self.writer, self.idx = None, self.idx + 1

    def finish(self) -> None:
        if self.writer is not None:
            self.shards.append(_shard_entry(self.writer))
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _next_shard(m: Manifest) -> int:
    return max((int(s.name) for s in m.shards if s.name.isdigit()), default=-1) + 1


def _result(root: Path, op, t0: float, added=0, updated=0, deleted=0, already=False, compacted=False) -> UpdateResult:
    return UpdateResult(root, op, added, updated, deleted, already, compacted, time.perf_counter() - t0,
                        index_info(root))


def _ids_list(ids: list[str], what: str, total: int) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    return f"{len(ids)} of the {total} {what} ({shown}{', ...' if len(ids) > 5 else ''})"


# -- add --
def _read(corpus, settings: Settings, fields: tuple):
    return read_documents(corpus, id_field=settings.id_field, text_field=settings.text_field,
                          title_field=settings.title_field, fields=fields)


def _scan(corpus, settings: Settings, update: bool, fields: tuple) -> tuple[list[str], str]:
    """Ids of the corpus to add (duplicates inside it are a SourceError of the reader) and a digest
    of its content (re-running the same add after a kill is recognised by it)."""
    h = hashlib.sha256(f"add update={update}\n".encode())
    ids = []
    for d in _read(corpus, settings, fields):
        ids.append(d.doc_id)
        for part in (d.doc_id, d.title, d.text, repr(d.fields)):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    if not ids:
        raise IndexError_(f"{corpus}: no documents to add")
    return ids, h.hexdigest()


def _checked_model(m: Manifest, config: UpdateConfig, model: MiceModel | None, root: Path) -> MiceModel:
    from mice_index.defaults import load_model

    mice = model if model is not None else load_model(config.model or m.model.name)
    if mice.fingerprint() != m.model.fingerprint:
        raise IndexError_(f"{root}: holds states of model {m.model.name!r} (fingerprint "
                          f"{m.model.fingerprint}), not of the given model (fingerprint {mice.fingerprint()}); "
                          "refusing to mix two models' states (pass the index's model, or build a new index)")
    return mice


def _build_config(m: Manifest, config: UpdateConfig, **extra: Any):
    """The BuildConfig of the settings the index records (encoder, codec, dense; `extra` added)."""
    from mice_index.build import BuildConfig

    s = m.settings
    return BuildConfig(model=config.model, codec=s.codec, max_doc_length=s.max_doc_length,
                       batch_tokens=s.batch_tokens, window_docs=s.window_docs, window_tokens=s.window_tokens,
                       shard_docs=s.shard_docs, device=config.device, dtype=config.dtype or s.dtype or "auto",
                       dense=s.dense, prune=s.prune, fit_tokens=s.fit_tokens, seed=s.seed, id_field=s.id_field,
                       text_field=s.text_field, title_field=s.title_field,
                       fields=tuple(f"{f.name}:{f.type}" for f in s.fields), **extra)


def _encoder(m: Manifest, mice: MiceModel, config: UpdateConfig, root: Path):
    """The build's encoder pipeline with the settings the index records (build.py)."""
    from mice_index.build import _load_dense
    from mice_index.encoder import DocumentEncoder, EncoderConfig

    s, cfg = m.settings, _build_config(m, config)
    tower, dmodel, dtower, desc = _load_dense(mice, cfg)
    if (desc is None) != (m.dense is None):
        raise IndexError_(f"{root}: the index {'has no' if m.dense is None else 'has'} dense vectors, but the dense "
                          f"model {'can' if m.dense is None else 'cannot'} be loaded now; cannot add consistently")
    ecfg = EncoderConfig(max_doc_length=s.max_doc_length or mice.config.max_doc_length, batch_tokens=s.batch_tokens,
                         window_docs=s.window_docs, window_tokens=s.window_tokens, device=config.device,
                         dtype=cfg.dtype, prune=s.prune)
    return DocumentEncoder(mice, ecfg, tower, dmodel, dtower)


def _squared_error(codec, states: np.ndarray, limit: int = 4096) -> tuple[float, float]:
    """(sum ||x - decode(encode(x))||², sum ||x||²) over the first `limit` tokens of `states` [T, D]."""
    x = np.asarray(states[:limit], dtype=np.float32)
    rec = codec.decode_torch(codec.encode(x)).float().numpy()
    return float(((x - rec) ** 2).sum()), float((x ** 2).sum())


def _baseline_error(reader, encoder, codec, n: int) -> float | None:
    """The codec's relative error on the last `n` live build documents, re-encoded from their stored
    texts (the build's own states are stored only encoded): the reference of the drift. The last
    ones, not the first: the codec was fitted on the first tokens of the build, and documents of
    its fit sample would make the reference optimistic (on indexes larger than that sample)."""
    rows = reader.live_rows()[-n:].tolist()
    docs = [Document(i, text, title) for i, (title, text) in zip(reader.doc_ids_of(rows), reader.texts(rows))]
    se = ss = 0.0
    for win in encoder.windows(docs, 0):
        if win.states is None:
            return None
        a, b = _squared_error(codec, win.states)
        se, ss = se + a, ss + b
    return se / ss if ss else None


def _drift(old: CodecDrift | None, baseline: float | None, se: float, ss: float, docs: int) -> CodecDrift:
    """The manifest's `codec_drift` after adding `docs` documents whose states' codec error was
    sum ||x - x̂||² = `se` over sum ||x||² = `ss` (kept through compaction, reset by `--refit`)."""
    old = old or CodecDrift()
    se, ss = old.added_squared_error + se, old.added_squared_norm + ss
    rel = se / ss if ss else None
    return CodecDrift(baseline_relative_error=baseline, added_relative_error=rel, added_squared_error=se,
                      added_squared_norm=ss, added_docs=old.added_docs + docs,
                      ratio=round(rel / baseline, 4) if rel is not None and baseline else None)


def add_documents(index: str | Path, corpus, update: bool = False, config: UpdateConfig = UpdateConfig(), *,
                  model: MiceModel | None = None, progress: Callable[[int], None] | None = None) -> UpdateResult:
    """Add the documents of `corpus` (any source `build` reads) to the index in `index`.

    Ids new to the index are appended; an id already in it is an IndexError_ (naming how many and
    which) unless `update`, which replaces every row of that id. The index's model (or `model` /
    `config.model`, whose fingerprint must equal the index's), encoder settings and codec are used;
    BM25 and dense are re-derived over the live rows. Nothing is written when the input is refused.
    Raises IndexError_ (bad index / input), SourceError (unreadable corpus), IndexBusyError."""
    t0, root = time.perf_counter(), Path(index)
    _complete_manifest(root)  # a missing / incomplete index: its own error, before the lock
    with IndexLock(root, holder=_HOLDER):
        m = _complete_manifest(root)
        _check_supported(m, root, "add")
        fields = _fields(m)
        ids, digest = _scan(corpus, m.settings, update, fields)
        if m.last_op == LastOp("add", digest):
            log.warning("%s: these documents were the last commit already (a re-run?): nothing to add", root)
            return _result(root, "add", t0, already=True, compacted=_maybe_compact(root, config))
        from mice_index.store.codecs import load_codec
        from mice_index.store.reader import IndexReader

        reader = IndexReader(root, m, writing=True)
        existing = _live_rows_by_id(reader)
        present = [i for i in ids if i in existing]
        if present and not update:
            raise IndexError_(f"{root}: {_ids_list(present, 'documents to add', len(ids))} are already in the index; "
                              "pass --update (update=True) to replace them")
        mice = _checked_model(m, config, model, root)
        collect(root, _keep(m))  # leftovers of an interrupted run
        encoder = _encoder(m, mice, config, root)
        codec = load_codec(root, m)
        drift = codec.needs_fit  # a fixed codec (fp32 / fp16 / int8) has no codebooks to drift from
        if not drift:
            baseline = None
        elif m.codec_drift is not None:
            baseline = m.codec_drift.baseline_relative_error
        else:
            baseline = _baseline_error(reader, encoder, codec, config.drift_sample_docs)
        S, start, idx = m.settings.shard_docs, reader.num_docs, _next_shard(m)
        shards, err = list(m.shards), [0.0, 0.0]
        segments = _Segments(root, idx, S, codec, fields, shards)
        docs = _read(corpus, m.settings, fields)
        try:
            for win in encoder.windows(docs, 0, S):
                win = replace(win, start_row=win.start_row + start)
                if drift and win.states is not None:
                    a, b = _squared_error(codec, win.states)
                    err = [err[0] + a, err[1] + b]
                segments.add(win)
                if progress:
                    progress(len(win.docs))
            segments.finish()
        except BaseException:
            segments.abort()
            raise
        dead = np.array([r for i in present for r in existing[i]], dtype=np.int64)
        tomb = np.union1d(reader.deleted_rows, dead)
        _commit(root, m, shards, tomb, "add", digest,
                codec_drift=_drift(m.codec_drift, baseline, *err, len(ids)) if drift else None)
        compacted = _maybe_compact(root, config)
    return _result(root, "add", t0, added=len(ids) - len(present), updated=len(present), compacted=compacted)


# -- delete --
def delete_documents(index: str | Path, ids: Iterable[str], config: UpdateConfig = UpdateConfig()) -> UpdateResult:
    """Delete the documents `ids` (every store row of each) from the index in `index`: a tombstone
    file + re-derived BM25 / dense, committed by a new manifest. IndexError_ naming how many and
    which ids the index does not hold (nothing is deleted then), and for deleting every document."""
    t0, root = time.perf_counter(), Path(index)
    ids = list(dict.fromkeys(str(i) for i in ids))
    if not ids:
        raise IndexError_(f"{root}: no document ids to delete")
    digest = hashlib.sha256(("delete\n" + "\n".join(sorted(ids))).encode("utf-8", "surrogatepass")).hexdigest()
    _complete_manifest(root)
    with IndexLock(root, holder=_HOLDER):
        m = _complete_manifest(root)
        if m.last_op == LastOp("delete", digest):
            log.warning("%s: these ids were deleted by the last commit already (a re-run?): nothing to delete", root)
            return _result(root, "delete", t0, already=True, compacted=_maybe_compact(root, config))
        from mice_index.store.reader import IndexReader

        reader = IndexReader(root, m, writing=True)
        existing = _live_rows_by_id(reader)
        unknown = [i for i in ids if i not in existing]
        if unknown:
            raise IndexError_(f"{root}: {_ids_list(unknown, 'ids to delete', len(ids))} are not in the index; "
                              "nothing was deleted")
        dead = np.array([r for i in ids for r in existing[i]], dtype=np.int64)
        if dead.size >= reader.num_live:
            raise IndexError_(f"{root}: deleting these {len(ids)} ids would leave the index empty; build a new index "
                              "instead")
        collect(root, _keep(m))
        _commit(root, m, list(m.shards), np.union1d(reader.deleted_rows, dead), "delete", digest)
        compacted = _maybe_compact(root, config)
    return _result(root, "delete", t0, deleted=len(ids), compacted=compacted)


# -- compact --
def _policy(m: Manifest, config: UpdateConfig) -> str | None:
    """Why the index should be compacted now (None: it should not)."""
    rows, deleted = m.num_docs, m.tombstones.count if m.tombstones else 0
    if rows and deleted / rows >= config.compact_deleted_fraction:
        return f"{deleted} of {rows} rows deleted"
    small = sum(s.num_docs < config.small_segment * m.settings.shard_docs for s in m.shards[:-1])
    if small > config.compact_small_segments:
        return f"{small} small segments"
    return None


def _maybe_compact(root: Path, config: UpdateConfig) -> bool:
    m = read_manifest(root)
    why = _policy(m, config) if config.auto_compact else None
    if why is None:
        return False
    if m.settings.fields or m.settings.passages is not None:
        log.warning("%s: would compact (%s), but compaction does not support this index's fields / passages yet",
                    root, why)
        return False
    log.info("%s: compacting (%s)", root, why)
    _compact_locked(root, m)
    return True


def _compact_locked(root: Path, m: Manifest) -> int:
    """Rewrite the live rows into new full segments (stored codec columns copied as they are: no
    re-encoding) and commit them -> the number of deleted rows dropped."""
    import pyarrow.compute as pc

    from mice_index.encoder import EncodedWindow
    from mice_index.store.reader import IndexReader

    collect(root, _keep(m))
    reader = IndexReader(root, m, writing=True)
    fields = _fields(m)
    names = [f.name for f in fields]
    S, window = m.settings.shard_docs, max(1, min(m.settings.window_docs, m.settings.shard_docs))
    out_row, shards = 0, []
    segments = _Segments(root, _next_shard(m), S, reader.codec, fields, shards)
    try:
        for sh in reader._shards:
            table = sh.table(["doc_id", "title", "text", "num_tokens", "truncated", *names])
            live = np.arange(sh.num_docs)
            if reader.deleted is not None:
                live = live[~reader.deleted[sh.start: sh.start + sh.num_docs]]
            dense = np.load(sh.dir / L.DENSE, mmap_mode="r") if m.dense is not None else None
            pos = 0
            while pos < live.size:
                chunk = live[pos: pos + min(window, segments.room())]
                pos += chunk.size
                t = table.take(chunk)
                parts = reader.get_encoded((chunk + sh.start).tolist())
                values = list(zip(*(t.column(n).to_pylist() for n in names))) if names else [()] * chunk.size
                docs = [Document(i, x, ti, tuple(v)) for i, ti, x, v in zip(t.column("doc_id").to_pylist(),
                                                                            t.column("title").to_pylist(),
                                                                            t.column("text").to_pylist(), values)]
                segments.add(EncodedWindow(
                    out_row, docs, np.asarray(t.column("num_tokens").to_numpy(), np.int32), None,
                    None if dense is None else np.asarray(dense[chunk], np.float32),
                    np.asarray(pc.fill_null(t.column("truncated"), False).to_numpy(), bool),
                    {k: np.concatenate([p[k] for p in parts]) for k in reader.codec.columns()}))
                out_row += chunk.size
        segments.finish()
    except BaseException:
        segments.abort()
        raise
    dropped = int(reader.deleted_rows.size)
    digest = hashlib.sha256(f"compact {m.generation}".encode()).hexdigest()
    _commit(root, m, shards, np.zeros(0, np.int64), "compact", digest)  # codec_drift kept as it is
    return dropped


def _is_compact(m: Manifest) -> bool:
    return m.tombstones is None and all(s.num_docs == m.settings.shard_docs for s in m.shards[:-1])


def compact_index(index: str | Path, refit: bool = False, config: UpdateConfig = UpdateConfig(), *,
                  model: MiceModel | None = None) -> UpdateResult:
    """Rewrite the index in `index` without its deleted rows, into full segments (rows renumbered,
    BM25 / dense re-derived); a no-op on an index that is already compact. `refit`: fit the codec
    again on the live documents and re-encode them from their stored texts (a rebuild of the
    live corpus with the index's settings; the codec drift of `info` goes back to zero)."""
    t0, root = time.perf_counter(), Path(index)
    if refit:
        from mice_index.refit import refit_index

        refit_index(root, config, model=model)
        return _result(root, "compact", t0, compacted=True)
    _complete_manifest(root)
    with IndexLock(root, holder=_HOLDER):
        m = _complete_manifest(root)
        _check_supported(m, root, "compact")
        if _is_compact(m):
            log.info("%s: already compact (no deleted rows, full segments)", root)
            return _result(root, "compact", t0)
        dropped = _compact_locked(root, m)
    return _result(root, "compact", t0, deleted=dropped, compacted=True)
