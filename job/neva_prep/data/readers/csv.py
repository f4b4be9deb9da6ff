"""CSV tables (WebVid, caption CSVs), row by row: records cut on newlines outside quotes, each parsed by
`csv.reader` (strict). `columnar.py` reads the same tables a record batch at a time and falls back here."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import IO

from neva_prep import storage
from neva_prep.data.readers import base
from neva_prep.data.readers.base import BOM, RAW_LIMIT, Row, Split, lines, text_lines
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput

WEBVID_COLUMNS = ("videoid", "name", "page_dir")
BOM_TEXT = BOM.decode("utf-8")
REPEATED_HEADER = "repeated header: the row names the columns again (files concatenated with their headers?)"
"""A row that names the columns again is a reject, never a record (`cat a.csv b.csv` makes one per file)."""


def is_header(fields: list[str], header: list[str]) -> bool:
    """Whether a row's fields are the header's names, compared as the header is read (stripped, without the
    BOM that a file made by Excel starts with)."""
    if fields[0].strip().lstrip(BOM_TEXT).strip() != header[0] or len(fields) != len(header):
        return False
    return all(f.strip() == h for f, h in zip(fields[1:], header[1:], strict=True))


def _csv_header(f: IO[bytes], source: str) -> tuple[list[str], int]:
    """The header fields and the offset of the first data byte (after BOM and header record)."""
    f.seek(0)
    offset = 3 if f.read(3) == BOM else 0
    record = b""
    for line in lines(f, offset):
        record += line
        if record.count(b'"') % 2 == 0:
            break
    if not record.strip():
        raise BadInput(f"{storage.redact(source)}: empty CSV file (no header)")
    try:
        header = next(csv.reader([record.decode("utf-8").rstrip("\r\n")], strict=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"{storage.redact(source)}, row 1: unreadable CSV header ({exc})") from None
    return [h.strip() for h in header], offset + len(record)


def csv_boundary(f: IO[bytes], known: int, pos: int) -> int:
    """The first record boundary >= pos, counting quote parity from `known` (a boundary <= pos): the offset
    just after a newline with an even number of `"` bytes between `known` and it (EOF if none)."""
    if pos <= known:
        return known
    f.seek(known)
    quotes = 0
    offset = known
    while offset < pos - 1:  # the prefix: only its parity matters
        chunk = f.read(min(base.CHUNK, pos - 1 - offset))
        if not chunk:
            return offset
        quotes += chunk.count(b'"')
        offset += len(chunk)
    while True:  # from pos - 1: the first newline outside quotes
        chunk = f.read(base.READ)
        if not chunk:
            return offset
        i = 0
        while True:
            j = chunk.find(b"\n", i)
            if j < 0:
                quotes += chunk.count(b'"', i)
                break
            quotes += chunk.count(b'"', i, j)
            if quotes % 2 == 0:
                return offset + j + 1
            i = j + 1
        offset += len(chunk)


class _Feed:
    """An iterator that hands `csv.reader` the one record we cut; resumable after it runs dry, so a record
    the csv module thinks is unfinished ends as an error instead of swallowing the next record."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text: str | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        text = self.text
        if text is None:
            raise StopIteration
        self.text = None
        return text


def csv_columns(f: IO[bytes], source: str, fmt: str, options: ConvertOptions) -> tuple[list[str], int]:
    """The header (checked: the needed columns, no duplicate names) and the offset of the first data byte."""
    header, data_start = _csv_header(f, source)
    if fmt == "webvid":
        needed = list(WEBVID_COLUMNS)
    else:
        needed = [c for c in (options.media_column, options.caption_column, options.id_column) if c]
    missing = [c for c in needed if c not in header]
    if missing:
        raise BadInput(
            f"{storage.redact(source)}, row 1: no column {missing[0]!r} in header {','.join(header)}"
            " (a CSV file needs a header row naming its columns)"
        )
    if len(set(header)) != len(header):
        raise BadInput(f"{storage.redact(source)}, row 1: duplicate column names in the header")
    return header, data_start


def read_csv(split: Split, fmt: str, options: ConvertOptions) -> Iterator[Row]:
    source = split.source
    with storage.open_read(source) as f:
        header, data_start = csv_columns(f, source, fmt, options)
        size = f.seek(0, 2)
        start = csv_boundary(f, data_start, split.start)
        end = size if split.end >= size else csv_boundary(f, start, split.end)
        if end <= start:
            return
        yield from csv_rows(text_lines(f, start, end), header, source)


def csv_rows(
    lines: Iterable[tuple[str, bool]], header: list[str], source: str, first: int = 0
) -> Iterator[Row]:
    """The rows of whole lines of a CSV table (from a record boundary), numbered from `first` + 1."""
    ncols = len(header)
    feed = _Feed()
    reader = csv.reader(feed, strict=True)
    n = first
    pending = ""
    pending_ok = True
    for line, ok in lines:
        if pending:  # inside a quoted field that spans lines
            pending += line
            pending_ok = pending_ok and ok
            if pending.count('"') % 2:
                continue
            text, ok, pending = pending, pending_ok, ""
        elif line.count('"') % 2:
            pending, pending_ok = line, ok
            continue
        else:
            text = line
            if len(text) <= 2 and not text.strip():
                continue  # a blank line is not a record
        n += 1
        raw = text.rstrip("\r\n")
        if len(raw) > RAW_LIMIT:
            raw = raw[:RAW_LIMIT] + "…"
        if not ok:
            yield Row(source, n, None, raw, "invalid utf-8: the row is not UTF-8 text")
            continue
        feed.text = text
        try:
            fields = next(reader)
        except csv.Error as exc:
            feed.text = None
            yield Row(source, n, None, raw, f"malformed csv row: {exc}")
            continue
        if len(fields) != ncols:
            detail = f"{len(fields)} fields, the header has {ncols}"
            yield Row(source, n, None, raw, f"malformed csv row: {detail}")
            continue
        if is_header(fields, header):
            yield Row(source, n, None, raw, REPEATED_HEADER)
            continue
        yield Row(source, n, dict(zip(header, fields, strict=True)), raw, None)
    if pending:  # an unterminated quote at the end of the split
        raw = pending.rstrip("\r\n")[:RAW_LIMIT]
        yield Row(source, n + 1, None, raw, "malformed csv row: unexpected end of data (unclosed quote)")
