"""The index manifest (a frozen, typed `Manifest`), its atomic writing (the commit point), and the
summary / integrity checks that need nothing but it and the files.

    m = read_manifest(root)                       # format 2 or 3 on disk -> Manifest
    write_manifest(root, replace(m, complete=True))

Kept apart from reader.py (zarr, pyarrow, codecs) so that `mice-index info` starts fast. The JSON
layout is documented in docs/index-format.md; `Manifest.to_dict()` is exactly what is written.
Format 3 is format 2 plus optional parts (settings `fields` / `passages`, top-level `tombstones`)
whose absence means the old behaviour, so a format-2 manifest is read as is (its
`format_version` stays 2 in memory, which `info` reports and `mice-index upgrade` rewrites).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mice_index.errors import IndexError_
from mice_index.store import layout as L
from mice_index.store.lock import is_locked

__all__ = ["Candidates", "CodecDrift", "CodecInfo", "DenseInfo", "FieldSpec", "LastOp", "Manifest", "ModelInfo",
           "Passages", "Previous", "Settings", "ShardEntry", "Tombstones", "complete_index_error", "index_info", "new_manifest", "read_manifest",
           "verify_shards", "write_manifest"]

COUNT_KEYS = ("num_docs", "num_tokens", "truncated_docs", "empty_docs")


def _build(cls, d: Any, **convert):
    """`cls` from the JSON object `d` (unknown keys ignored; `convert[k]` maps a present value)."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: (convert[k](v) if k in convert else v) for k, v in d.items() if k in names})


def _plain(obj) -> Any:
    """JSON-able form of a part (dataclasses -> dicts, tuples -> lists, dicts copied)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class ShardEntry:
    """One committed build shard (INDEX/shards/<name>/): rows start_row..start_row+num_docs-1."""

    name: str
    start_row: int
    num_docs: int
    num_tokens: int = 0
    truncated_docs: int = 0
    empty_docs: int = 0
    sha256: str = ""  # of its shard.json

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        return _build(cls, d)

    @classmethod
    def read(cls, shard_dir: Path) -> ShardEntry:
        """The entry of the committed shard in `shard_dir` (its shard.json's counts and sha256)."""
        meta = L.read_json(shard_dir / L.SHARD_META, "shard metadata")
        return cls(name=shard_dir.name, sha256=L.sha256_file(shard_dir / L.SHARD_META),
                   **{k: meta[k] for k in ("start_row", *COUNT_KEYS)})


@dataclass(frozen=True)
class ModelInfo:
    """The MICE model whose bottom computed the stored states."""

    name: str
    fingerprint: str
    fusion_layer: int
    hidden_size: int
    family: str = "bert"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model, name: str) -> ModelInfo:
        """The entry of a loaded `MiceModel` (`name`: how it was asked for, "default" for the default)."""
        mc = model.config
        return cls(name=name, fingerprint=model.fingerprint(), fusion_layer=mc.doc_layers,
                   hidden_size=mc.hidden_size, family=mc.family, options=mc.layer_options())


@dataclass(frozen=True)
class CodecInfo:
    """The codec of the stored states; its trained parameters are INDEX/codec/<array>.npy."""

    name: str
    config: dict[str, Any]
    bytes_per_token: float
    arrays: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    fingerprint: str | None = None  # None: indexes from before it was recorded (not checked)

    @classmethod
    def of(cls, codec) -> CodecInfo:
        """The entry of a (fitted) `mice_index.codec.Codec`."""
        config, arrays = codec.to_params()
        return cls(name=codec.name, config=config, arrays=tuple(sorted(arrays)), columns=tuple(sorted(codec.columns())),
                   bytes_per_token=codec.bytes_per_token, fingerprint=codec.fingerprint())


@dataclass(frozen=True)
class DenseInfo:
    """Where the stored dense vectors come from (`source` "tower" | "second-pass")."""

    source: str | None = None
    backbone: str | None = None
    dim: int | None = None


