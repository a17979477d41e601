"""Progress of long commands (build's encoding, batch search): a rich bar in a terminal, plain
lines every `LOG_EVERY` seconds when stderr is not a terminal (CI, a log file), where a bar
would print nothing until the end.

    with task_progress("encode", "docs", console, quiet=quiet) as p:
        p.set_total(30_000)
        p.advance(1024)
"""

from __future__ import annotations

import time

from rich.console import Console

LOG_EVERY = 10.0  # seconds between two progress lines when stderr is not a terminal


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress:
    """Progress as one plain line every `every` seconds, and one at the end, e.g.
    "encode: 4,096/30,000 docs (13.7%), 120 docs/s, elapsed 0:00:34, ETA 0:03:36"."""

    def __init__(self, label: str, unit: str, console: Console, every: float = LOG_EVERY, clock=time.monotonic,
                 final: bool = True):
        self.label, self.unit, self.console, self.every, self.clock = label, unit, console, every, clock
        self.final = final  # a last line at the end (False: the command prints its own summary)
        self.total: int | None = None
        self.done = 0
        self.start = self.last = clock()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None and self.done and self.final:
            self._line()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        now = self.clock()
        self.done += n
        if now - self.last >= self.every:
            self._line(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        parts = [f"{self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.1f}%)"
        busy = now - self.start  # model loading included: the rate of the whole command
        rate = self.done / busy if busy > 0 else None
        if rate:
            parts.append(f"{rate:,.0f} {self.unit}/s")
        parts.append(f"elapsed {_duration(now - self.start)}")
        if rate and self.total and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return f"{self.label}: " + ", ".join(parts)

    def _line(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last = now
        self.console.print(self.line(now), highlight=False, soft_wrap=True)


class BarProgress:
    """A rich progress bar (terminal): count, percentage, rate, elapsed time and ETA."""

    def __init__(self, label: str, unit: str, console: Console, quiet: bool = False, transient: bool = False):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                            _Rate(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=console, disable=quiet, transient=transient)
        self.task = self.bar.add_task(label, total=None)

    def __enter__(self) -> BarProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def set_total(self, total: int | None) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


def _Rate(unit: str):
    """A column "123 docs/s": rich's speed estimate, else done / elapsed (rich needs two updates)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None and task.completed and task.elapsed:
                speed = task.completed / task.elapsed
            return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="progress.data.speed")

    return Rate()


def task_progress(label: str, unit: str, console: Console, quiet: bool = False, transient: bool = False,
                  every: float = LOG_EVERY):
    """BarProgress in a terminal, LineProgress otherwise (nothing at all with `quiet`; `transient`:
    the bar disappears at the end, and no last line is logged)."""
    if quiet or console.is_terminal:
        return BarProgress(label, unit, console, quiet=quiet, transient=transient)
    return LineProgress(label, unit, console, every=every, final=not transient)
