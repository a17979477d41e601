"""The offline indexer: sources -> encoder -> codec -> store -> candidates (`mice-index build`).

    build_index("path/to/beir", "my-index", BuildConfig(codec="compact"))

The index is written as build shards of `shard_docs` consecutive documents, each committed
atomically, then the candidate indexes (BM25, dense) and finally the manifest with
`complete: true`. Killed at any moment, the same call resumes: committed shards are kept (their
documents are read but not encoded), the codec is never refitted, and the result is identical to
an uninterrupted build because windows/batches are aligned to shard boundaries.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mice_index.candidates import DenseConfig
from mice_index.codec import Codec, make_codec, resolve_codec_name
from mice_index.encoder import DocumentEncoder, EncoderConfig, resolve_device, resolve_dtype
from mice_index.errors import IndexError_, MiceIndexError, ModelError, os_errors
from mice_index.model import MiceModel
from mice_index.prune import PRUNE_RULES
from mice_index.sources import Document, count_documents, read_documents
from mice_index.sources.fields import Field, check_fields, parse_field
from mice_index.store import layout as L
from mice_index.store.lock import LOCK, IndexLock
from mice_index.store.candidates_build import build_candidates
from mice_index.store.codecs import load_codec, save_codec
from mice_index.store.manifest import (CodecInfo, DenseInfo, FieldSpec, Manifest, ModelInfo, Settings, ShardEntry,
                                       complete_index_error, index_info, new_manifest, read_manifest, write_manifest)
from mice_index.store.writer import ShardWriter

log = logging.getLogger(__name__)

DenseMode = Literal["auto", "none"]
# Test hook: "commit:K" SIGKILLs the process right after committing its K-th shard, "precommit:K"
# just before renaming the K-th shard's tmp folder, "candidates" before the candidate indexes.
KILL_ENV = "MICE_INDEX_TEST_KILL_AT"
_LEFTOVERS = {L.CODEC_DIR, L.TMP_PREFIX + L.CODEC_DIR, L.SHARDS_DIR, L.MANIFEST + ".tmp", LOCK}


@dataclass(frozen=True)
class BuildConfig:
    model: str | None = None  # MICE checkpoint / HF folder / hub id; None = the default model
    codec: str = "fp16"
    max_doc_length: int | None = None  # None: the model's
    batch_tokens: int = 8192
    window_docs: int = 1024
    window_tokens: int = 65536
    shard_docs: int = 8192
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA / AMX CPUs, else fp32
    dense: DenseMode = "auto"  # auto: dense vectors from the backbone (same pass when possible)
    dense_kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = "auto"  # auto: flat up to 50k docs, else ivfpq
    dense_nprobe: int | None = None  # ivf / ivfpq lists probed per query (None: the kind's default)
    # document-token pruning after the bottom (mice_index/prune.py): "none" stores every token's
    # state (the paper's form); "stopwords" drops punctuation and stopword states
    prune: str = "none"
    bm25: bool = True
    fit_tokens: int = 100_000  # codec training sample: the first tokens of the first shard (>= 39 x 2048)
    seed: int = 0
    overwrite: bool = False
    id_field: str = "_id"
    text_field: str = "text"
    title_field: str = "title"
    # document fields (metadata) for search filters: "NAME:TYPE" specs, TYPE int|float|str|bool,
    # NAME a JSONL key or a dotted path into nested objects (sources/fields.py); stored as columns
    # of the document table and recorded in the manifest (Settings.fields)
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            raise MiceIndexError("BuildConfig.fields is a tuple of 'NAME:TYPE' strings, got one string")
        self.field_specs()  # a bad --field spec -> one-line error before any work
        resolve_codec_name(self.codec)  # unknown codec -> CodecError before anything is loaded
        if self.shard_docs < 1 or self.fit_tokens < 1:
            raise MiceIndexError("shard_docs and fit_tokens must be >= 1")
        if self.dense not in ("auto", "none"):
            raise MiceIndexError(f"dense must be 'auto' or 'none', got {self.dense!r}")
        if self.prune not in PRUNE_RULES:
            raise MiceIndexError(f"--prune must be one of {', '.join(PRUNE_RULES)}, got {self.prune!r}")
        self.dense_config()  # unknown --dense-kind, --dense-nprobe < 1 -> one-line error before any work

    def dense_config(self) -> DenseConfig:
        return DenseConfig(kind=self.dense_kind, nprobe=self.dense_nprobe)

    def field_specs(self) -> tuple[Field, ...]:
        """The declared fields, parsed (MiceIndexError for a bad spec or a name given twice)."""
        specs = tuple(parse_field(f) for f in self.fields)
        check_fields(specs)
        return specs


@dataclass(frozen=True)
class BuildResult:
    path: Path
    info: dict[str, Any]
    encoded_docs: int  # documents encoded by this call (0 when everything was already committed)
    seconds: float


def _kill_hook(point: str) -> None:
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _settings(cfg: BuildConfig, max_len: int, codec_name: str) -> Settings:
    """What decides the stored bytes: a resumed build must use the same (the device may change)."""
    keys = ("batch_tokens", "window_docs", "window_tokens", "shard_docs", "dense", "fit_tokens",
            "seed", "id_field", "text_field", "title_field", "prune")
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    specs = tuple(FieldSpec(f.name, f.type) for f in cfg.field_specs())  # () = no fields
    return Settings(codec=codec_name, max_doc_length=max_len, dtype=dtype, fields=specs,
                    **{k: getattr(cfg, k) for k in keys})


def _load_dense(model: MiceModel, cfg: BuildConfig):
    """(tower over model's states | None, second-pass model | None, its tower | None, description)."""
    if cfg.dense == "none":
        return None, None, None, None
    from mice_index.defaults import DEFAULT_BACKBONE, load_dense_tower

    try:
        tower = load_dense_tower(model)
        if tower is not None:
            return tower, None, None, DenseInfo(source="tower", backbone=DEFAULT_BACKBONE)
        layer = min(model.config.fusion_layer, 5)
        backbone = MiceModel.from_pretrained(DEFAULT_BACKBONE, fusion_layer=layer, num_interaction_layers=1)
        return None, backbone, load_dense_tower(backbone), DenseInfo(source="second-pass", backbone=DEFAULT_BACKBONE)
    except ModelError as exc:
        log.warning("no dense vectors: the dense backbone cannot be loaded (%s)", exc)
        return None, None, None, None


class _Builder:
    def __init__(self, corpus, index: Path, cfg: BuildConfig, model: MiceModel | None, progress,
                 encoder_factory: Callable[..., Any] = DocumentEncoder):
        self.corpus, self.root, self.cfg, self.progress = corpus, Path(index), cfg, progress
        self.encoder_factory = encoder_factory
        self.codec_name = resolve_codec_name(cfg.codec)
        self.model = model if model is not None else _load_model(cfg.model)
        mc = self.model.config
        self.max_len = cfg.max_doc_length or mc.max_doc_length
        if not 3 <= self.max_len <= mc.max_position_embeddings:
            raise MiceIndexError(f"--max-doc-length must be in 3..{mc.max_position_embeddings} for this model, "
                                 f"got {self.max_len}")
        self.settings = _settings(cfg, self.max_len, self.codec_name)
        self.fingerprint = self.model.fingerprint()

    def docs(self) -> Iterator[Document]:
        c = self.cfg
        return read_documents(self.corpus, id_field=c.id_field, text_field=c.text_field, title_field=c.title_field,
                              fields=c.field_specs())

    # -- index folder state --
    def prepare(self) -> Manifest | None:
        """Existing (incomplete, compatible) manifest to resume, or None for a fresh build."""
        root = self.root  # with --overwrite of an existing index: an empty staging folder (writing_index)
        if (root / L.MANIFEST).exists():
            m = read_manifest(root)
            if m.complete:
                raise complete_index_error(root)
            if m.model.fingerprint != self.fingerprint:
                raise IndexError_(
                    f"{root}: holds states of another model (fingerprint {m.model.fingerprint}, "
                    f"{m.model.name}) than {self.model_name} ({self.fingerprint}); refusing to append "
                    "(use another --index or --overwrite)")
            if m.format_version != L.FORMAT_VERSION:
                raise IndexError_(f"{root}: unfinished index was started by an older mice-index (index format "
                                  f"{m.format_version}, this one writes {L.FORMAT_VERSION}); pass --overwrite "
                                  "to rebuild it" + (f" (or run `mice-index upgrade --index {root}`, then this "
                                                     "build again)" if m.format_version >= L.CHUNK_CRC_VERSION
                                                     else ""))
            diff = {f.name: (getattr(m.settings, f.name), getattr(self.settings, f.name)) for f in fields(Settings)
                    if getattr(m.settings, f.name) != getattr(self.settings, f.name)}
            if diff:
                what = ", ".join(f"{k}: index {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                raise IndexError_(f"{root}: unfinished index was started with other settings ({what}); "
                                  "re-run with the same options or pass --overwrite")
            return m
        if root.exists():
            if not root.is_dir():
                raise IndexError_(f"{root}: exists and is not a folder")
            foreign = [e.name for e in root.iterdir() if e.name not in _LEFTOVERS]
            if foreign:
                raise IndexError_(f"{root}: folder is not empty and holds no index ({foreign[0]!r}, ...); "
                                  "refusing to write into it")
            for entry in root.iterdir():  # leftovers of a build killed before its first manifest
                if entry.name != LOCK:  # held by this build
                    L.remove(entry)
        return None

    def encoder_config(self) -> EncoderConfig:
        c = self.cfg
        return EncoderConfig(max_doc_length=self.max_len, batch_tokens=c.batch_tokens, window_docs=c.window_docs,
                             window_tokens=c.window_tokens, device=c.device, dtype=c.dtype,  # resolved by
                             prune=c.prune)  # the encoder for its own device (a Ray worker's may differ)

    @property
    def model_name(self) -> str:
        return str(self.cfg.model) if self.cfg.model else "default"

    def new_manifest(self, codec: Codec, dense: DenseInfo | None) -> Manifest:
        """Write the fitted codec's parameters; the first manifest of this build (not written)."""
        save_codec(self.root, codec)
        return new_manifest(corpus=str(self.corpus), model=ModelInfo.of(self.model, self.model_name),
                            settings=self.settings, codec=CodecInfo.of(codec), dense=dense)

    def fit_codec(self, encoder: DocumentEncoder) -> Codec:
        codec = make_codec(self.codec_name, dim=self.model.config.hidden_size)
        if not codec.needs_fit:
            return codec
        sample, n = [], 0
        for win in encoder.windows(self.docs(), 0, self.cfg.shard_docs, stop_row=self.cfg.shard_docs):
            sample.append(win.states)
            n += win.states.shape[0]
            if n >= self.cfg.fit_tokens:
                break
        x = np.concatenate(sample)[: self.cfg.fit_tokens]
        log.info("fitting codec %s on %d tokens", codec.name, x.shape[0])
        return codec.fit(x, seed=self.cfg.seed)

    def recover_shards(self) -> tuple[ShardEntry, ...]:
        """Committed shards on disk (source of truth: their shard.json), checked for contiguity."""
        sdir = self.root / L.SHARDS_DIR
        sdir.mkdir(exist_ok=True)
        for tmp in sdir.glob(L.TMP_PREFIX + "*"):
            L.remove(tmp)  # an uncommitted shard of an interrupted run
        shards = []
        for i, d in enumerate(sorted(p for p in sdir.iterdir() if p.is_dir())):
            if d.name != L.shard_name(i):
                raise IndexError_(f"{d}: unexpected shard folder (expected {L.shard_name(i)}); the index is damaged")
            meta = L.read_json(d / L.SHARD_META, "shard metadata")
            want = i * self.cfg.shard_docs
            if meta["start_row"] != want:
                raise IndexError_(f"{d / L.SHARD_META}: starts at row {meta['start_row']}, expected {want}")
            for rel, f in meta["files"].items():
                if not (d / rel).is_file() or (d / rel).stat().st_size != f["bytes"]:
                    raise IndexError_(f"{d / rel}: missing or wrong size (shard {d.name} is damaged; delete "
                                      "that shard folder and re-run to rebuild it)")
            shards.append(ShardEntry.read(d))
        return tuple(shards)

    def skip_committed(self, docs: Iterator[Document], shards: tuple[ShardEntry, ...]) -> Iterator[Document]:
        """Consume the committed documents from the stream, checking they are the same ids."""
        import pyarrow.parquet as pq

        for s in shards:
            path = self.root / L.SHARDS_DIR / s.name / L.DOCS
            for row, stored in enumerate(pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()):
                doc = next(docs, None)
                if doc is None or doc.doc_id != stored:
                    got = "the end of the corpus" if doc is None else f"id {doc.doc_id!r}"
                    raise IndexError_(f"{self.root}: the corpus differs from the one this unfinished index was "
                                      f"started with: row {s.start_row + row} is {stored!r} in the index, "
                                      f"{got} in {self.corpus}; pass --overwrite to start over")
            if self.progress:
                self.progress(s.num_docs)
        if shards and shards[-1].num_docs < self.cfg.shard_docs:  # the last shard ended the corpus
            extra = next(docs, None)
            if extra is not None:
                raise IndexError_(f"{self.root}: the corpus has more documents ({extra.doc_id!r}, ...) than when "
                                  "this index was started; pass --overwrite to start over")
        return docs

    # -- main --
    def run(self) -> int:
        final = self.root
        with writing_index(final, self.cfg.overwrite) as target:
            self.root = target
            try:
                return self._run()
            finally:
                self.root = final

    def _run(self) -> int:
        m = self.prepare()
        tower, dmodel, dtower, dense_desc = _load_dense(self.model, self.cfg)
        encoder = self.encoder_factory(self.model, self.encoder_config(), tower, dmodel, dtower)
        if dense_desc is not None:
            dense_desc = replace(dense_desc, dim=encoder.dense_dim)
        if m is None:
            m = self.new_manifest(self.fit_codec(encoder), dense_desc)
            write_manifest(self.root, m)
        codec = load_codec(self.root, m)  # the stored params, also on a fresh build (one code path)
        if hasattr(encoder, "bind_codec"):  # an encoder that emits codec columns itself (EncodedWindow.parts)
            encoder.bind_codec(codec)
        m = replace(m, shards=self.recover_shards())
        write_manifest(self.root, m)
        docs = self.skip_committed(iter(self.docs()), m.shards)
        encoded, m = self.encode(encoder, codec, docs, m)
        _kill_hook("candidates")
        m = build_candidates(self.root, m, bm25=self.cfg.bm25, dense=self.cfg.dense_config())
        write_manifest(self.root, replace(m, complete=True))
        return encoded

    def encode(self, encoder: DocumentEncoder, codec: Codec, docs, m: Manifest) -> tuple[int, Manifest]:
        """Encode and commit the remaining shards (the manifest rewritten after each); returns
        (documents encoded, the manifest listing every committed shard)."""
        S, start = self.cfg.shard_docs, m.num_docs
        if m.shards and m.shards[-1].num_docs < S:
            return 0, m
        writer: ShardWriter | None = None
        encoded = 0

        def commit():
            nonlocal writer, m
            _kill_hook(f"precommit:{len(m.shards) + 1}")
            writer.commit()
            m = replace(m, shards=(*m.shards, ShardEntry.read(writer.final)))
            write_manifest(self.root, m)
            writer = None
            _kill_hook(f"commit:{len(m.shards)}")

        try:
            for win in encoder.windows(docs, start, S):
                if writer is None:
                    writer = ShardWriter(self.root, win.start_row // S, win.start_row, codec,
                                         fields=self.cfg.field_specs())
                writer.add(win)
                encoded += len(win.docs)
                if self.progress:
                    self.progress(len(win.docs))
                if writer.num_docs == S:
                    commit()
            if writer is not None:
                commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return encoded, m


@contextmanager
def writing_index(root: Path, overwrite: bool) -> Iterator[Path]:
    """Hold INDEX/.lock (one writer per index; IndexBusyError if taken) and yield the folder to
    write the build into: `root` itself, or, with `overwrite` and an existing index in `root`, an
    empty sibling staging folder that replaces `root` (two renames) only once the body returns.
    A body that raises leaves `root` untouched: the old index stays complete and searchable."""
    if root.is_symlink():  # replace the link's target (beside it, on its disk), keep the link
        root = Path(os.path.realpath(root))
    if root.exists() and not root.is_dir():
        raise IndexError_(f"{root}: exists and is not a folder")
    if (root / L.MANIFEST).exists():  # another program's manifest.json: never written into, nor replaced
        L.check_replaceable(root)
    with os_errors(root, "creating the index folder"):
        root.mkdir(parents=True, exist_ok=True)
    with IndexLock(root):
        if not (overwrite and (root / L.MANIFEST).exists()):
            yield root
            return
        staging = L.staging_dir(root)
        with os_errors(staging, "creating the staging folder of --overwrite (next to the index)"):
            L.remove(staging)  # a replacement whose build was killed: start it again
            staging.mkdir()
        log.info("%s: --overwrite: building the replacement in %s", root, staging)
        try:
            yield staging
        except BaseException:
            L.remove(staging)
            raise
        L.replace_dir(staging, root)


def _load_model(name: str | None) -> MiceModel:
    from mice_index.defaults import load_model

    return load_model(name)


def build_index(
    corpus: str | os.PathLike,
    index: str | os.PathLike,
    config: BuildConfig = BuildConfig(),
    *,
    model: MiceModel | None = None,
    progress: Callable[[int], None] | None = None,
    total_callback: Callable[[int | None], None] | None = None,
    encoder_factory: Callable[..., Any] = DocumentEncoder,
) -> BuildResult:
    """Build (or resume) the index of `corpus` in folder `index`. `model` overrides config.model
    (already loaded); `progress(n)` is called with the number of documents done since the last
    call; `total_callback(total)` once with the corpus size (None when unknown).

    `encoder_factory` (benchmarks): called like `DocumentEncoder(model, EncoderConfig, tower,
    dense_model, dense_tower)`; the object needs `windows(docs, start_row, boundary, stop_row)`
    yielding `EncodedWindow`s and `dense_dim`, and may have `bind_codec(codec)`, called with the
    index's (fitted) codec before the shards are written (benchmarks/scale.py's synthetic encoder)."""
    import time

    t0 = time.perf_counter()
    total = count_documents(corpus)  # also fails fast (before loading the model) on a missing corpus
    _peek(corpus, config)  # ... a first document that cannot be read, a corrupt compressed file
    if total_callback is not None:  # before the model loads: no "0/?" while it does
        total_callback(total)
    builder = _Builder(corpus, Path(index), config, model, progress, encoder_factory)
    created = not Path(index).exists()
    try:
        encoded = builder.run()
    except Exception:
        if created:
            _remove_if_empty(Path(index))
        raise
    return BuildResult(Path(index), index_info(index), encoded, time.perf_counter() - t0)


def _peek(corpus, cfg: BuildConfig) -> None:
    """Read the first document (not for irds:, whose first read may download the collection)."""
    if not (isinstance(corpus, str) and corpus.startswith("irds:")):
        docs = read_documents(corpus, id_field=cfg.id_field, text_field=cfg.text_field, title_field=cfg.title_field,
                              fields=cfg.field_specs())
        next(docs, None)
        docs.close()


def _remove_if_empty(root: Path) -> None:
    """Remove an index folder this run created when the run failed before committing any shard."""
    shards = root / L.SHARDS_DIR
    if not (shards.is_dir() and any(not p.name.startswith(L.TMP_PREFIX) for p in shards.iterdir())):
        log.info("%s: removing the index folder this failed build created (no shard was committed)", root)
        L.remove(root)


__all__ = ["BuildConfig", "BuildResult", "KILL_ENV", "build_index"]
