"""Caption tables at columnar speed (WebVid CSV; captions CSV, JSONL and Parquet): a block of whole records
at a time, parsed by pyarrow (C++), every rule checked as a vectorized mask, records built as one string each
by arrow kernels and written as the buffer they sit in. Python sees only the rows a mask flags, and decides
them with the ONE row path (`csv.csv_rows` / `jsonl.jsonl_rows` / the Parquet row + `records.record_builder`),
so records and rejects are those of the row path, byte for byte (`tests/test_columnar.py` and
`tests/test_columnar_jsonl.py` prove it on random rows).

A CSV block goes whole to the row path when pyarrow and Python's csv module could read it differently: a
quote that does not open or close a field (`"bad "quote" inside"`: Python rejects it, pyarrow reads it),
a carriage return that does not end a line, a blank-looking short line, invalid UTF-8, a row with the
wrong number of fields, an unclosed quote at the end, or any disagreement on the number of rows. A row
whose first needed column is that column's name goes to the row path alone (`csv.is_header`: a repeated
header). A Parquet batch goes whole to the row path when a column it needs is not text. Which JSON lines
pyarrow reads as the row path does, and which go to it, is said in `columnar_jsonl.py`.
The flags are a superset of the rows the rules reject: a row that passes them passes every rule.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.prompts import load_prompts
from neva_prep.data.readers import base
from neva_prep.data.readers.base import Row, Split, decoded_lines
from neva_prep.data.readers.columnar_jsonl import re2_literal, read_lines
from neva_prep.data.readers.csv import BOM_TEXT, WEBVID_COLUMNS, csv_boundary, csv_columns, csv_rows
from neva_prep.data.readers.jsonl import jsonl_rows, line_range
from neva_prep.data.readers.parquet import parquet_columns, row_groups
from neva_prep.data.records import PLACEHOLDER, WEBVID_PROMPT, ConvertOptions, RecordError, encode_record
from neva_prep.data.stats import record_lengths

_NL, _CR, _QUOTE, _COMMA = 10, 13, 34, 44
Build = Callable[[Row], dict[str, Any]]


def applies(options: ConvertOptions, media_root: str | None, kind: str) -> bool:
    """Caption tables without a media check: every record then follows one template (whose columns are
    distinct: one column as both media and id, say, is left to the row path)."""
    if media_root is not None:
        return False
    if options.source_format == "webvid":
        return kind == "csv"
    columns = [c for c in (options.media_column, options.caption_column, options.id_column) if c]
    distinct = len(set(columns)) == len(columns)
    return options.source_format == "captions" and kind in ("csv", "jsonl", "parquet") and distinct


@dataclass(frozen=True)
class _Template:
    """How a table's columns become records: which columns, which human turns, which duplicate key."""

    media: str
    columns: tuple[str, ...]
    humans: tuple[str, ...]  # the human turn for prompt i
    choose: bool  # the prompt is chosen by the id (`prompts.choose_prompt`); else humans[0]
    by_id: bool  # the duplicate key is the id (WebVid), else the content


def _template(options: ConvertOptions) -> _Template:
    media = options.media
    if options.source_format == "webvid":
        if options.prompts is None:
            return _Template(media, WEBVID_COLUMNS, ("<video>\n" + WEBVID_PROMPT,), False, True)
        prompts = load_prompts(options.prompts, "video")
        return _Template(media, WEBVID_COLUMNS, tuple("<video>\n" + p for p in prompts), True, True)
    assert options.media_column and options.caption_column
    columns = [options.media_column, options.caption_column]
    if options.id_column:
        columns.append(options.id_column)
    prefix = PLACEHOLDER[media] + "\n"
    humans = tuple(prefix + p for p in load_prompts(options.prompts, media))
    return _Template(media, tuple(columns), humans, True, False)


@dataclass
class Batch:
    """What a block of records became: the records (one per line) and their index entries as written,
    the rejected rows (row in split, error, raw input), and the number of rows read."""

    records: bytes | memoryview
    index: bytes
    rows: int
    converted: int
    rejects: list[tuple[int, RecordError, str]] = field(default_factory=list)


def convert_split(split: Split, options: ConvertOptions, build: Build, kind: str) -> Iterator[Batch]:
    """The split's records and rejects, a block (~`base.READ` bytes of whole records) at a time."""
    template = _template(options)
    if kind == "parquet":
        yield from _parquet_batches(split, options, build, template)
    elif kind == "jsonl":
        yield from _jsonl_batches(split, build, template)
    else:
        yield from _csv_batches(split, options, build, template)


