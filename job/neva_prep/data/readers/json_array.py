"""JSON arrays (LLaVA): elements found by bracket depth, parsed a block of whole elements at a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

import orjson

from neva_prep import storage
from neva_prep.data.readers import base
from neva_prep.data.readers.base import RAW_LIMIT, Row, Split
from neva_prep.errors import BadInput

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
        chunk = f.read(min(base.CHUNK, end - offset - len(held)))
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
    origin = offset
    while True:
        more = f.read(base.READ)
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
                if depth == 1 and origin + m.end() >= pos:
                    return origin + m.end(), depth
            elif ch in (0x5D, 0x7D):  # ] }
                depth -= 1
                if depth <= 0:
                    return origin + m.start(), 0
            elif depth == 1 and origin + m.end() >= pos:  # a top-level comma
                return origin + m.end(), depth
        if not more:
            raise BadInput(f"{storage.redact(source)}: invalid JSON (the array is not closed)")
        data = data[keep:]
        origin += keep


def array_close(f: IO[bytes], source: str) -> int:
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
        raise _closed_early(source, at, _peek(f, at))
    return at


def _closed_early(source: str, at: int, tail: bytes) -> BadInput:
    """The top level closes at byte `at` (`tail`: the bytes from there), before the file's last `]`."""
    if tail[:1] == b"]" and tail[1:].lstrip(b" \t\r\n")[:1] == b"[":
        why = "the array ends here and another begins: JSON arrays concatenated?"
    else:
        why = "unbalanced brackets"
    return BadInput(f"{storage.redact(source)}: invalid JSON near byte {at} ({why})")


def _peek(f: IO[bytes], at: int) -> bytes:
    f.seek(at)
    return f.read(4096)


def split_boundary(f: IO[bytes], source: str, pos: int, close: int) -> int:
    """The element boundary that a split edge at `pos` stands for; the shard before it ends there and the
    shard after it starts there (both call this, so they agree).

    Near the file start it is exact (`_boundary` scans the short prefix). Further in, scanning the prefix
    would make shard i read i/N of the file before its own share (the reason 2 shards once took as long as
    1): the boundary is then *guessed* (`_guessed_boundary`: the first `},{` at or after `pos` that starts a
    run of elements orjson parses) and *proven* by the shard before, which reaches it by exact parsing from
    its own proven start and refuses (BadInput) a block that does not end on a top-level element."""
    if pos >= close:
        return close
    if pos > 2 * base.READ:
        guessed = _guessed_boundary(f, pos, close)
        if guessed is not None:
            return guessed
    return _checked_boundary(f, source, 0, 0, pos, close)


_SEPARATORS = (
    re.compile(rb"\][ \t\r\n]*\}[ \t\r\n]*,(?=[ \t\r\n]*\{)"),  # LLaVA: a record ends with its turns
    re.compile(rb"\}[ \t\r\n]*,(?=[ \t\r\n]*\{)"),
)
_TRIES = 16


def _guessed_boundary(f: IO[bytes], pos: int, close: int) -> int | None:
    """The offset after the first `}` `,` `{` separator at or after `pos` such that the elements from there
    to the last separator of a window (or to the closing bracket) parse as objects; a separator inside a
    nested list or a string fails the parse. LLaVA's `]},{` is tried first (its turns are objects too).
    None after `_TRIES` failures each, or with no separator in the window (elements that are not objects,
    or huge ones): the caller scans exactly then."""
    window = max(base.READ, 2**16)
    origin = max(0, pos - 64)
    f.seek(origin)
    data = f.read(min(pos - origin + window, close - origin))
    reaches_close = origin + len(data) >= close
    for pattern in _SEPARATORS:
        ends = [m.end() for m in pattern.finditer(data, pos - 1 - origin) if origin + m.end() >= pos]
        for i, cut in enumerate(ends[:_TRIES]):
            last = len(data) if reaches_close else ends[-1] - 1
            if last <= cut:
                break
            try:
                values = orjson.loads(b"[" + data[cut:last] + b"]")
            except orjson.JSONDecodeError:
                continue
            if values and all(type(v) is dict for v in values) and (reaches_close or i + 1 < len(ends)):
                return origin + cut
    return None


def read_json_array(split: Split) -> Iterator[Row]:
    """Elements whose boundary lies in the split, parsed by orjson a block (~4 MiB of whole elements) at a
    time, so memory stays at a block and one element. Block ends are guessed and proven by the parse
    (`_guess_block`); the split's ends are `split_boundary`s, the last block proving the end one."""
    source = split.source
    with storage.open_read(source) as f:
        close = array_close(f, source)  # ranges stop at the closing bracket, so every scan meets it
        start = split_boundary(f, source, min(split.start, close), close)
        end = split_boundary(f, source, min(split.end, close), close)
        n = 0
        block_start = start
        while block_start < end:
            if end - block_start > base.READ:
                guessed = _guess_block(f, block_start)
                if guessed is not None:
                    cut, values = guessed
                    for value in values:
                        n += 1
                        yield Row(source, n, value, None, None)
                    block_start = cut
                    continue
                block_end = min(
                    _checked_boundary(f, source, block_start, 1, block_start + base.READ, close), end
                )
            else:
                block_end = end
            f.seek(block_start)
            data = f.read(block_end - block_start).rstrip(b" \t\r\n")
            if block_end != close:  # the block ends just after a top-level comma
                data = data.removesuffix(b",")
            try:
                values = orjson.loads(b"[" + data + b"]")
            except orjson.JSONDecodeError:
                # rare: find the bad elements one by one (Python speed, this block only); a block that
                # does not end on a top-level element (a guessed boundary proven wrong) is BadInput here
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
    data = f.read(base.READ)
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
            if depth < 1:  # the top level closes before the block ends
                raise _closed_early(source, offset + m.start(), data[m.start() :])
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
    if not element.strip(b" \t\r\n"):
        return Row(source, n, None, raw, "invalid json: an empty element (two commas, or a comma before `]`)")
    try:
        return Row(source, n, orjson.loads(element), raw, None)
    except orjson.JSONDecodeError as exc:
        try:
            element.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Row(source, n, None, raw, f"invalid utf-8: byte {uexc.start + 1} of the element")
        return Row(source, n, None, raw, f"invalid json: {exc}")