@dataclass(frozen=True)
class FieldSpec:
    """A document metadata field (issue 19, filters): its name and type ("int", "str", ...)."""

    name: str
    type: str

    def __post_init__(self) -> None:
        """ValueError (read_manifest: a damaged manifest) for a name or type `build --field` refuses."""
        from mice_index.errors import MiceIndexError
        from mice_index.sources.fields import Field

        try:
            Field(self.name, self.type)
        except MiceIndexError:
            raise ValueError(f"settings.fields: {self.name}:{self.type} is not a field `build --field` "
                             f"accepts") from None


@dataclass(frozen=True)
class Passages:
    """Documents split into windows of `window` tokens every `stride` tokens (issue 19, passages)."""

    window: int
    stride: int


@dataclass(frozen=True)
class Settings:
    """What decides the stored bytes (a resumed build must use the same); defaults are the
    values of indexes written before a setting was recorded."""

    codec: str = "fp16"
    max_doc_length: int | None = None
    dtype: str | None = None
    batch_tokens: int = 8192
    window_docs: int = 1024
    window_tokens: int = 65536
    shard_docs: int = 8192
    dense: str = "auto"
    fit_tokens: int = 100_000
    seed: int = 0
    id_field: str = "_id"
    text_field: str = "text"
    title_field: str = "title"
    prune: str = "none"  # absent in format 2 = "none" (indexes built before pruning)
    fields: tuple[FieldSpec, ...] = ()  # metadata fields (empty: none)
    passages: Passages | None = None  # None: one row per document (no passages)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        return _build(cls, d, fields=lambda v: tuple(_build(FieldSpec, f) for f in v or ()),
                      passages=lambda v: None if v is None else _build(Passages, v))


@dataclass(frozen=True)
class Candidates:
    """The candidate indexes built after all shards (folder names, dense kind, checksums)."""

    bm25: str | None = None  # folder of the BM25 index (None: not built)
    dense: str | None = None  # folder of the dense index (None: not built)
    dense_kind: str | None = None  # as asked (auto / flat / ...); the resolved one is in dense_index
    dense_nprobe: int | None = None
    dense_index: dict[str, Any] | None = None  # resolved kind, parameters, recall@100 vs flat
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # "bm25/..." -> {bytes, crc32c}


@dataclass(frozen=True)
class Tombstones:
    """Deleted store rows (issue 19, segments): a file in the index, its row count and sha256."""

    file: str
    count: int
    sha256: str


@dataclass(frozen=True)
class Previous:
    """The commit an update followed (issue 19, segments): its generation and the root-relative
    names of its files, kept so that its readers keep working until they reopen."""

    generation: str | None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class LastOp:
    """The last update (`add` / `delete` / `compact`) and a digest of its input: a re-run of the
    same command after a kill is recognised as already applied."""

    op: str
    digest: str


@dataclass(frozen=True)
class CodecDrift:
    """How far documents added after the build are from the kept codec's codebooks: relative
    reconstruction error sum||x - x̂||² / sum||x||² of their states vs the build documents'."""

    baseline_relative_error: float | None = None  # the codec on a sample of build documents
    added_relative_error: float | None = None
    added_squared_error: float = 0.0
    added_squared_norm: float = 0.0
    added_docs: int = 0
    ratio: float | None = None  # added / baseline


