"""Store stage: the on-disk index (zarr v3 token states, Parquet document tables, JSON manifest).

See docs/index-format.md for the layout; `IndexReader` gives random access by document row.
Re-exports are resolved on first use, so reading a manifest (`mice-index info`) never imports
zarr or pyarrow.
"""

from importlib import import_module

from mice_index.store.layout import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "IndexChanged", "IndexReader", "Manifest", "ShardWriter", "build_candidates", "index_info",
           "new_manifest", "read_manifest", "upgrade_index", "verify_shards", "write_manifest"]

_HOMES = {"IndexChanged": "generation", "IndexReader": "reader", "Manifest": "manifest", "ShardWriter": "writer",
          "build_candidates": "candidates_build", "index_info": "manifest", "new_manifest": "manifest",
          "read_manifest": "manifest", "upgrade_index": "upgrade", "verify_shards": "manifest",
          "write_manifest": "manifest"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"mice_index.store.{_HOMES[name]}"), name)
