"""Progress for long steps: a rich bar on a terminal, plain periodic lines in logs (Kubernetes, Slurm).

On a terminal: a bar with the total, the rate and the time left. In logs (stderr is not a terminal): one
line at most every `interval_s` seconds (30, or $NEVA_PREP_PROGRESS_S), with a UTC time stamp, the
percentage, the rate and the time left, so that a log shows a long step moving without flooding it; a last
line when a step that printed any ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # rich is imported only for a terminal: batch jobs do not pay for it at start
    from rich.progress import Progress, TaskID


INTERVAL_ENV = "NEVA_PREP_PROGRESS_S"
"""Seconds between progress lines in logs (default 30); `launch local` and the tests set it lower."""
DEFAULT_INTERVAL_S = 30.0


class ByteRange(Protocol):
    """A part [start, end) of one file (the data step's `Split`)."""

    @property
    def source(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def interval_from_env() -> float:
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def size(n: float) -> str:
    """Bytes for people: `512 B`, `12.3 MiB`, `1.50 GiB`."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Reporter:
    """Counts units (bytes or rows) and items; prints to stderr; use as a context manager."""

    def __init__(
        self, label: str, total: int | None, *, unit: str = "bytes", interval_s: float | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        self.done = 0
        self.items = 0
        self.what = ""
        self._tty = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._start = time.monotonic()
        self._last = self._start
        self._lines = 0

    def __enter__(self) -> Reporter:
        if self._tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns: list = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
            if self.unit == "bytes":
                columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
            else:
                columns += [MofNCompleteColumn()]
            columns += [TextColumn("{task.fields[items]}"), TimeRemainingColumn()]
            self._progress = Progress(*columns, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, items="")
        return self

    def advance(self, amount: int, items: int = 0, what: str = "") -> None:
        """Count `amount` more units (and `items` more things, e.g. tensors)."""
        self.update(self.done + amount, self.items + items, what)

    def update(self, done: int, items: int | None = None, what: str = "") -> None:
        """Set the units done so far (a position in the input), and optionally the items."""
        self.done = done
        if items is not None:
            self.items = items
        self.what = what or self.what
        if self._progress is not None and self._task is not None:
            text = f"{self.items:,} {self.what}" if self.what else ""
            self._progress.update(self._task, completed=done, items=text)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line()

    def reading(self, ranges: Iterable[ByteRange]) -> Callable[[str, int], None]:
        """A `storage.reporting_reads` callback: the bytes done are the read positions within `ranges`
        (one per file, read in order); reads outside them (headers, boundary scans) count for nothing."""
        offsets: dict[str, tuple[int, int, int]] = {}
        before = 0
        for r in ranges:
            offsets[r.source] = (before, r.start, r.end)
            before += r.end - r.start

        def position(url: str, pos: int) -> None:
            if url in offsets:
                base, start, end = offsets[url]
                done = base + min(max(pos - start, 0), end - start)
                if done > self.done:
                    self.update(done)

        return position

    def line(self) -> str:
        """`2026-12-02T14:51:28Z LABEL: 40% (98.0 MiB of 244.0 MiB), 12.1 MiB/s, 12s left, 409,600 rows`."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed

        def amount(n: float) -> str:
            return size(n) if self.unit == "bytes" else f"{n:,.0f} {self.unit}"

        if self.total:
            pct = min(100.0, 100 * self.done / self.total)
            text = f"{pct:.0f}% ({amount(self.done)} of {amount(self.total)})"
        else:
            text = amount(self.done)
        text += f", {amount(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", {duration((self.total - self.done) / rate)} left"
        elif self.total and self.done >= self.total:
            text += f", done in {duration(elapsed)}"
        if self.what:
            text += f", {self.items:,} {self.what}"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{stamp} {self.label}: {text}"

    def _line(self) -> None:
        self._lines += 1
        print(self.line(), file=sys.stderr, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif exc_type is None and self._lines:
            if self.total and self.done < self.total:
                self.done = self.total  # the last split's end may lie past the last byte read
            self._line()
