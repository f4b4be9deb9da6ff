"""What every reader shares: the `Split` it reads, the `Row`s it yields, chunked line reading."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

CHUNK = 16 * 2**20
READ = 4 * 2**20
RAW_LIMIT = 10_000
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Split:
    """One shard's share of one input file: the records that start in [start, end)."""

    source: str
    file_index: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Row:
    """One input record; `value` is None and `error` is ``"reason: detail"`` when it could not be read.

    `raw` is the row's text for reports; readers whose rows have no cheap text of their own (JSON arrays,
    Parquet) pass None and `raw` is then the compact JSON of `value`, made only if someone asks.
    """

    source: str
    split_row: int
    value: Any
    raw_text: str | None
    error: str | None

    @property
    def raw(self) -> str:
        if self.raw_text is not None:
            return self.raw_text
        text = orjson.dumps(self.value, default=str).decode()
        return text if len(text) <= RAW_LIMIT else text[:RAW_LIMIT] + "…"


def first_byte(f: IO[bytes]) -> bytes:
    head = f.read(4096).removeprefix(BOM).lstrip()
    while not head:
        more = f.read(READ)
        if not more:
            return b""
        head = more.lstrip()
    return head[:1]


def lines(f: IO[bytes], pos: int) -> Iterator[bytes]:
    """Lines (with their newline) from byte `pos`, read in big chunks (used for the CSV header)."""
    f.seek(pos)
    carry = b""
    while True:
        chunk = f.read(READ)
        if not chunk:
            if carry:
                yield carry
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield from io.BytesIO(memoryview(data)[:cut])


def next_line_start(f: IO[bytes], pos: int) -> int:
    """The first offset >= pos that starts a line (0, or just after a newline)."""
    if pos == 0:
        return 0
    f.seek(pos - 1)
    offset = pos - 1
    while True:
        chunk = f.read(READ)
        if not chunk:
            return offset
        i = chunk.find(b"\n")
        if i >= 0:
            return offset + i + 1
        offset += len(chunk)


def text_lines(f: IO[bytes], start: int, end: int) -> Iterator[tuple[str, bool]]:
    """(line, decoded cleanly) for the bytes [start, end), read in big chunks and decoded a chunk at a time;
    a chunk with invalid UTF-8 is decoded line by line (bad lines with replacement characters)."""
    f.seek(start)
    left = end - start
    carry = b""
    while left > 0 or carry:
        chunk = f.read(min(READ, left)) if left > 0 else b""
        left -= len(chunk)
        if not chunk:
            left = 0
            data, carry = carry, b""
        else:
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1 if left > 0 else len(data)
            data, carry = data[:cut], data[cut:]
            if not data:
                continue
        yield from decoded_lines(data)


def decoded_lines(data: bytes) -> Iterator[tuple[str, bool]]:
    """(line, decoded cleanly) for whole lines of bytes: decoded at once, or line by line when the block
    holds invalid UTF-8 (bad lines with replacement characters)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for bline in io.BytesIO(data):
            try:
                yield bline.decode("utf-8"), True
            except UnicodeDecodeError:
                yield bline.decode("utf-8", errors="replace"), False
        return
    for line in io.StringIO(text, newline="\n"):
        yield line, True
