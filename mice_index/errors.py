"""One exception root for user-facing errors: the CLI prints their message as one line and exits 2.

Internal invariants use assert; anything caused by user input (files, ids, options) raises a
subclass of MiceIndexError whose message names the file / line / document / option at fault.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


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


class IndexBusyError(IndexError_):
    """Another process holds the index's write lock (a build, a merge, or static slices)."""


class StorageError(MiceIndexError):
    """The operating system refused a read or write (disk full, permission denied, read-only file
    system, a folder removed while in use). The message names the path and what to do."""


# errno -> what to do; errors with other numbers are not the user's to fix and keep their traceback
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space or write to another disk, then re-run "
                  "(files already written are kept)",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere, then re-run (files already "
                  "written are kept)",
    errno.EACCES: "permission denied: fix the permissions or choose a path you can write to",
    errno.EPERM: "operation not permitted: fix the permissions or choose a path you can write to",
    errno.EROFS: "read-only file system: choose a path on a writable file system",
    errno.ENOENT: "no such file or folder (was it removed while in use?): check the path and re-run",
}


def storage_error(exc: OSError, path: object = None, action: str | None = None) -> StorageError | None:
    """StorageError for an OSError the user can fix (see _OS_ADVICE), naming `path` (default: the
    file the OS named) and `action` (e.g. "writing the run file"); None for any other OSError."""
    advice = _OS_ADVICE.get(exc.errno)  # type: ignore[arg-type]
    if advice is None:
        return None
    where = exc.filename if exc.filename is not None else path
    head = f"{where}: " if where is not None else ""
    doing = f" while {action}" if action else ""
    return StorageError(f"{head}{advice}{doing} ({errno.errorcode.get(exc.errno, exc.errno)})")


@contextlib.contextmanager
def os_errors(path: object, action: str) -> Iterator[None]:
    """Turn a user-fixable OSError raised inside the block into a StorageError naming `path`.

        with os_errors(run_path, "writing the run file"):
            write_run(run_path, results)
    """
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, path, action)
        if err is None and exc.errno is None:  # e.g. numpy's short write "N requested and 0 written"
            err = StorageError(f"{exc.filename or path}: {action} failed ({exc}); check the free space and "
                               "permissions there, then re-run")
        if err is None:
            raise
        raise err from exc
