"""Distributed builds: static slices (`--num-shards/--shard-id` + `merge`) and `--engine ray`.

Both write the single-process build's on-disk format (the same build shards, byte for byte) and
finish with its manifest step. Ray is optional: nothing here imports it until `--engine ray` runs
(`build_index_ray`), which then fails with the install hint if it is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INSTALL_HINT", "SliceResult", "build_index_ray", "build_slice", "merge_index", "require_ray"]


def __getattr__(name: str) -> Any:  # lazy: importing this package loads neither Ray nor torch
    if name in ("build_slice", "merge_index", "SliceResult"):
        from mice_index.distributed import static

        return getattr(static, name)
    if name in ("build_index_ray", "require_ray", "INSTALL_HINT"):
        from mice_index.distributed import ray_engine

        return getattr(ray_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
