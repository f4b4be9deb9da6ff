"""JSON lines: a record per line; a line that is not JSON is a row with its error."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO

import orjson

from neva_prep import storage
from neva_prep.data.readers.base import BOM, RAW_LIMIT, Row, Split, lines, next_line_start, text_lines
from neva_prep.errors import BadInput


def first_line_parses(f: IO[bytes], source: str) -> None:
    """A `.json` file that starts with `{` is read as JSON lines: its first line must then be a value."""
    f.seek(0)
    for line in lines(f, 3 if f.read(3) == BOM else 0):
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadInput(
                f"{storage.redact(source)}: expected a JSON array or JSON lines; the first line is not a"
                " JSON value (one object spread over several lines?)"
            ) from None
        return


def line_range(f: IO[bytes], split: Split) -> tuple[int, int]:
    """The bytes [start, end) of the lines that start in `split` (a BOM at the file start is skipped)."""
    size = f.seek(0, 2)
    start = next_line_start(f, split.start)
    if start == 0:
        f.seek(0)
        start = 3 if f.read(3) == BOM else 0
    end = size if split.end >= size else next_line_start(f, split.end)
    return start, end


def read_jsonl(split: Split) -> Iterator[Row]:
    with storage.open_read(split.source) as f:
        start, end = line_range(f, split)
        yield from jsonl_rows(text_lines(f, start, end), split.source)


def jsonl_rows(lines: Iterable[tuple[str, bool]], source: str, first: int = 0) -> Iterator[Row]:
    """The rows of whole JSON lines (line, decoded cleanly), numbered from `first` + 1; a white-space line
    is not a row."""
    loads = orjson.loads
    n = first
    for line, ok in lines:
        if line.isspace():
            continue
        n += 1
        raw = line.rstrip("\r\n")
        if len(raw) > RAW_LIMIT:
            raw = raw[:RAW_LIMIT] + "…"
        if not ok:
            yield Row(source, n, None, raw, "invalid utf-8: the line is not UTF-8 text")
            continue
        try:
            value = loads(line)
        except orjson.JSONDecodeError as exc:
            yield Row(source, n, None, raw, f"invalid json: {exc}")
            continue
        yield Row(source, n, value, raw, None)
