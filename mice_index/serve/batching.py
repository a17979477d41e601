"""Micro-batching: requests that arrive within a few milliseconds are scored together.

    batcher = MicroBatcher(run, BatchConfig(window_ms=5))
    batcher.start()
    result = await batcher.submit(key, item)   # from the event loop; QueueFull when saturated
    batcher.stop()

One worker thread takes the first waiting request, keeps collecting for `window_ms` (or until
`max_batch` requests), splits what it collected by `key` (requests with different settings cannot
share a pass through the scorer) and calls `run(key, items) -> results` once per group, in arrival
order. CPU-bound scoring thus never runs on the event loop, and concurrent requests share one
first-stage call and one MiceScorer call (which already batches across queries).

A failing group is retried one request at a time, so one bad request cannot fail the others; every
exception reaches only its own caller. The queue is bounded: `submit` raises QueueFull at once
instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["BatchConfig", "MicroBatcher", "QueueFull", "ShuttingDown"]


class QueueFull(Exception):
    """More requests are waiting than the queue holds (the server answers 503)."""


class ShuttingDown(Exception):
    """The batcher was stopped before this request ran (the server answers 503)."""


@dataclass(frozen=True)
class BatchConfig:
    window_ms: float = 5.0  # how long the worker keeps collecting after the first request
    max_batch: int = 32  # requests handled in one collection round
    max_queue: int = 64  # requests waiting (not yet collected); more -> QueueFull

    def __post_init__(self):
        if self.window_ms < 0 or self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"bad batching settings: {self}")


@dataclass
class _Job:
    key: Hashable
    item: Any
    future: concurrent.futures.Future


_STOP = object()


class MicroBatcher:
    """Runs `run(key, items) -> list of results (one per item)` on one worker thread over requests
    collected for a short window and grouped by key."""

    def __init__(self, run: Callable[[Hashable, Sequence[Any]], Sequence[Any]], config: BatchConfig = BatchConfig()):
        self.run, self.config = run, config
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._nested = False  # inside run_waiting
        self.batches = 0  # collection rounds run (for logs and tests)
        self.largest_group = 0  # most requests that shared one run() call

    # -- lifecycle --
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mice-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the round in progress, then stop; requests still queued fail with ShuttingDown."""
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)  # wakes a worker waiting for work
        except queue.Full:
            pass  # the worker is busy and sees the flag after its round
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_queued()

    @property
    def pending(self) -> int:
        """Requests waiting to be collected."""
        return self._queue.qsize()

    # -- submitting --
    def submit_future(self, key: Hashable, item: Any) -> concurrent.futures.Future:
        """Queue one request -> a Future of its result. QueueFull / ShuttingDown at once."""
        if self._stopping.is_set():
            raise ShuttingDown("the server is shutting down")
        job = _Job(key, item, concurrent.futures.Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"too many requests waiting ({self.config.max_queue}); try again shortly") from None
        return job.future

    async def submit(self, key: Hashable, item: Any) -> Any:
        """From an event loop: queue one request and wait for its result (or its exception)."""
        return await asyncio.wrap_future(self.submit_future(key, item))

    # -- the worker --
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=0.25)
            except queue.Empty:
                continue
            if first is _STOP:
                break
            jobs = [first]
            deadline = time.monotonic() + self.config.window_ms / 1000
            while len(jobs) < self.config.max_batch:
                job = self._next_job(max(0.0, deadline - time.monotonic()))
                if job is None:
                    break
                jobs.append(job)
            self.batches += 1
            self._run_jobs(jobs)
        self._fail_queued()

    def _next_job(self, timeout: float | None) -> _Job | None:
        """The next queued job, waiting at most `timeout` seconds (None: not at all); None when
        there is none or a stop was queued (then the batcher is marked as stopping)."""
        try:
            job = self._queue.get_nowait() if timeout is None else self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if job is _STOP:
            self._stopping.set()
            return None
        return job

    def _run_jobs(self, jobs: list[_Job]) -> None:
        groups: dict[Hashable, list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():  # False: the caller went away
                groups.setdefault(job.key, []).append(job)
        for key, group in groups.items():
            self.largest_group = max(self.largest_group, len(group))
            self._run_group(key, group)

    def run_waiting(self) -> None:
        """Called by `run` between the passes of a long request (on the worker thread): run the
        requests that arrived meanwhile, each whole (they do not yield in turn), so that a long
        request delays the others by one pass instead of all of it. No-op anywhere else."""
        if self._nested or threading.current_thread() is not self._thread:
            return
        jobs = []
        while (job := self._next_job(None)) is not None:
            jobs.append(job)
        if not jobs:
            return
        self._nested = True
        try:
            self._run_jobs(jobs)
        finally:
            self._nested = False

    def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        try:
            results = self.run(key, [j.item for j in group])
            assert len(results) == len(group), "run() must return one result per item"
        except BaseException as exc:  # noqa: BLE001 - handed to the callers, never kills the worker
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            log.debug("a batch of %d failed (%s); running its requests one by one", len(group), exc)
            for job in group:
                try:
                    job.future.set_result(self.run(key, [job.item])[0])
                except BaseException as one:  # noqa: BLE001
                    job.future.set_exception(one)
            return
        for job, result in zip(group, results):
            job.future.set_result(result)

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server is shutting down"))