def _blocks(f: Any, start: int, end: int, boundary: Callable[[bytes], int]) -> Iterator[bytes]:
    """The bytes [start, end) of `f` (both record boundaries) in blocks of ~`base.READ` bytes of whole
    records; `boundary(data)` is the offset after the last whole record of `data` (0 if none)."""
    f.seek(start)
    left = end - start
    carry = b""
    while left > 0 or carry:
        chunk = f.read(min(base.READ, left)) if left > 0 else b""
        left -= len(chunk)
        if not chunk:
            left = 0
        data = carry + chunk if carry else chunk
        cut = boundary(data) if left > 0 else len(data)
        if cut == 0:  # one record longer than a chunk: read on
            carry = data
            continue
        block, carry = data[:cut], data[cut:]
        yield block


def _csv_batches(split: Split, options: ConvertOptions, build: Build, template: _Template) -> Iterator[Batch]:
    source = split.source
    with storage.open_read(source) as f:
        header, data_start = csv_columns(f, source, options.source_format, options)
        size = f.seek(0, 2)
        start = csv_boundary(f, data_start, split.start)
        end = size if split.end >= size else csv_boundary(f, start, split.end)
        n = 0
        for block in _blocks(f, start, end, _last_boundary):
            batch = _csv_block(block, header, source, n, build, template)
            n += batch.rows
            yield batch


def _jsonl_batches(split: Split, build: Build, template: _Template) -> Iterator[Batch]:
    source = split.source
    with storage.open_read(source) as f:
        start, end = line_range(f, split)
        n = 0
        for block in _blocks(f, start, end, lambda data: data.rfind(b"\n") + 1):
            batch = _jsonl_block(block, source, n, build, template)
            n += batch.rows
            yield batch


def _jsonl_block(block: bytes, source: str, first: int, build: Build, template: _Template) -> Batch:
    lines = read_lines(block, template.columns)
    if lines is None:
        return _row_path(jsonl_rows(decoded_lines(block), source, first), build, template)

    def row(i: int) -> Row:
        text = block[lines.starts[i] : lines.ends[i]].decode("utf-8")
        (one,) = jsonl_rows([(text, True)], source, first + i)
        return one

    count = len(lines.starts)
    return _vectorized(lines.columns, count, first, row, build, template, lines.flagged)


def _parquet_batches(
    split: Split, options: ConvertOptions, build: Build, template: _Template
) -> Iterator[Batch]:
    source = split.source
    with storage.open_read(source) as f:
        pf, needed = parquet_columns(f, source, options)
        groups = row_groups(pf, split)
        if not groups:
            return
        n = 0
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=needed or None):
            first = n
            n += batch.num_rows

            def row(i: int, batch: Any = batch, first: int = first) -> Row:
                return Row(source, first + i + 1, batch.slice(i, 1).to_pylist()[0], None, None)

            if not all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in batch.schema.types):
                yield _rows(batch.num_rows, row, build, template)
                continue
            columns = {name: pc.cast(batch.column(name), pa.string()) for name in template.columns}
            nulls = np.zeros(batch.num_rows, dtype=bool)
            for column in columns.values():
                if column.null_count:
                    nulls |= column.is_null().to_numpy(zero_copy_only=False)
            columns = {name: pc.fill_null(c, "") for name, c in columns.items()}
            yield _vectorized(columns, batch.num_rows, first, row, build, template, nulls)


def _rows(count: int, row: Callable[[int], Row], build: Build, template: _Template) -> Batch:
    """`count` rows, each by the row path."""
    return _row_path((row(i) for i in range(count)), build, template)


def _row_path(rows: Iterable[Row], build: Build, template: _Template) -> Batch:
    """Rows built and rejected exactly as the row path does, packed as one batch."""
    records: list[bytes] = []
    index: list[bytes] = []
    rejects: list[tuple[int, RecordError, str]] = []
    count = 0
    for r in rows:
        count += 1
        try:
            record = build(r)
        except RecordError as exc:
            rejects.append((r.split_row, exc, r.raw))
            continue
        records.append(encode_record(record) + shards.RECORD_END)
        index.append(_entry(record, r.split_row, by_id=template.by_id, media=template.media))
    return Batch(b"".join(records), b"".join(index), count, len(records), rejects)


def _last_boundary(data: bytes) -> int:
    """The offset after the last newline outside quotes (0 if none); `data` starts at a record boundary."""
    a = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(a == _NL)
    if not len(newlines):
        return 0
    quotes = np.flatnonzero(a == _QUOTE)
    even = (np.searchsorted(quotes, newlines) & 1) == 0
    outside = newlines[even]
    return int(outside[-1]) + 1 if len(outside) else 0


def _csv_row_path(
    block: bytes, header: list[str], source: str, first: int, build: Build, template: _Template
) -> Batch:
    """The block as the row path reads and builds it."""
    return _row_path(csv_rows(decoded_lines(block), header, source, first), build, template)


