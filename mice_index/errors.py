"""One exception root for user-facing errors: the CLI prints their message as one line and exits 2.

Internal invariants use assert; anything caused by user input (files, ids, options) raises a
subclass of MiceIndexError whose message names the file / line / document / option at fault.
"""


class MiceIndexError(Exception):
    """Base class for errors caused by user input or environment, shown without a traceback."""


class SourceError(MiceIndexError):
    """Bad corpus / queries / qrels input (malformed line, missing field, duplicate id, ...)."""


class ModelError(MiceIndexError):
    """A model or checkpoint cannot be loaded (wrong format, pickle file, unsupported family)."""


class IndexError_(MiceIndexError):
    """An index folder is missing, incomplete, corrupt or belongs to another model."""


class SearchError(MiceIndexError):
    """Bad search request (empty query, bad k/depth, unknown candidate generator)."""
