"""JSON lines read by pyarrow, for the columnar path (`columnar.py`): a block of whole lines parsed at once
by `pyarrow.json.read_json`, on the lines where pyarrow reads what the row path (`jsonl.jsonl_rows`: orjson,
one line at a time) reads.

A line goes to pyarrow only if two RE2 passes over the block's lines prove it is one JSON object built from
tokens both parsers read alike: strings without control characters whose escapes are the valid ones (no
lone surrogate, which orjson rejects), numbers with at most 18 integer digits and a two-digit exponent
(orjson refuses a number that overflows a double, which pyarrow may skip in a field it ignores), `true`,
`false`, `null`, punctuation, spaces and tabs; the line starts with `{` and ends with `}` (then `\r\n`,
`\n` or the end of the file), has at most `_MAX_BRACKETS` brackets (orjson's depth limit is 1024), and
names each needed key once, with a string value (orjson keeps the last of a repeated key and reads any
type; pyarrow refuses both today, and the flag does not rely on that). Everything else (white space first,
`NaN`, which pyarrow accepts, a BOM, a trailing comma, a blank line, ...) is a flagged line: the row path
decides it, and skips it if it is white space. A line that starts with `{` and ends with `}` yields one row
or a parse error, never none, so the flagged lines are left out of pyarrow's input and its row count must
equal the number of lines it was given: two objects on a line (pyarrow reads both), an object spread over
lines, or anything pyarrow cannot parse sends the block whole to the row path, as does invalid UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

_NL = 10
_MAX_BRACKETS = 512
"""More `{` and `[` than this in a line (in strings or not) and it goes to the row path."""

_STRING = (
    r'"(?:[^"\\\x00-\x1f]'  # any character but a quote, a backslash or a control character
    r'|\\["\\/bfnrt]'
    r"|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})"  # \uXXXX but a surrogate
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair
    r')*"'
)
_NUMBER = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,2})?"
# A number takes the delimiter that must follow it, so that two numbers never read as one longer number.
_TOKEN = r"[ \t]+|" + _STRING + r"|[{}\[\]:,]|true|false|null|" + _NUMBER + r"[ \t]*[,\]}]"
_LINE = r"^\{(?:" + _TOKEN + r")*(?:\}|" + _NUMBER + r"[ \t]*\})\r?\n?$"
"""A line both parsers read alike, if it is one object (pyarrow's row count proves that)."""


def re2_literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it literally."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def _suspect_keys(names: Sequence[str]) -> str:
    """A needed key given a value that is not a string, or named twice (at any depth, or in a string)."""
    keys = [re2_literal(orjson.dumps(name).decode()) for name in names]
    not_string = "(?:" + "|".join(keys) + r')[ \t]*:[ \t]*[^" \t]'
    return "|".join([not_string, *(f"{key}.*{key}" for key in keys)])


@dataclass(frozen=True)
class Lines:
    """A block's non-blank lines: their byte ranges, the needed columns (one value per line, "" where
    flagged) and the flags (lines the row path must decide; a superset of those whose value pyarrow did
    not read as orjson does, or read as null)."""

    starts: np.ndarray
    ends: np.ndarray
    columns: dict[str, pa.Array]
    flagged: np.ndarray


def read_lines(block: bytes, names: Sequence[str]) -> Lines | None:
    """The lines of `block` (whole lines) read by pyarrow, or None when the block must go whole to the row
    path (see the module docstring)."""
    names = list(dict.fromkeys(names))
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(a == _NL) + 1
    if len(a) and a[-1] != _NL:
        ends = np.append(ends, len(a))
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    starts = offsets[:-1]
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets.tobytes()), pa.py_buffer(block))
    ok = np.asarray(pc.match_substring_regex(lines, _LINE).to_numpy(zero_copy_only=False), dtype=bool)
    suspect = pc.match_substring_regex(lines, _suspect_keys(names))
    ok &= ~np.asarray(suspect.to_numpy(zero_copy_only=False), dtype=bool)
    for i in np.flatnonzero(ok & (ends - starts > _MAX_BRACKETS)).tolist():
        line = block[starts[i] : ends[i]]
        if line.count(b"{") + line.count(b"[") > _MAX_BRACKETS:
            ok[i] = False
    count = int(ok.sum())
    schema = pa.schema([(name, pa.string()) for name in names])
    table = schema.empty_table()
    if count:
        given = block if count == len(ok) else a[np.repeat(ok, ends - starts)].tobytes()
        try:
            table = pajson.read_json(
                pa.py_buffer(given),
                read_options=pajson.ReadOptions(use_threads=False, block_size=len(given) + 1),
                parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != count:
            return None
    if count != len(ok):  # white-space lines are not rows: Python decides what is white space
        blank = np.zeros(len(ok), dtype=bool)
        for i in np.flatnonzero(~ok).tolist():
            blank[i] = block[starts[i] : ends[i]].decode("utf-8").isspace()
        if blank.any():
            keep = ~blank
            starts, ends, ok = starts[keep], ends[keep], ok[keep]
    flagged = ~ok
    columns = {}
    for name in names:
        column = table.column(name).combine_chunks()
        if column.null_count:
            nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            flagged[np.flatnonzero(ok)[nulls]] = True
        if count != len(ok):  # one value per line: null where pyarrow was not given the line
            where = np.full(len(ok), -1, dtype=np.int64)
            where[ok] = np.arange(count)
            column = column.take(pa.array(where, mask=~ok))
        columns[name] = pc.fill_null(column, "")
    return Lines(starts, ends, columns, flagged)
