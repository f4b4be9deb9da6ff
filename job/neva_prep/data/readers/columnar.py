"""WebVid CSV at columnar speed: a block of whole records at a time, parsed by pyarrow (C++), every rule
checked as a vectorized mask, records built as one string each by arrow kernels and written as the
buffer they sit in. Python sees only the rows a mask flags, and decides them with the ONE row path
(`csv.csv_rows` + `records.record_builder`), so records and rejects are those of the row path, byte for
byte (`tests/test_columnar.py` proves it on random rows).

A block goes whole to the row path when pyarrow and Python's csv module could read it differently: a
quote that does not open or close a field (`"bad "quote" inside"`: Python rejects it, pyarrow reads it),
a carriage return that does not end a line, a blank-looking short line, invalid UTF-8, a row with the
wrong number of fields, an unclosed quote at the end, or any disagreement on the number of rows.
The flags are a superset of the rows the rules reject: a row that passes them passes every rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.readers import base
from neva_prep.data.readers.base import Split, decoded_lines
from neva_prep.data.readers.csv import WEBVID_COLUMNS, csv_boundary, csv_columns, csv_rows
from neva_prep.data.records import WEBVID_PROMPT, ConvertOptions, RecordError, encode_record

HUMAN = "<video>\n" + WEBVID_PROMPT
_HUMAN_JSON = orjson.dumps(HUMAN).decode()
_NL, _CR, _QUOTE, _COMMA = 10, 13, 34, 44


def applies(options: ConvertOptions, media_root: str | None, kind: str) -> bool:
    """WebVid with the guide's prompt and no media check: every record then follows one template."""
    return (
        options.source_format == "webvid" and options.prompts is None and media_root is None and kind == "csv"
    )


@dataclass
class Batch:
    """What a block of records became: the records (one per line) and their index entries as written,
    the rejected rows (row in split, error, raw input), and the number of rows read."""

    records: bytes | memoryview
    index: bytes
    rows: int
    converted: int
    rejects: list[tuple[int, RecordError, str]] = field(default_factory=list)


def convert_split(
    split: Split, options: ConvertOptions, build: Callable[[Any], dict[str, Any]]
) -> Iterator[Batch]:
    """The split's records and rejects, a block (~`base.READ` bytes of whole records) at a time."""
    source = split.source
    with storage.open_read(source) as f:
        header, data_start = csv_columns(f, source, "webvid", options)
        size = f.seek(0, 2)
        start = csv_boundary(f, data_start, split.start)
        end = size if split.end >= size else csv_boundary(f, start, split.end)
        f.seek(start)
        left = end - start
        carry = b""
        n = 0
        while left > 0 or carry:
            chunk = f.read(min(base.READ, left)) if left > 0 else b""
            left -= len(chunk)
            if not chunk:
                left = 0
            data = carry + chunk if carry else chunk
            cut = _last_boundary(data) if left > 0 else len(data)
            if cut == 0:  # one record longer than a chunk: read on
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            batch = _block(block, header, source, n, build)
            n += batch.rows
            yield batch


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


def _row_path(block: bytes, header: list[str], source: str, first: int, build: Callable[[Any], Any]) -> Batch:
    """The block as the row path reads and builds it."""
    records: list[bytes] = []
    index: list[bytes] = []
    rejects: list[tuple[int, RecordError, str]] = []
    rows = 0
    for row in csv_rows(decoded_lines(block), header, source, first):
        rows += 1
        try:
            record = build(row)
        except RecordError as exc:
            rejects.append((row.split_row, exc, row.raw))
            continue
        records.append(encode_record(record) + b"\n")
        rid = shards.id_key(record["id"])
        index.append(
            shards.INDEX_ENTRY.pack(
                rid, rid, row.split_row, 2, len(HUMAN), len(record["conversations"][1]["value"])
            )
        )
    return Batch(b"".join(records), b"".join(index), rows, len(records), rejects)


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


