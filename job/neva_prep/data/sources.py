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

import csv
import io
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from neva_prep import storage
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput

FORMATS = ("webvid", "captions", "llava")
CHUNK = 16 * 2**20
READ = 4 * 2**20
RAW_LIMIT = 10_000
WEBVID_COLUMNS = ("videoid", "name", "page_dir")
_BOM = b"\xef\xbb\xbf"


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


# --- file kinds -------------------------------------------------------------------------------------------


def file_kind(url: str, fmt: str) -> str:
    """`csv`, `jsonl`, `json` (a JSON array, or JSON lines if it does not start with `[`) or `parquet`."""
    if fmt not in FORMATS:
        raise BadInput(f"--from must be one of {', '.join(FORMATS)}, got {fmt!r}")
    name = posixpath.basename(url.rstrip("/")).lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            raise BadInput(f"{storage.redact(url)}: compressed inputs are not supported; decompress first")
    ext = posixpath.splitext(name)[1]
    if fmt == "webvid":
        if ext not in (".csv", ".txt", ""):
            raise BadInput(f"{storage.redact(url)}: --from webvid reads CSV files")
        return "csv"
    kinds = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
    if fmt == "llava":
        kinds = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
    try:
        return kinds[ext]
    except KeyError:
        raise BadInput(
            f"{storage.redact(url)}: cannot tell the file type from {ext or 'no extension'!r} "
            f"(--from {fmt} reads {', '.join(sorted(kinds))})"
        ) from None


def expand_sources(src: str) -> list[str]:
    """The input files: a glob (sorted), a directory's files (sorted), or one file; BadInput if none."""
    if any(c in src for c in "*?["):
        found = [u for u in storage.glob(src) if not storage.isdir(u)]
    elif storage.isdir(src):
        found = [storage.join(src, n) for n in storage.listdir(src) if not n.startswith(".")]
        found = [u for u in found if not storage.isdir(u)]
    elif storage.exists(src):
        found = [src]
    else:
        raise BadInput(f"{storage.redact(src)}: no such file")
    if not found:
        raise BadInput(f"{storage.redact(src)}: matches no input files")
    return sorted(found)


_VERSION_KEYS = ("VersionId", "generation", "ETag", "etag", "md5Hash")
"""Object-store metadata that changes whenever an object's bytes do (S3, GCS), in order of preference."""


def file_identity(url: str) -> dict[str, Any]:
    """Which version of `url` this is, in one metadata request: redacted URL, size, and locally the
    modification time in ns, on object stores the version id / ETag. A file rewritten in place to the
    same size still gets a new identity (unless its mtime is restored by hand)."""
    identity: dict[str, Any] = {"source": storage.redact(url)}
    try:
        if storage.is_local(url):
            st = os.stat(storage.local_path(url))
            identity.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            return identity
        info = storage.filesystem(url).info(url)
    except FileNotFoundError:
        raise BadInput(f"{storage.redact(url)}: no such file") from None
    except PermissionError:
        raise BadInput(f"{storage.redact(url)}: permission denied") from None
    identity["size"] = int(info["size"])
    versions = {k: str(info[k]) for k in _VERSION_KEYS if info.get(k)}
    if not versions:  # a store without versions or ETags: its modification time is the best there is
        versions = {k: str(info[k]) for k in ("mtime", "LastModified", "updated") if info.get(k)}
    identity.update(versions)
    return identity


# --- splitting --------------------------------------------------------------------------------------------


def splits_for_shard(
    sources: list[str], fmt: str, num_shards: int, shard_index: int, sizes: list[int] | None = None
) -> list[Split]:
    """Shard `shard_index`'s share of the input: range i of `num_shards` equal byte ranges of all the files
    laid end to end, cut at file edges. Many small files thus go whole to one shard each (one open per file
    per job, not per shard), one big file is cut N ways, and shard i's part of any file precedes shard
    i+1's. Pure arithmetic on file sizes (one metadata request per file, none when `sizes` are given);
    `read_split` aligns on records.
    """
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    for url in sources:
        file_kind(url, fmt)
    if sizes is None:
        sizes = [storage.size(url) for url in sources]
    total = sum(sizes)
    lo, hi = total * shard_index // num_shards, total * (shard_index + 1) // num_shards
    splits = []
    base = 0
    for i, (url, size) in enumerate(zip(sources, sizes, strict=True)):
        start, end = max(lo - base, 0), min(hi - base, size)
        if end > start:
            splits.append(Split(url, i, start, end))
        base += size
    return splits


