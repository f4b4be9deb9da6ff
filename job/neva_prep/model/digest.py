"""The sha256 of a stream as it is written, and a look at bytes the kernel copies: on a helper thread.

The model step records the `.nemo`'s sha256 in its manifest; hashing the file afterwards read it all again
(on s3://, a second full download). The writer already handles every byte, so it hands each write here.

Most tensor bytes never pass through our memory: they are copied by the kernel (`FileRange`, see
`TarStream`). Those are read back from their source here, from the page cache the copy has just filled, in
`PIECE`-sized pieces: hashed, and shown to `inspect` (the converter's NaN/Inf check), the only place those
bytes are seen at all. The thread runs beside the copy, so its cost is CPU on another core rather than wall
time, when there is a free core. sha256 is most of that CPU (1.6 GB/s a core, against 12 GB/s for the NaN
check and 7.5 GB/s for the read-back), so `checkpoint convert` alone does not hash; the model step asks.
Bytes waiting here are capped (`MEMORY`), and so is how far the thread may fall behind the writer (`LAG`,
so that read-back pages are still cached): past a cap, `add` waits.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable

from neva_prep.errors import StepFailed
from neva_prep.model.hf import FileRange

Inspect = Callable[[FileRange, int, memoryview], None]


class StreamDigest:
    """`add` every write in order; `hexdigest` waits for the thread and returns the sha256 of them all.

    An exception raised by `inspect` stops the thread and is re-raised by the next `add`, `check` or
    `hexdigest` in the writer's thread, so the writer fails before its output is committed.
    """

    PIECE = 16 * 2**20
    MEMORY = 256 * 2**20
    LAG = 1 * 2**30

    def __init__(self, inspect: Inspect | None = None, *, sha256: bool = True) -> None:
        self._inspect = inspect
        self._sha = hashlib.sha256() if sha256 else None
        self._queue: deque[bytes | memoryview | FileRange] = deque()
        self._memory = 0  # bytes held by queued bytes items
        self._lag = 0  # bytes queued, file ranges included
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="neva-prep-digest", daemon=True)

    def __enter__(self) -> StreamDigest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            if exc[0] is not None:
                self._queue.clear()
            self._cond.notify_all()
        self._thread.join()

    def add(self, data: bytes | memoryview | FileRange) -> None:
        if self._sha is None and not isinstance(data, FileRange):
            return  # not hashing: only the kernel-copied bytes need a look
        held = 0 if isinstance(data, FileRange) else len(data)
        with self._cond:
            while (
                self._error is None
                and self._queue
                and (self._memory + held > self.MEMORY or self._lag + len(data) > self.LAG)
            ):
                self._cond.wait()
            self._raise()
            self._queue.append(data)
            self._memory += held
            self._lag += len(data)
            self._cond.notify_all()

    def check(self) -> None:
        """Raise what the thread found so far (cheap: lets the writer stop early)."""
        with self._cond:
            self._raise()

    def hexdigest(self) -> str:
        """Wait until everything added is hashed (and inspected); the hex sha256 ("" when not hashing)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()
        return self._sha.hexdigest() if self._sha is not None else ""

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        buf = memoryview(bytearray(self.PIECE))
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                if isinstance(item, FileRange):
                    self._read_back(item, buf)
                elif self._sha is not None:
                    self._sha.update(item)
            except BaseException as exc:  # handed to the writer's thread
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._memory -= 0 if isinstance(item, FileRange) else len(item)
                self._lag -= len(item)
                self._cond.notify_all()

    def _read_back(self, r: FileRange, buf: memoryview) -> None:
        """Hash and inspect `r` in full pieces, so that a piece never splits a tensor element."""
        done = 0
        while done < r.size:
            want = min(len(buf), r.size - done)
            got = 0
            while got < want:
                n = os.preadv(r.fd, [buf[got:want]], r.offset + done + got)
                if n <= 0:
                    raise StepFailed(f"{r.file}: {r.name!r} ended early (truncated while converting?)")
                got += n
            piece = buf[:want]
            if self._sha is not None:
                self._sha.update(piece)
            if self._inspect is not None:
                self._inspect(r, done, piece)
            done += want