@dataclass(frozen=True)
class Manifest:
    """INDEX/manifest.json as a frozen value; change it with `dataclasses.replace` and commit it
    with `write_manifest`. `format_version` is the version read from disk (2 or 3; 1 too)."""

    format_version: int
    model: ModelInfo
    settings: Settings
    codec: CodecInfo
    shards: tuple[ShardEntry, ...] = ()
    complete: bool = False
    corpus: str | None = None
    generation: str | None = None  # random id of this build (store/generation.py); None: older indexes
    library_version: str | None = None
    dense: DenseInfo | None = None  # None: no dense vectors
    candidates: Candidates = field(default_factory=Candidates)
    tombstones: Tombstones | None = None  # None: no deleted rows
    previous: Previous | None = None  # None: never updated (store/segments.py)
    last_op: LastOp | None = None
    codec_drift: CodecDrift | None = None  # None: nothing added since the build

    # -- totals over the shards --
    @property
    def num_docs(self) -> int:
        """Store rows (documents, or passages) in all shards."""
        return int(sum(s.num_docs for s in self.shards))

    @property
    def num_tokens(self) -> int:
        return int(sum(s.num_tokens for s in self.shards))

    @property
    def counts(self) -> dict[str, int]:
        """{num_docs, num_tokens, truncated_docs, empty_docs} summed over the shards."""
        return {k: int(sum(getattr(s, k) for s in self.shards)) for k in COUNT_KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """From the JSON object (format 1, 2 or 3); KeyError / TypeError / ValueError if malformed."""
        return _build(cls, d, model=lambda v: _build(ModelInfo, v),
                      settings=lambda v: Settings.from_dict(v or {}),
                      codec=lambda v: _build(CodecInfo, v, arrays=tuple, columns=tuple),
                      shards=lambda v: tuple(ShardEntry.from_dict(s) for s in v),
                      complete=bool,
                      dense=lambda v: _build(DenseInfo, v) if v else None,
                      candidates=lambda v: _build(Candidates, v or {}, files=lambda f: dict(f or {})),
                      tombstones=lambda v: None if v is None else _build(Tombstones, v),
                      previous=lambda v: None if v is None else _build(Previous, v, files=tuple),
                      last_op=lambda v: None if v is None else _build(LastOp, v),
                      codec_drift=lambda v: None if v is None else _build(CodecDrift, v))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (with the derived `counts`)."""
        return {**_plain(self), "counts": self.counts}


def new_manifest(*, corpus: str, model: ModelInfo, settings: Settings, codec: CodecInfo,
                 dense: DenseInfo | None) -> Manifest:
    """The first (incomplete, shard-less) manifest of a new build, in the current format, with a
    fresh generation id. The codec's parameters are written apart (`store.codecs.save_codec`)."""
    import mice_index
    from mice_index.store.generation import new_generation

    return Manifest(format_version=L.FORMAT_VERSION, library_version=mice_index.__version__, complete=False,
                    generation=new_generation(), corpus=str(corpus), model=model, settings=settings,
                    codec=codec, dense=dense)


def write_manifest(root: str | Path, m: Manifest) -> None:
    """Commit `m` as INDEX/manifest.json: tmp file + fsync + rename + fsync of the folder (atomic:
    a reader sees the previous manifest or this one). This write is the index's commit point."""
    L.write_json_atomic(Path(root) / L.MANIFEST, m.to_dict())


def complete_index_error(root: Path) -> IndexError_ | None:
    """The error of a build into `root` without --overwrite when it already holds a complete index
    (None otherwise); checked by the CLI before the model is loaded and again by the builder."""
    root = Path(root)
    if (root / L.MANIFEST).is_file():
        try:
            complete = read_manifest(root).complete
        except IndexError_:
            return None  # the builder reports a damaged manifest with its context
        if complete:
            return IndexError_(f"{root}: already holds a complete index; pass --overwrite to rebuild it")
    return None


def read_manifest(root: str | Path) -> Manifest:
    """The manifest of the index in `root` (complete or not, format 1, 2 or 3); IndexError_ naming
    the file if absent, unreadable, malformed or of a format version this library cannot read."""
    root = Path(root)
    if not root.is_dir():
        staging = L.staging_dir(root)
        if (staging / L.MANIFEST).is_file():
            raise IndexError_(f"{root}: index folder not found, but {staging} holds its rebuilt copy (a `build "
                              f"--overwrite` was stopped while swapping folders): rename {staging} to {root}")
        if root.exists():
            raise IndexError_(f"{root}: is a file, not an index folder")
        raise IndexError_(f"{root}: index folder not found")
    path = root / L.MANIFEST
    manifest = L.read_json(path, "index manifest (not an index folder, or the build never started)")
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise IndexError_(f"{path}: not a mice-index manifest (this folder holds no mice-index index; choose "
                          "another --index)")
    if manifest.get("format_version") not in L.READABLE_VERSIONS:
        raise IndexError_(f"{path}: unsupported index format version {manifest.get('format_version')!r} "
                          f"(this library reads {', '.join(map(str, L.READABLE_VERSIONS))})")
    ok = (isinstance(manifest.get("shards"), list) and isinstance(manifest.get("codec"), dict)
          and isinstance(manifest.get("model"), dict) and all(isinstance(e, dict) and {"name", "start_row", "num_docs"}
                                                               <= e.keys() for e in manifest["shards"]))
    if not ok:
        raise L.damaged(path, "manifest lacks shards / codec / model entries", root)
    try:
        return Manifest.from_dict(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise L.damaged(path, f"malformed manifest ({str(exc)[:160]})", root) from None


def verify_shards(root: Path, manifest: Manifest, deep: bool = True) -> None:
    """IndexError_ naming the first damaged file: every shard's shard.json against its manifest
    sha256 and each shard file's size (and sha256 when `deep`), then the candidate files' sizes
    (and crc32c when `deep`)."""
    for info in manifest.shards:
        d = root / L.SHARDS_DIR / info.name
        meta_path = d / L.SHARD_META
        if not meta_path.is_file():
            raise L.damaged(meta_path, "shard metadata missing", root, info.name)
        if L.sha256_file(meta_path) != info.sha256:
            raise L.damaged(meta_path, "checksum mismatch", root, info.name)
        meta = L.read_json(meta_path, "shard metadata")
        for rel, want in meta["files"].items():
            f = d / rel
            if not f.is_file():
                raise L.damaged(f, "file missing", root, info.name)
            if f.stat().st_size != want["bytes"] or (deep and L.sha256_file(f) != want["sha256"]):
                raise L.damaged(f, "checksum mismatch", root, info.name)
    stones = manifest.tombstones
    if stones and (not (root / stones.file).is_file() or L.sha256_file(root / stones.file) != stones.sha256):
        raise L.damaged(root / stones.file, "tombstone file missing, or checksum mismatch", root)
    for rel, want in manifest.candidates.files.items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != want["bytes"] or (deep and L.crc32c_file(f) != want["crc32c"]):
            raise L.damaged(f, "missing, or checksum mismatch", root)


def index_info(path: str | Path) -> dict[str, Any]:
    """Summary of an index (complete or not) as a JSON-able dict (what `mice-index info` prints)."""
    root = Path(path)
    m = read_manifest(root)
    counts = m.counts
    num_tokens = counts["num_tokens"]
    state_bytes = 0
    for s in m.shards:
        d = root / L.SHARDS_DIR / s.name / L.STATES
        state_bytes += sum(L.dir_bytes(d / c) for c in m.codec.columns if (d / c).is_dir())
    deleted = m.tombstones.count if m.tombstones else 0
    return {
        "path": str(root), "format_version": m.format_version, "complete": m.complete,
        "building": not m.complete and is_locked(root),
        # live documents; num_rows counts the deleted ones too (their states stay until `compact`)
        "num_docs": counts["num_docs"] - deleted, "num_rows": counts["num_docs"], "deleted_docs": deleted,
        "generation": m.generation, "codec_drift": _plain(m.codec_drift),
        "num_tokens": num_tokens, "num_shards": len(m.shards),
        "truncated_docs": counts["truncated_docs"], "empty_docs": counts["empty_docs"],
        "codec": m.codec.name, "codec_bytes_per_token": m.codec.bytes_per_token,
        "bytes_per_token": round(state_bytes / num_tokens, 3) if num_tokens else None,
        "state_bytes": state_bytes, "layer": m.model.fusion_layer, "hidden_size": m.model.hidden_size,
        "max_doc_length": m.settings.max_doc_length, "prune": m.settings.prune,
        "fields": _plain(m.settings.fields),  # [{"name", "type"}]: what filters may name
        "passages": _plain(m.settings.passages),  # {"window", "stride"}: rows are passages (build --passages)
        "model": m.model.name, "model_family": m.model.family, "model_options": m.model.options,
        "model_fingerprint": m.model.fingerprint, "dense": _plain(m.dense),
        "candidates": {k: (root / (getattr(m.candidates, k) or k)).is_dir() for k in (L.BM25_DIR, L.DENSE_DIR)},
        # kind, parameters and recall@100 vs flat measured at build time (None before they were recorded)
        "dense_index": m.candidates.dense_index,
        "disk_bytes": L.dir_bytes(root), "library_version": m.library_version,
    }