def check_split(split: Split, fmt: str, options: ConvertOptions) -> None:
    """BadInput unless the file of `split` looks readable: a CSV header with the needed columns, a JSON
    array that opens and closes (or JSON lines whose first line parses), a Parquet schema with the needed
    columns. Cheap (a header, a few KiB at each end); run before anything is written, so that a file that
    cannot be read leaves nothing at the destination."""
    kind = file_kind(split.source, fmt)
    source = split.source
    with storage.open_read(source) as f:
        if kind == "csv":
            _csv_columns(f, source, fmt, options)
        elif kind == "parquet":
            _parquet_columns(f, source, options)
        elif kind == "json":
            first = _first_byte(f)
            if first == b"[":
                _array_close(f, source)
            elif first == b"{":
                _first_line_parses(f, source)
            elif first != b"":
                raise BadInput(f"{storage.redact(source)}: expected a JSON array or JSON lines")


def _first_line_parses(f: IO[bytes], source: str) -> None:
    """A `.json` file that starts with `{` is read as JSON lines: its first line must then be a value."""
    f.seek(0)
    for line in _lines(f, 3 if f.read(3) == _BOM else 0):
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


def read_split(split: Split, fmt: str, options: ConvertOptions) -> Iterator[Row]:
    """The rows of `split`, in file order; `split_row` counts from 1 within the split."""
    kind = file_kind(split.source, fmt)
    if kind == "csv":
        return _read_csv(split, fmt, options)
    if kind == "parquet":
        return _read_parquet(split, options)
    if kind == "json":
        with storage.open_read(split.source) as f:
            first = _first_byte(f)
        if first == b"[":
            return _read_json_array(split)
        if first not in (b"{", b""):
            raise BadInput(f"{storage.redact(split.source)}: expected a JSON array or JSON lines")
    return _read_jsonl(split)


def _first_byte(f: IO[bytes]) -> bytes:
    head = f.read(4096).removeprefix(_BOM).lstrip()
    while not head:
        more = f.read(READ)
        if not more:
            return b""
        head = more.lstrip()
    return head[:1]


# --- line-based: JSONL and CSV ----------------------------------------------------------------------------


def _lines(f: IO[bytes], pos: int) -> Iterator[bytes]:
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


def _next_line_start(f: IO[bytes], pos: int) -> int:
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


def _read_jsonl(split: Split) -> Iterator[Row]:
    source = split.source
    loads = orjson.loads
    with storage.open_read(source) as f:
        size = f.seek(0, 2)
        start = _next_line_start(f, split.start)
        if start == 0:
            f.seek(0)
            start = 3 if f.read(3) == _BOM else 0
        end = size if split.end >= size else _next_line_start(f, split.end)
        n = 0
        for line, ok in _text_lines(f, start, end):
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


def _csv_header(f: IO[bytes], source: str) -> tuple[list[str], int]:
    """The header fields and the offset of the first data byte (after BOM and header record)."""
    f.seek(0)
    offset = 3 if f.read(3) == _BOM else 0
    record = b""
    for line in _lines(f, offset):
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


def _csv_boundary(f: IO[bytes], known: int, pos: int) -> int:
    """The first record boundary >= pos, counting quote parity from `known` (a boundary <= pos): the offset
    just after a newline with an even number of `"` bytes between `known` and it (EOF if none)."""
    if pos <= known:
        return known
    f.seek(known)
    quotes = 0
    offset = known
    while offset < pos - 1:  # the prefix: only its parity matters
        chunk = f.read(min(CHUNK, pos - 1 - offset))
        if not chunk:
            return offset
        quotes += chunk.count(b'"')
        offset += len(chunk)
    while True:  # from pos - 1: the first newline outside quotes
        chunk = f.read(READ)
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


