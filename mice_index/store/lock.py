"""One writer per index: an advisory lock (flock) on INDEX/.lock.

    with IndexLock(root):                  # build / merge / Ray driver: exclusive
        ...
    with IndexLock(root, shared=True):     # static slices: many at once, never with a build
        ...

The operating system releases a flock when its process dies (even by SIGKILL), so a killed build
cannot leave a stuck lock; the lock file itself stays (its presence means nothing). A process that
finds the lock taken fails at once with IndexBusyError. `is_locked(root)` lets readers tell an index
that is being built from one whose build was interrupted.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from mice_index.errors import IndexBusyError, os_errors

LOCK = ".lock"
RETRY_SECONDS = 1.0  # a reader's `is_locked` probe holds the lock for microseconds: retry that long


class IndexLock:
    """Advisory lock on `path` (default INDEX/.lock); `shared` lets several holders in at once.

    Raises IndexBusyError (one line naming the index and the lock file) if another process holds
    it in a conflicting mode. Reentrant use is not supported: one `with` per holder.
    """

    def __init__(self, root: str | os.PathLike, shared: bool = False, path: Path | None = None,
                 holder: str = "another process is building this index"):
        self.root = Path(root)
        self.path = path if path is not None else self.root / LOCK
        self.shared, self.holder = shared, holder
        self.fd: int | None = None

    def acquire(self) -> IndexLock:
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + RETRY_SECONDS
        with os_errors(self.path, "taking the index lock"):
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, mode)
                except BlockingIOError:
                    os.close(fd)
                    if time.monotonic() >= deadline:
                        raise IndexBusyError(f"{self.root}: {self.holder} (it holds the lock {self.path}); wait for "
                                             "it to finish, or use another --index") from None
                    time.sleep(0.05)
                    continue
                # the file we locked must still be the one at `path` (an --overwrite build swaps
                # the whole folder, lock file included, when it finishes)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self.fd = fd
                    return self
                os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(root: str | os.PathLike) -> bool:
    """True if some process holds INDEX/.lock (in any mode) right now; never blocks or creates it."""
    try:
        fd = os.open(Path(root) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


__all__ = ["LOCK", "IndexLock", "is_locked"]
