"""Input stage: streaming readers for documents, queries and qrels.

Sources are a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv), a single file
(JSONL / TSV / TREC qrels; `.gz`, `.bz2`, `.xz` are decompressed) or `irds:<ir_datasets id>`.
Every bad input raises one `mice_index.errors.SourceError` naming the file and line; text that is
not valid Unicode is refused, never repaired (`mice_index.text`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mice_index.sources.fields import Field, parse_field
from mice_index.sources.qrels import read_qrels
from mice_index.sources.readers import count_documents, read_documents, read_queries
from mice_index.sources.records import Document, Query


def sample_collection() -> Path:
    """Folder of the small bundled demo collection (BEIR layout, CC0, written for this project)."""
    return Path(str(resources.files("mice_index") / "data" / "sample"))


__all__ = [
    "Document",
    "Field",
    "Query",
    "count_documents",
    "parse_field",
    "read_documents",
    "read_qrels",
    "read_queries",
    "sample_collection",
]