def _text_lines(f: IO[bytes], start: int, end: int) -> Iterator[tuple[str, bool]]:
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
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            for bline in io.BytesIO(data):
                try:
                    yield bline.decode("utf-8"), True
                except UnicodeDecodeError:
                    yield bline.decode("utf-8", errors="replace"), False
            continue
        for line in io.StringIO(text, newline="\n"):
            yield line, True


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


def _csv_columns(f: IO[bytes], source: str, fmt: str, options: ConvertOptions) -> tuple[list[str], int]:
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


def _read_csv(split: Split, fmt: str, options: ConvertOptions) -> Iterator[Row]:
    source = split.source
    with storage.open_read(source) as f:
        header, data_start = _csv_columns(f, source, fmt, options)
        size = f.seek(0, 2)
        start = _csv_boundary(f, data_start, split.start)
        end = size if split.end >= size else _csv_boundary(f, start, split.end)
        if end <= start:
            return
        ncols = len(header)
        feed = _Feed()
        reader = csv.reader(feed, strict=True)
        n = 0
        pending = ""
        pending_ok = True
        for line, ok in _text_lines(f, start, end):
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
                yield Row(
                    source, n, None, raw, f"malformed csv row: {len(fields)} fields, the header has {ncols}"
                )
                continue
            yield Row(source, n, dict(zip(header, fields, strict=True)), raw, None)
        if pending:  # an unterminated quote at the end of the split
            raw = pending.rstrip("\r\n")[:RAW_LIMIT]
            yield Row(source, n + 1, None, raw, "malformed csv row: unexpected end of data (unclosed quote)")


# --- parquet ----------------------------------------------------------------------------------------------


def _parquet_columns(f: IO[bytes], source: str, options: ConvertOptions) -> tuple[Any, list[str]]:
    """The open Parquet file and the columns to read; BadInput if it is not Parquet or lacks one."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as exc:
        raise BadInput(f"{storage.redact(source)}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    needed = [c for c in (options.media_column, options.caption_column, options.id_column) if c]
    missing = [c for c in needed if c not in names]
    if missing:
        raise BadInput(f"{storage.redact(source)}: no column {missing[0]!r} (have {', '.join(names)})")
    return pf, needed


def _read_parquet(split: Split, options: ConvertOptions) -> Iterator[Row]:
    source = split.source
    with storage.open_read(source) as f:
        pf, needed = _parquet_columns(f, source, options)
        meta = pf.metadata
        groups = []
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if rg.num_columns == 0:
                continue
            col = rg.column(0)
            first = col.data_page_offset
            if col.dictionary_page_offset is not None and col.dictionary_page_offset > 0:
                first = min(first, col.dictionary_page_offset)
            if split.start <= first < split.end:
                groups.append(g)
        n = 0
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=needed or None):
            for value in batch.to_pylist():
                n += 1
                yield Row(source, n, value, None, None)


# --- JSON arrays ------------------------------------------------------------------------------------------

_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[\]{},]', re.DOTALL)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')


def _depth_change(data: bytes, in_string: bool) -> tuple[int, bool]:
    """Bracket depth change over `data` and whether it ends inside a string, at C speed: drop escaped
    backslashes and quotes, keep only quotes and brackets, drop what lies between quote pairs, count.
    `data` must start at an escape boundary and must not end with a backslash (callers hold those back)."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    parts = data.translate(None, _NOT_STRUCTURE).split(b'"')
    outside = b"".join(parts[1::2] if in_string else parts[0::2])
    delta = outside.count(b"[") + outside.count(b"{") - outside.count(b"]") - outside.count(b"}")
    return delta, in_string != (len(parts) % 2 == 0)


