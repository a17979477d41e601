"""On-disk layout of an index folder (documented in docs/index-format.md) and file helpers.

    INDEX/manifest.json          written last of all, atomically (tmp + fsync + rename)
    INDEX/codec/*.npy            trained codec parameters (config in the manifest)
    INDEX/shards/00000/          one committed build shard (renamed from shards/.tmp-00000/):
        states.zarr/             zarr v3 group: one array per codec column [tokens, width]
                                 (sharding codec, uncompressed) + offsets [n+1] + lengths [n]
        docs.parquet             row, doc_id, title, text, num_tokens, truncated
        dense.npy                float32 [n, Dd] dense vectors (absent without a dense model)
        shard.json               counts + sha256 and size of every file above
    INDEX/bm25/, INDEX/dense/    candidate indexes (mice_index.candidates), built after all shards
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mice_index.errors import IndexError_, os_errors, storage_error

# 2: every inner zarr chunk carries a crc32c (format 1 had none; still read). 3: the typed manifest
# (store/manifest.py) with optional fields / passages / tombstones; a format-2 manifest is read as is
# and `mice-index upgrade` rewrites it as format 3 (the shard files are the same).
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CHUNK_CRC_VERSION = 2  # first format whose state chunks carry crc32c
MANIFEST = "manifest.json"
SHARD_META = "shard.json"
STATES = "states.zarr"
DOCS = "docs.parquet"
DENSE = "dense.npy"
CODEC_DIR = "codec"
SHARDS_DIR = "shards"
BM25_DIR = "bm25"
DENSE_DIR = "dense"
TMP_PREFIX = ".tmp-"


def shard_name(i: int) -> str:
    return f"{i:05d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (inclusive)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def commit_dir(tmp: Path, final: Path) -> None:
    """Atomically publish a fully written folder: fsync its contents, rename, fsync the parent."""
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with os_errors(path, "writing"):
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


def staging_dir(root: Path) -> Path:
    """Sibling folder where `build --overwrite` writes the replacement of the index in `root`."""
    return root.parent / f"{TMP_PREFIX}{root.name}"


def is_index_manifest(payload: Any) -> bool:
    """True for what a mice-index build writes as its manifest (a JSON object with a format
    version, shard list, codec and model entries)."""
    return (isinstance(payload, dict) and isinstance(payload.get("format_version"), int)
            and isinstance(payload.get("shards"), list) and isinstance(payload.get("codec"), dict)
            and isinstance(payload.get("model"), dict))


def check_replaceable(root: Path) -> None:
    """A build writes into (and `--overwrite` replaces, i.e. deletes) the folder `root` holding a
    manifest.json only when it is a mice-index manifest, or an unreadable one in a folder holding
    nothing but index files (a damaged index); IndexError_ with one line otherwise (another
    program's manifest.json). Nothing is touched."""
    path = root / MANIFEST
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        known = {MANIFEST, MANIFEST + ".tmp", SHARDS_DIR, CODEC_DIR, BM25_DIR, DENSE_DIR, ".lock"}
        if (root / SHARDS_DIR).is_dir() and all(e.name in known or e.name.startswith(TMP_PREFIX)
                                                for e in root.iterdir()):
            return  # a damaged index (its manifest unreadable): nothing but index files to replace
        raise IndexError_(f"{path}: cannot read it as a mice-index manifest ({type(exc).__name__}) and the folder "
                          "holds other files: it is not an index that can be resumed or replaced; choose another "
                          "--index (or remove the folder yourself)") from None
    if not is_index_manifest(payload):
        raise IndexError_(f"{path}: not a mice-index manifest (another program's?): this folder is not an index "
                          "that can be resumed or replaced; choose another --index")


def replace_dir(new: Path, final: Path) -> None:
    """Put the complete folder `new` in place of `final` (rename final away, rename new in, then
    delete the old one). Killed between the two renames, `final` is missing and `new` is still
    complete under its staging name (read_manifest says so)."""
    old = final.parent / f"{TMP_PREFIX}{final.name}.old"
    with os_errors(final, "replacing the index with its rebuilt copy"):
        remove(old)
        fsync_dir(new)
        os.rename(final, old)
        os.rename(new, final)
        fsync_dir(final.parent)
        remove(old)


def damaged(path: Path, detail: str, root: Path | None = None, shard: str | None = None) -> IndexError_:
    """One-line error for a damaged index file: what is wrong, which shard, how to repair."""
    where = f" (build shard {shard} is damaged)" if shard is not None else " (the index is damaged)"
    command = rebuild_command(root) if root is not None else None
    fix = (f"rebuild the index: {command}" if command else
           "rebuild the index: re-run its `mice-index build` command with --overwrite")
    return IndexError_(f"{path}: {detail}{where}; {fix} (the damaged index stays in place until the new one is "
                       "complete)")


# build options recorded in the manifest, with the CLI's defaults (left out of the command)
_OPTIONS = (("codec", "--codec", "fp16"), ("shard_docs", "--shard-docs", 8192), ("dense", "--dense", "auto"),
            ("id_field", "--id-field", "_id"), ("text_field", "--text-field", "text"),
            ("title_field", "--title-field", "title"), ("batch_tokens", "--batch-tokens", 8192),
            ("max_doc_length", "--max-doc-length", None))


def rebuild_command(root: Path) -> str | None:
    """The `mice-index build ... --overwrite` command that rebuilds the index in `root` with the
    options its manifest records (None if the manifest cannot be read)."""
    from mice_index.store.manifest import Manifest

    try:
        m = Manifest.from_dict(json.loads((root / MANIFEST).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    args = [f"--corpus {m.corpus}", f"--index {root}"]
    if m.model.name != "default":
        args.append(f"--model {m.model.name}")
    args += [f"{flag} {getattr(m.settings, k)}" for k, flag, default in _OPTIONS if getattr(m.settings, k) != default]
    cands = m.candidates
    if cands.dense_kind and cands.dense_kind != "auto":  # indexes from before auto: flat, explicit
        args.append(f"--dense-kind {cands.dense_kind}")
    if cands.dense_nprobe:
        args.append(f"--dense-nprobe {cands.dense_nprobe}")
    command = "mice-index build " + " ".join(args) + " --overwrite"
    if m.last_op is not None:  # documents were added / deleted since the build (mice_index/update.py)
        command += " (then repeat the add / delete commands run since that build)"
    return command


def crc32c_file(path: Path) -> int:
    """crc32c of a whole file (hardware-accelerated; used for the candidate indexes' files)."""
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            c.update(block)
    return int.from_bytes(c.digest(), "big")


def crc32c_table(root: Path, folder: str) -> dict[str, dict[str, int]]:
    """{"folder/relative path": {bytes, crc32c}} for every file under root/folder."""
    base = root / folder
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "crc32c": crc32c_file(p)}
            for p in sorted(base.rglob("*")) if p.is_file()}


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexError_(f"{path}: missing {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, f"corrupt {what} ({exc})") from None
    except OSError as exc:  # a folder in the file's place, unreadable, an I/O error: one line, never a traceback
        raise (storage_error(exc, path, f"reading the {what.split(' (')[0]}")
               or IndexError_(f"{path}: cannot read the {what.split(' (')[0]} ({exc.strerror or exc})")) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path, exclude: tuple[str, ...] = (SHARD_META,)) -> dict[str, dict[str, Any]]:
    """{relative posix path: {sha256, bytes}} for every file under root (sorted)."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in exclude:
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
