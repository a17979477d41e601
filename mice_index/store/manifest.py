"""The index manifest and the summary / integrity checks that need nothing but it and the files.

Kept apart from reader.py (zarr, pyarrow, codecs) so that `mice-index info` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mice_index.errors import IndexError_
from mice_index.store import layout as L

__all__ = ["index_info", "read_manifest", "verify_shards"]


def read_manifest(root: Path) -> dict[str, Any]:
    root = Path(root)
    if not root.is_dir():
        raise IndexError_(f"{root}: index folder not found")
    manifest = L.read_json(root / L.MANIFEST, "index manifest (not an index folder, or the build never started)")
    if manifest.get("format_version") != L.FORMAT_VERSION:
        raise IndexError_(f"{root / L.MANIFEST}: unsupported index format version "
                          f"{manifest.get('format_version')!r} (this library reads {L.FORMAT_VERSION})")
    return manifest


def verify_shards(root: Path, manifest: dict[str, Any], deep: bool = True) -> None:
    for info in manifest["shards"]:
        d = root / L.SHARDS_DIR / info["name"]
        meta_path = d / L.SHARD_META
        if not meta_path.is_file():
            raise IndexError_(f"{meta_path}: shard metadata missing (shard {info['name']} is damaged)")
        if L.sha256_file(meta_path) != info["sha256"]:
            raise IndexError_(f"{meta_path}: checksum mismatch (shard {info['name']} is damaged)")
        meta = L.read_json(meta_path, "shard metadata")
        for rel, want in meta["files"].items():
            f = d / rel
            if not f.is_file():
                raise IndexError_(f"{f}: missing file of shard {info['name']}")
            if f.stat().st_size != want["bytes"] or (deep and L.sha256_file(f) != want["sha256"]):
                raise IndexError_(f"{f}: checksum mismatch (shard {info['name']} is damaged; rebuild it "
                                  "by deleting the shard folder and re-running the build)")


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
    return {
        "path": str(root), "format_version": m["format_version"], "complete": bool(m.get("complete")),
        "num_docs": int(sum(s["num_docs"] for s in m["shards"])), "num_tokens": num_tokens,
        "num_shards": len(m["shards"]),
        "truncated_docs": int(sum(s["truncated_docs"] for s in m["shards"])),
        "empty_docs": int(sum(s["empty_docs"] for s in m["shards"])),
        "codec": m["codec"]["name"], "codec_bytes_per_token": m["codec"]["bytes_per_token"],
        "bytes_per_token": round(state_bytes / num_tokens, 3) if num_tokens else None,
        "state_bytes": state_bytes, "layer": m["model"]["fusion_layer"], "hidden_size": m["model"]["hidden_size"],
        "max_doc_length": m["settings"]["max_doc_length"], "model": m["model"]["name"],
        "model_fingerprint": m["model"]["fingerprint"], "dense": m.get("dense"),
        "candidates": {k: (root / k).is_dir() for k in (L.BM25_DIR, L.DENSE_DIR)},
        "disk_bytes": L.dir_bytes(root), "library_version": m.get("library_version"),
    }