def _scan_depth(f: IO[bytes], offset: int, depth: int, end: int) -> tuple[int, int, bool]:
    """Scan [offset, end) from a point outside strings at `depth`: (offset reached, depth there, inside a
    string there). The offset reached is `end` less any trailing backslashes (an escape cut in two)."""
    f.seek(offset)
    in_string = False
    held = b""
    while offset + len(held) < end:
        chunk = f.read(min(CHUNK, end - offset - len(held)))
        if not chunk:
            break
        data = held + chunk if held else chunk
        body = data.rstrip(b"\\")
        held = data[len(body) :]
        delta, in_string = _depth_change(body, in_string)
        depth += delta
        offset += len(body)
    return offset, depth, in_string


def _element_start(
    f: IO[bytes], source: str, offset: int, depth: int, in_string: bool, pos: int
) -> tuple[int, int]:
    """The first element boundary >= pos of the top-level array: the offset just after its `[` or a
    top-level `,`, or the offset of its closing `]`. Tokenizes from (offset, depth, in_string)."""
    f.seek(offset)
    data = b""
    base = offset
    while True:
        more = f.read(READ)
        data += more
        at = 0
        if in_string:
            m = _STRING_REST.match(data)
            if m is None:
                if not more:
                    raise BadInput(f"{storage.redact(source)}: invalid JSON (unterminated string)")
                continue
            at, in_string = m.end(), False
        keep = len(data)
        for m in _TOKEN.finditer(data, at):
            ch = data[m.start()]
            if ch == 0x22:  # a string
                if m.group(1) is None:
                    if more:
                        keep = m.start()
                        break
                    raise BadInput(f"{storage.redact(source)}: invalid JSON (unterminated string)")
                continue
            if ch in (0x5B, 0x7B):  # [ {
                depth += 1
                if depth == 1 and base + m.end() >= pos:
                    return base + m.end(), depth
            elif ch in (0x5D, 0x7D):  # ] }
                depth -= 1
                if depth <= 0:
                    return base + m.start(), 0
            elif depth == 1 and base + m.end() >= pos:  # a top-level comma
                return base + m.end(), depth
        if not more:
            raise BadInput(f"{storage.redact(source)}: invalid JSON (the array is not closed)")
        data = data[keep:]
        base += keep


def _array_close(f: IO[bytes], source: str) -> int:
    """The offset of the array's closing `]` (the last byte that is not white space)."""
    size = f.seek(0, 2)
    back = 4096
    while True:
        at = max(0, size - back)
        f.seek(at)
        tail = f.read(size - at).rstrip(b" \t\r\n")
        if tail or at == 0:
            break
        back *= 16
    if not tail.endswith(b"]"):
        raise BadInput(f"{storage.redact(source)}: invalid JSON (the array is not closed)")
    return at + len(tail) - 1


def _boundary(f: IO[bytes], source: str, known: int, depth: int, pos: int) -> tuple[int, int]:
    """The first element boundary >= pos, scanning from `known` (outside strings, at `depth`)."""
    # scan to one byte before `pos`: a separator that ends exactly at `pos` must still be seen
    offset, depth, in_string = _scan_depth(f, known, depth, max(pos - 1, known))
    return _element_start(f, source, offset, depth, in_string, pos)


def _checked_boundary(f: IO[bytes], source: str, known: int, depth: int, pos: int, close: int) -> int:
    """`_boundary`, refusing a top level that ends anywhere but at the file's last `]`."""
    at, depth = _boundary(f, source, known, depth, pos)
    if depth == 0 and at != close:
        raise BadInput(f"{storage.redact(source)}: invalid JSON near byte {at} (unbalanced brackets)")
    return at


