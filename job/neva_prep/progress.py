"""Progress for long steps: a rich bar on a terminal, plain periodic lines in logs (Kubernetes, Slurm)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Reporter:
    """Counts units (bytes or rows) and items; prints to stderr; use as a context manager."""

    def __init__(self, label: str, total: int | None, *, unit: str = "bytes", interval_s: float = 10.0):
        self.label = label
        self.total = total
        self.unit = unit
        self.interval_s = interval_s
        self.done = 0
        self.items = 0
        self._tty = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._start = time.monotonic()
        self._last = self._start

    def __enter__(self) -> Reporter:
        if self._tty:
            columns: list = [TextColumn("{task.description}"), BarColumn()]
            if self.unit == "bytes":
                columns += [DownloadColumn(), TransferSpeedColumn()]
            else:
                columns += [MofNCompleteColumn()]
            columns += [TextColumn("{task.fields[items]}"), TimeRemainingColumn()]
            self._progress = Progress(*columns, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, items="")
        return self

    def advance(self, amount: int, items: int = 0, what: str = "") -> None:
        self.done += amount
        self.items += items
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=amount, items=f"{self.items} {what}".strip())
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line(what)

    def _line(self, what: str) -> None:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        amount = f"{self.done / 2**20:.0f} MiB" if self.unit == "bytes" else f"{self.done} {self.unit}"
        items = f", {self.items} {what}" if what else ""
        elapsed = time.monotonic() - self._start
        print(f"{self.label}: {amount}{pct}{items} in {elapsed:.0f}s", file=sys.stderr, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