def _block(block: bytes, header: list[str], source: str, first: int, build: Callable[[Any], Any]) -> Batch:
    a = np.frombuffer(block, dtype=np.uint8)
    spans = _records(a, block)
    if spans is None:
        return _row_path(block, header, source, first, build)
    starts, ends = spans
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=header, use_threads=False, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(WEBVID_COLUMNS),
                column_types=dict.fromkeys(WEBVID_COLUMNS, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _row_path(block, header, source, first, build)
    if table.num_rows != len(starts):
        return _row_path(block, header, source, first, build)
    vid, page, name = (table.column(c).combine_chunks() for c in ("videoid", "page_dir", "name"))
    # Rows Python must decide: a field empty or starting with white space or non-ASCII (isspace), a media
    # placeholder in the caption, a page_dir that may make an absolute or escaping path, a control character
    # or backslash JSON would escape (quotes are escaped below).
    flag = pc.invert(pc.match_substring_regex(vid, r"^[!-~]"))
    flag = pc.or_(flag, pc.invert(pc.match_substring_regex(page, r"^[!-~]")))
    flag = pc.or_(flag, pc.invert(pc.match_substring_regex(name, r"^[!-~]")))
    flag = pc.or_(flag, pc.match_substring_regex(name, r"<image>|<video>"))
    flag = pc.or_(flag, pc.match_substring_regex(page, r"^[/\\]|:|\.\."))
    flag = pc.or_(flag, pc.match_substring(vid, ".."))
    for column in (vid, page):
        flag = pc.or_(flag, pc.match_substring_regex(column, r'[\x00-\x1f\\"]'))
    flag = pc.or_(flag, pc.match_substring_regex(name, r"[\x00-\x1f\\]"))
    name_json = pc.replace_substring(name, '"', '\\"')
    flag_np = flag.to_numpy(zero_copy_only=False)
    row_numbers = np.arange(first + 1, first + 1 + len(starts), dtype=np.uint32)
    keep = ~flag_np
    accepted: dict[int, bytes] = {}
    rejects: list[tuple[int, RecordError, str]] = []
    extra_index: dict[int, bytes] = {}
    for i in np.flatnonzero(flag_np).tolist():
        text = block[starts[i] : ends[i]].decode("utf-8")
        (row,) = csv_rows([(text, True)], header, source, first + i)
        try:
            record = build(row)
        except RecordError as exc:
            rejects.append((row.split_row, exc, row.raw))
            continue
        accepted[i] = encode_record(record) + b"\n"
        rid = shards.id_key(record["id"])
        extra_index[i] = shards.INDEX_ENTRY.pack(
            rid, rid, row.split_row, 2, len(HUMAN), len(record["conversations"][1]["value"])
        )
    built = pc.binary_join_element_wise(
        '{"id":"',
        vid,
        '","video":"',
        page,
        "/",
        vid,
        '.mp4","conversations":[{"from":"human","value":',
        _HUMAN_JSON,
        '},{"from":"gpt","value":"',
        name_json,
        '"}]}\n',
        "",
    )
    if accepted:
        keep[list(accepted)] = True
        mask = np.zeros(len(starts), dtype=bool)
        mask[list(accepted)] = True
        built = pc.replace_with_mask(built, pa.array(mask), pa.array(list(accepted.values()), pa.string()))
    kept = built.filter(pa.array(keep))
    records = _buffer(kept)
    vids = vid.filter(pa.array(keep)).to_pylist() if not accepted else None
    entries = np.zeros(len(kept), dtype=shards.INDEX_DTYPE)
    positions = np.flatnonzero(keep)
    if vids is None:
        vids = [v for v, k in zip(vid.to_pylist(), keep.tolist(), strict=True) if k]
    ids = np.frombuffer(
        b"".join(hashlib.blake2b(v.encode(), digest_size=8).digest() for v in vids), dtype="<u8"
    )
    entries["id"] = ids
    entries["key"] = ids
    entries["row"] = row_numbers[positions]
    entries["turns"] = 2
    entries["human_chars"] = len(HUMAN)
    entries["gpt_chars"] = pc.utf8_length(name).to_numpy(zero_copy_only=False)[positions]
    index = entries.tobytes()
    if extra_index:  # rows the row path accepted: their exact entries (the id kept as the record has it)
        view = bytearray(index)
        size = shards.INDEX_ENTRY.size
        where = {int(p): j for j, p in enumerate(positions.tolist())}
        for i, entry in extra_index.items():
            j = where[i]
            view[j * size : (j + 1) * size] = entry
        index = bytes(view)
    rejects.sort(key=lambda r: r[0])
    return Batch(records, index, len(starts), len(kept), rejects)


def _buffer(strings: pa.Array) -> bytes | memoryview:
    """The concatenated values of a string array, as one bytes object (no per-value Python)."""
    if not len(strings):
        return b""
    offsets = np.frombuffer(
        strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4
    )
    data = strings.buffers()[2]
    return memoryview(data)[int(offsets[0]) : int(offsets[-1])]
