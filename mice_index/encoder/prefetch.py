"""Overlapping the build's stages: tokenization, forward passes and writing run at the same time.

`DocumentEncoder.windows` is a pipeline of generators: documents -> tokenized chunks -> encoded
windows -> the caller (codec + shard writer). With `EncoderConfig.prefetch` = n > 0, `ahead` runs
the tokenizer stage and the forward-pass stage each in a thread of its own, n items ahead of
their consumer (torch and the Rust tokenizer release the GIL while they compute), so the
accelerator is not idle while the next documents are tokenized or the previous window is
compressed and written. Items, and errors, arrive in the order the serial pipeline gives them:
the windows, and therefore the states, are bit-identical (tests/test_encoder_prefetch.py), and an
unreadable document further on still lets every window before it be written first.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["ahead"]

T = TypeVar("T")
_END = object()


def ahead(items: Iterable[T], depth: int, name: str = "mice-ahead") -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` items ahead of the caller; yields
    them in order. An exception raised by `items` is re-raised here at its position. Closing
    this generator (or leaving a for loop early) stops the thread, which then closes `items`."""
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce():
        it = iter(items)
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        results.put((item, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            results.put((_END, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item, exc = results.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
