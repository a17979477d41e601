"""Store stage: the on-disk index (zarr v3 token states, Parquet document tables, JSON manifest).

See docs/index-format.md for the layout; `IndexReader` gives random access by document row.
"""

from mice_index.store.layout import FORMAT_VERSION
from mice_index.store.reader import IndexReader, index_info, read_manifest, verify_shards
from mice_index.store.writer import ShardWriter

__all__ = ["FORMAT_VERSION", "IndexReader", "ShardWriter", "index_info", "read_manifest", "verify_shards"]
