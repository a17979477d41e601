"""The index manifest and the summary / integrity checks that need nothing but it and the files.

Kept apart from reader.py (zarr, pyarrow, codecs) so that `mice-index info` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mice_index.errors import IndexError_
from mice_index.store import layout as L
from mice_index.store.lock import is_locked

__all__ = ["complete_index_error", "index_info", "read_manifest", "verify_shards"]


def complete_index_error(root: Path) -> IndexError_ | None:
    """The error of a build into `root` without --overwrite when it already holds a complete index
    (None otherwise); checked by the CLI before the model is loaded and again by the builder."""
    root = Path(root)
    if (root / L.MANIFEST).is_file():
        try:
            complete = read_manifest(root).get("complete")
        except IndexError_:
            return None  # the builder reports a damaged manifest with its context
        if complete:
            return IndexError_(f"{root}: already holds a complete index; pass --overwrite to rebuild it")
    return None


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the index in `root` (complete or not); IndexError_ naming the file if absent,
    unreadable or of a format version this library cannot read."""
    root = Path(root)
    if not root.is_dir():
        staging = L.staging_dir(root)
        if (staging / L.MANIFEST).is_file():
            raise IndexError_(f"{root}: index folder not found, but {staging} holds its rebuilt copy (a `build "
                              f"--overwrite` was stopped while swapping folders): rename {staging} to {root}")
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
    return manifest


def verify_shards(root: Path, manifest: dict[str, Any], deep: bool = True) -> None:
    for info in manifest["shards"]:
        d = root / L.SHARDS_DIR / info["name"]
        meta_path = d / L.SHARD_META
        if not meta_path.is_file():
            raise L.damaged(meta_path, "shard metadata missing", root, info["name"])
        if L.sha256_file(meta_path) != info["sha256"]:
            raise L.damaged(meta_path, "checksum mismatch", root, info["name"])
        meta = L.read_json(meta_path, "shard metadata")
        for rel, want in meta["files"].items():
            f = d / rel
            if not f.is_file():
                raise L.damaged(f, "file missing", root, info["name"])
            if f.stat().st_size != want["bytes"] or (deep and L.sha256_file(f) != want["sha256"]):
                raise L.damaged(f, "checksum mismatch", root, info["name"])
    stones = manifest.get("tombstones")
    if stones and (not (root / stones["file"]).is_file() or L.sha256_file(root / stones["file"]) != stones["sha256"]):
        raise L.damaged(root / stones["file"], "tombstone file missing, or checksum mismatch", root)
    for rel, want in (manifest.get("candidates") or {}).get("files", {}).items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != want["bytes"] or (deep and L.crc32c_file(f) != want["crc32c"]):
            raise L.damaged(f, "missing, or checksum mismatch", root)


def index_info(path: str | Path) -> dict[str, Any]:
    """Summary of an index (complete or not) as a JSON-able dict (what `mice-index info` prints)."""
    root = Path(path)
    m = read_manifest(root)
    num_tokens = int(sum(s["num_tokens"] for s in m["shards"]))
    state_bytes = 0
    cols = m["codec"]["columns"]
    for s in m["shards"]:
        d = root / L.SHARDS_DIR / s["name"] / L.STATES
        state_bytes += sum(L.dir_bytes(d / c) for c in cols if (d / c).is_dir())
    num_rows = int(sum(s["num_docs"] for s in m["shards"]))
    deleted = int((m.get("tombstones") or {}).get("count", 0))
    cands = m.get("candidates") or {}
    return {
        "path": str(root), "format_version": m["format_version"], "complete": bool(m.get("complete")),
        "building": not m.get("complete") and is_locked(root),
        # live documents; num_rows counts the deleted ones too (their states stay until `compact`)
        "num_docs": num_rows - deleted, "num_rows": num_rows, "deleted_docs": deleted,
        "generation": m.get("generation"), "codec_drift": m.get("codec_drift"), "num_tokens": num_tokens,
        "num_shards": len(m["shards"]),
        "truncated_docs": int(sum(s["truncated_docs"] for s in m["shards"])),
        "empty_docs": int(sum(s["empty_docs"] for s in m["shards"])),
        "codec": m["codec"]["name"], "codec_bytes_per_token": m["codec"]["bytes_per_token"],
        "bytes_per_token": round(state_bytes / num_tokens, 3) if num_tokens else None,
        "state_bytes": state_bytes, "layer": m["model"]["fusion_layer"], "hidden_size": m["model"]["hidden_size"],
        "max_doc_length": m["settings"]["max_doc_length"], "prune": m["settings"].get("prune", "none"),
        "model": m["model"]["name"], "model_family": m["model"].get("family", "bert"),
        "model_options": m["model"].get("options", {}),
        "model_fingerprint": m["model"]["fingerprint"], "dense": m.get("dense"),
        "candidates": {k: (root / (cands.get(k) or k)).is_dir() for k in (L.BM25_DIR, L.DENSE_DIR)},
        # kind, parameters and recall@100 vs flat measured at build time (None before they were recorded)
        "dense_index": (m.get("candidates") or {}).get("dense_index"),
        "disk_bytes": L.dir_bytes(root), "library_version": m.get("library_version"),
    }
