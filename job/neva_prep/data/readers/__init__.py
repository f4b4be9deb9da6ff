"""Readers: one shard's share of the input files, as `Row`s, streamed through the storage layer.

Sharding is by byte ranges. Each input file is cut into `num_shards` equal ranges; shard i owns the records
that START in its range, so the shards together cover every record exactly once and, taken in index order,
in source order. A reader finds the record boundaries at or after both ends of its range, then reads between
them in big chunks (seeks, never the whole file; memory stays at a chunk plus one record):
- JSONL: the byte after a newline (a literal newline never occurs inside a JSON string).
- CSV: the byte after a newline outside quotes. Quote parity is known only from a known boundary (the end of
  the header), so the reader counts `"` bytes from there to its range start in 16 MiB chunks (`bytes.count`,
  C speed). On object storage shard i thus reads i/N of the file first: the whole job reads about N/2 file
  sizes. Records are cut by the same parity rule while reading, so shards never disagree on boundaries,
  even on malformed quoting; each record is then parsed by `csv.reader` (strict).
- JSON array: the byte after the `[` or a top-level `,`. Bracket depth is known only from the file start: the
  prefix is scanned at C speed (`_depth_change`), the bytes near the range start tokenized with a regex.
  Elements are parsed by orjson in blocks of ~4 MiB (`_guess_block`).
- Parquet: the row groups whose first page lies in the range, read one batch at a time with pyarrow.
Rows that cannot be read (invalid UTF-8, malformed CSV, invalid JSON) come out as `Row`s with `error` set and
their raw text, so that the merge can report them; a file that cannot be read at all is `BadInput`, found by
`check_split` (header, first bytes, closing bracket) before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator

from neva_prep import storage
from neva_prep.data.readers.base import Row, Split, first_byte
from neva_prep.data.readers.csv import csv_columns, read_csv
from neva_prep.data.readers.files import file_kind
from neva_prep.data.readers.json_array import array_close, read_json_array
from neva_prep.data.readers.jsonl import first_line_parses, read_jsonl
from neva_prep.data.readers.parquet import parquet_columns, read_parquet
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput


def check_split(split: Split, fmt: str, options: ConvertOptions) -> None:
    """BadInput unless the file of `split` looks readable: a CSV header with the needed columns, a JSON
    array that opens and closes (or JSON lines whose first line parses), a Parquet schema with the needed
    columns. Cheap (a header, a few KiB at each end); run before anything is written, so that a file that
    cannot be read leaves nothing at the destination."""
    kind = file_kind(split.source, fmt)
    source = split.source
    with storage.open_read(source) as f:
        if kind == "csv":
            csv_columns(f, source, fmt, options)
        elif kind == "parquet":
            parquet_columns(f, source, options)
        elif kind == "json":
            first = first_byte(f)
            if first == b"[":
                array_close(f, source)
            elif first == b"{":
                first_line_parses(f, source)
            elif first != b"":
                raise BadInput(f"{storage.redact(source)}: expected a JSON array or JSON lines")


def read_split(split: Split, fmt: str, options: ConvertOptions) -> Iterator[Row]:
    """The rows of `split`, in file order; `split_row` counts from 1 within the split."""
    kind = file_kind(split.source, fmt)
    if kind == "csv":
        return read_csv(split, fmt, options)
    if kind == "parquet":
        return read_parquet(split, options)
    if kind == "json":
        with storage.open_read(split.source) as f:
            first = first_byte(f)
        if first == b"[":
            return read_json_array(split)
        if first not in (b"{", b""):
            raise BadInput(f"{storage.redact(split.source)}: expected a JSON array or JSON lines")
    return read_jsonl(split)