def _entry(record: dict[str, Any], split_row: int, *, by_id: bool, media: str) -> bytes:
    """The index entry of a row-path record, as `convert` makes it."""
    rid = shards.id_key(record["id"])
    key = rid if by_id else shards.content_key(record, media)
    return shards.INDEX_ENTRY.pack(rid, key, split_row, *record_lengths(record))


def _records(a: np.ndarray, block: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(start, end) byte offsets of the block's non-blank records, or None when the block must go to the
    row path (see the module docstring)."""
    newlines = np.flatnonzero(a == _NL)
    quotes = np.flatnonzero(a == _QUOTE)
    if len(quotes) % 2 or (len(a) and a[-1] != _NL):
        return None  # an unclosed quote, or a last line without its newline: the row path says what
    ends = newlines[(np.searchsorted(quotes, newlines) & 1) == 0] + 1
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    short = lengths <= 5
    if short.any():
        blank = short & ((lengths == 1) | ((lengths == 2) & (a[np.maximum(ends - 2, 0)] == _CR)))
        if (short & ~blank).any():
            return None  # a short line that may be white space in Python's eyes
        starts, ends = starts[~blank], ends[~blank]
    if len(quotes):
        opening, closing = quotes[0::2], quotes[1::2]
        before = a[np.maximum(opening - 1, 0)]
        pair_open = np.zeros(len(opening), dtype=bool)
        pair_open[1:] = opening[1:] == closing[:-1] + 1
        opens_field = (before == _COMMA) | (before == _NL) | (opening == 0) | pair_open
        after = a[np.minimum(closing + 1, len(a) - 1)]
        pair_close = np.zeros(len(closing), dtype=bool)
        pair_close[:-1] = closing[:-1] + 1 == opening[1:]
        closes_field = (after == _COMMA) | (after == _NL) | (after == _CR) | pair_close
        if not (opens_field.all() and closes_field.all()):
            return None
    crs = np.flatnonzero(a == _CR)
    if len(crs) and not (a[np.minimum(crs + 1, len(a) - 1)] == _NL).all():
        return None  # a carriage return inside a line: Python and pyarrow split it differently
    return starts, ends


def _csv_block(
    block: bytes, header: list[str], source: str, first: int, build: Build, template: _Template
) -> Batch:
    a = np.frombuffer(block, dtype=np.uint8)
    spans = _records(a, block)
    if spans is None:
        return _csv_row_path(block, header, source, first, build, template)
    starts, ends = spans
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=header, use_threads=False, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(template.columns),
                column_types=dict.fromkeys(template.columns, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _csv_row_path(block, header, source, first, build, template)
    if table.num_rows != len(starts):
        return _csv_row_path(block, header, source, first, build, template)

    def row(i: int) -> Row:
        text = block[starts[i] : ends[i]].decode("utf-8")
        (one,) = csv_rows([(text, True)], header, source, first + i)
        return one

    columns = {name: table.column(name).combine_chunks() for name in template.columns}
    name = template.columns[0]  # a row that repeats the header names this column too (`csv.is_header`)
    header_like = pc.match_substring_regex(columns[name], _header_like(name))
    flagged = np.asarray(header_like.to_numpy(zero_copy_only=False), dtype=bool)
    return _vectorized(columns, len(starts), first, row, build, template, flagged)


SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every character `str.isspace` holds true for (`tests/test_columnar.py` checks the list)."""
_BLANK = "^(?:$|[" + re2_literal(SPACE) + "])"
"""An empty value, or one starting with a character `str.isspace` counts (so possibly blank in Python)."""
_ESCAPED = r"[\x00-\x1f\\]"
"""Characters JSON escapes, but for `"` (escaped by `replace_substring`)."""


def _header_like(name: str) -> str:
    """RE2: a value that `csv.is_header` may strip to `name` (white space and BOMs around it)."""
    return f"^[{re2_literal(SPACE + BOM_TEXT)}]*{re2_literal(name)}[{re2_literal(SPACE)}]*$"


def _flags(column: pa.Array, *more: str) -> pa.Array:
    """True where a value may be blank, holds a character JSON escapes, or matches a pattern of `more`:
    one RE2 pass over the column."""
    return pc.match_substring_regex(column, "|".join((_BLANK, _ESCAPED, *more)))


def _vectorized(
    columns: dict[str, pa.Array],
    count: int,
    first: int,
    row: Callable[[int], Row],
    build: Build,
    template: _Template,
    flagged: np.ndarray | None,
) -> Batch:
    """The records of `count` rows given as string columns; rows the masks flag, and those `flagged` by the
    caller, go to the row path (`row(i)`)."""
    media = template.media
    if template.by_id:  # WebVid
        vid, page, caption = columns["videoid"], columns["page_dir"], columns["name"]
        rid = vid
        path = pc.binary_join_element_wise(page, "/", vid, ".mp4", "")
        flag = pc.or_(_flags(vid, r"\.\.", '"'), _flags(page, r"^[/\\]", ":", r"\.\.", '"'))
    else:
        names = list(columns)
        path, caption = columns[names[0]], columns[names[1]]
        flag = _flags(path, r"^[/\\]", ":", r"\.\.", '"')
        if len(names) > 2:
            rid = columns[names[2]]
            flag = pc.or_(flag, _flags(rid, '"'))
        else:  # `records.default_id`: the path less its extension (a basename starting with "." to Python)
            flag = pc.or_(flag, pc.match_substring_regex(path, r"(^|/)\.[^/]*$"))
            rid = pc.replace_substring_regex(path, r"\.[^./]*$", "")
    flag = pc.or_(flag, _flags(caption, "<image>", "<video>"))
    flag_np = np.asarray(flag.to_numpy(zero_copy_only=False), dtype=bool)
    if flagged is not None:
        flag_np |= flagged
    caption_json = pc.replace_substring(caption, '"', '\\"')
    humans = [orjson.dumps(h).decode() for h in template.humans]
    human: pa.Array | str
    if template.choose:  # `prompts.choose_prompt`: CRC-32 of the id's UTF-8 bytes modulo the list length
        crc = zlib.crc32
        choice = np.fromiter((crc(s.encode()) for s in rid.to_pylist()), dtype=np.int64, count=count)
        choice %= len(humans)
        human = pa.array(humans, pa.string()).take(pa.array(choice))
    else:
        choice = np.zeros(count, dtype=np.int64)
        human = humans[0]
    conversations = [',"conversations":[{"from":"human","value":', human, '},{"from":"gpt","value":"']
    built = pc.binary_join_element_wise(
        '{"id":"', rid, f'","{media}":"', path, '"', *conversations, caption_json, '"}]},\n', ""
    )
    keep = ~flag_np
    accepted: dict[int, bytes] = {}
    extra_index: dict[int, bytes] = {}
    rejects: list[tuple[int, RecordError, str]] = []
    for i in np.flatnonzero(flag_np).tolist():
        r = row(i)
        try:
            record = build(r)
        except RecordError as exc:
            rejects.append((r.split_row, exc, r.raw))
            continue
        accepted[i] = encode_record(record) + shards.RECORD_END
        extra_index[i] = _entry(record, r.split_row, by_id=template.by_id, media=media)
    if accepted:
        keep[list(accepted)] = True
        mask = np.zeros(count, dtype=bool)
        mask[list(accepted)] = True
        built = pc.replace_with_mask(built, pa.array(mask), pa.array(list(accepted.values()), pa.string()))
    keep_arr = pa.array(keep)
    kept = built.filter(keep_arr)
    positions = np.flatnonzero(keep)
    entries = np.zeros(len(kept), dtype=shards.INDEX_DTYPE)
    entries["id"] = shards.id_keys(rid.filter(keep_arr))
    if template.by_id:
        entries["key"] = entries["id"]
    else:  # `shards.content_key`: [path, conversations] as orjson writes them with sorted keys
        payload = pc.binary_join_element_wise(
            '["',
            path,
            '",[{"from":"human","value":',
            human,
            '},{"from":"gpt","value":"',
            caption_json,
            '"}]]',
            "",
        )
        values = payload.filter(keep_arr).to_pylist()
        sha256 = hashlib.sha256
        keys = b"".join(sha256(v.encode()).digest()[:8] for v in values)
        entries["key"] = np.frombuffer(keys, dtype="<u8")
    entries["row"] = np.arange(first + 1, first + 1 + count, dtype=np.uint32)[positions]
    entries["turns"] = 2
    human_chars = np.array([len(h) for h in template.humans], dtype=np.uint32)
    entries["human_chars"] = human_chars[choice[positions]]
    entries["gpt_chars"] = pc.utf8_length(caption).to_numpy(zero_copy_only=False)[positions]
    index = entries.tobytes()
    if extra_index:  # rows the row path accepted: their own entries
        view = bytearray(index)
        size = shards.INDEX_ENTRY.size
        where = {int(p): j for j, p in enumerate(positions.tolist())}
        for i, entry in extra_index.items():
            j = where[i]
            view[j * size : (j + 1) * size] = entry
        index = bytes(view)
    rejects.sort(key=lambda r: r[0])
    return Batch(_buffer(kept), index, count, len(kept), rejects)


def _buffer(strings: pa.Array) -> bytes | memoryview:
    """The concatenated values of a string array, as one bytes object (no per-value Python)."""
    if not len(strings):
        return b""
    offsets = np.frombuffer(
        strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4
    )
    data = strings.buffers()[2]
    return memoryview(data)[int(offsets[0]) : int(offsets[-1])]