def _read_json_array(split: Split) -> Iterator[Row]:
    """Elements whose boundary lies in the split, parsed by orjson a block (~4 MiB of whole elements) at a
    time, so memory stays at a block and one element. Block ends are guessed and proven by the parse
    (`_guess_block`); only the block that reaches the split end (or a failed guess) is scanned exactly."""
    source = split.source
    with storage.open_read(source) as f:
        close = _array_close(f, source)  # ranges stop at the closing bracket, so every scan meets it
        lo, hi = min(split.start, close), min(split.end, close)
        start, depth = _boundary(f, source, 0, 0, lo)
        if depth == 0 and start != close:
            raise BadInput(f"{storage.redact(source)}: invalid JSON near byte {start} (unbalanced brackets)")
        if start >= hi:  # no element starts in this range
            return
        n = 0
        block_start = start
        last = False
        while not last and block_start < hi:  # a boundary at `hi` itself belongs to the next split
            if hi - block_start > READ:
                guessed = _guess_block(f, block_start)
                if guessed is not None:
                    cut, values = guessed
                    for value in values:
                        n += 1
                        yield Row(source, n, value, None, None)
                    block_start = cut
                    continue
                block_end = _checked_boundary(f, source, block_start, 1, block_start + READ, close)
                last = block_end >= hi  # no boundary in [block_start + READ, block_end) ⊇ [hi, block_end)
            else:
                block_end = _checked_boundary(f, source, block_start, 1, hi, close)
                last = True
            f.seek(block_start)
            data = f.read(block_end - block_start).rstrip(b" \t\r\n")
            if block_end != close:  # the block ends just after a top-level comma
                data = data.removesuffix(b",")
            try:
                values = orjson.loads(b"[" + data + b"]")
            except orjson.JSONDecodeError:
                # rare: find the bad elements one by one (Python speed, this block only)
                for element in _split_elements(data, source, block_start):
                    n += 1
                    yield _element_row(source, n, element)
            else:
                for value in values:
                    n += 1
                    yield Row(source, n, value, None, None)
            block_start = block_end


_GUESSES = (re.compile(rb"\][ \t\r\n]*\}[ \t\r\n]*,"), re.compile(rb"\}[ \t\r\n]*,"))


def _guess_block(f: IO[bytes], start: int) -> tuple[int, list[Any]] | None:
    """Parse ~READ bytes of whole elements from `start` (an element boundary) without scanning them first:
    cut after the last `]},` or `},` and let orjson judge. If `[` + cut + `]` parses, the cut is a top-level
    boundary (a cut inside a string or a nested value cannot balance), so the guess is safe; otherwise the
    caller scans for the exact boundary. Returns (offset after the cut, values) or None."""
    f.seek(start)
    data = f.read(READ)
    tail = max(0, len(data) - 2**16)
    for pattern in _GUESSES:  # LLaVA records end with their `conversations` list: `]}` then the comma
        last = None
        for last in pattern.finditer(data, tail):  # noqa: B007 - only the last match is wanted
            pass
        if last is None:
            continue
        comma = last.end() - 1
        try:
            return start + comma + 1, orjson.loads(b"[" + data[:comma] + b"]")
        except orjson.JSONDecodeError:
            continue
    return None


def _split_elements(data: bytes, source: str, offset: int) -> Iterator[bytes]:
    """The top-level elements of `data` (the inside of an array, from just after a separator); BadInput if
    its brackets or strings do not balance, since then no element boundary can be trusted."""
    depth = 1
    begin = 0
    for m in _TOKEN.finditer(data):
        ch = data[m.start()]
        if ch == 0x22:
            if m.group(1) is None:
                break
            continue
        if ch in (0x5B, 0x7B):
            depth += 1
        elif ch in (0x5D, 0x7D):
            depth -= 1
            if depth < 1:
                break
        elif depth == 1:
            yield data[begin : m.start()]
            begin = m.end()
    else:
        if depth == 1:
            yield data[begin:]
            return
    raise BadInput(f"{storage.redact(source)}: invalid JSON near byte {offset + begin} (unbalanced brackets)")


def _element_row(source: str, n: int, element: bytes) -> Row:
    raw = element.strip()[: RAW_LIMIT + 8].decode("utf-8", errors="replace")
    raw = raw if len(raw) <= RAW_LIMIT else raw[:RAW_LIMIT] + "…"
    try:
        return Row(source, n, orjson.loads(element), raw, None)
    except orjson.JSONDecodeError as exc:
        try:
            element.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Row(source, n, None, raw, f"invalid utf-8: byte {uexc.start + 1} of the element")
        return Row(source, n, None, raw, f"invalid json: {exc}")
