"""The columnar path on captions JSONL equals the row path (orjson a line at a time): the same records,
index, rejects and stats, byte for byte.

pyarrow reads only the lines `readers/columnar_jsonl.py` proves it reads as orjson does; these tests throw
random lines at both paths (valid, broken, unicode, quotes, escapes and surrogates, newlines inside strings,
numbers, nulls, nested values, extra and duplicate keys, NaN, blank lines, a BOM, CRLF, no final newline)
and compare every file a shard writes, then the merged dataset of 1 and 3 shards through the CLI.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import neva
from neva_prep.data.readers import columnar
from neva_prep.data.readers.columnar_jsonl import read_lines
from neva_prep.data.records import ConvertOptions
from test_columnar import reads_of, shard_files

COLUMNS = {"media_column": "image", "caption_column": "caption"}
TABLES = {
    "image": ConvertOptions("captions", "image", **COLUMNS),
    "image --id-column": ConvertOptions("captions", "image", **COLUMNS, id_column="key"),
    "video --id-column": ConvertOptions("captions", "video", **COLUMNS, id_column="key"),
}


class Raw(str):
    """A JSON token written as it is (a number orjson refuses, NaN, a bad escape...)."""


_PIECES = [
    *"abcXYZ019 ,.-_/:é日{}[]",
    *('"', "\\", "\n", "\r", "\t", "\x00", "\x1c", "\x7f", "\x85", "\u3000", "\u2028", "😀"),
    *("<image>", "<video>", "..", "image", '"image"', "\ud800", "\udc00", "\ud83d\ude00"),
]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)


def _string(clean: str) -> st.SearchStrategy[str]:
    """A clean value, the same with one odd piece inside (a single rule broken, or none), or random text."""
    valid = st.from_regex(clean, fullmatch=True)
    piece = st.sampled_from(["<video>", "<image>", "..", "/", "\\", "C:", " ", "\u3000", '"', "\n", "é"])
    one = st.one_of(st.tuples(valid, piece, valid).map("".join), st.tuples(piece, valid).map("".join))
    return st.one_of(valid, valid, valid, valid, one, one, _TEXT)


_RAW_TOKENS = st.sampled_from(
    [
        "1e400",
        "1" * 400,
        "-0",
        "01",
        "1.",
        ".5",
        "+1",
        "1E5",
        "1e-05",
        "12345678901234567890",
        "NaN",
        "-Infinity",
        "tru",
        '"a\\ud800"',
        '"\\udc00b"',
        '"\\ud83d\\ude00"',
        '"\\x41"',
        '"tab\there"',
        "[1,2,]",
        "{}",
        "[[[]]]",
        '"\\u00e9\\"\\\\\\/"',
    ]
).map(Raw)
_OTHER = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(-(2**70), 2**70),
    st.floats(-1e6, 1e6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(0, 9), max_size=3),
    st.fixed_dictionaries({"image": st.just("n.jpg")}),  # a needed key's name, nested
    _RAW_TOKENS,
    _RAW_TOKENS,
)
"""A value other than a string: of any JSON type, or a token orjson refuses or reads apart."""


def _value(clean: str) -> st.SearchStrategy[Any]:
    return st.one_of(*[_string(clean)] * 12, _OTHER)


_KEYS = st.one_of(
    *[st.just([])] * 3,
    st.lists(
        st.tuples(st.sampled_from(["image", "caption", "key", "url", "width"]), st.booleans()), max_size=2
    ),
)  # extra (key, value is string) pairs: a repeated needed key, or metadata
_META = {"similarity": 0.31, "tags": ["a", None], "nsfw": False}
_TYPICAL = st.tuples(
    st.fixed_dictionaries(
        {
            "image": _string(r"d[0-9]{1,2}/[a-z]{1,6}\.(jpg|mp4)"),
            "caption": _string(r"[A-Z][a-z ,]{0,30}"),
            "key": _string(r"[0-9]{1,9}"),
            "width": st.integers(0, 4096),
            "meta": st.just(_META),
        }
    ),
    st.fixed_dictionaries(
        {"ascii": st.booleans(), "spaces": st.booleans(), "drop": st.just(()), "shuffle": st.integers(0, 3)}
    ),
)
"""A record as tools write them (string fields, numeric metadata), perhaps with one rule broken."""
_WILD = st.tuples(
    st.fixed_dictionaries(
        {
            "image": st.one_of(_value(r"d[0-9]{1,2}/[a-z]{1,6}\.(jpg|mp4)"), _value(r"[a-z]{1,4}")),
            "caption": _value(r"[A-Z][a-z ,]{0,30}"),
            "key": _value(r"[0-9]{1,9}"),
            "url": _string(r"https://x/[a-z]{1,5}\.jpg"),
            "width": st.one_of(st.integers(0, 4096), _OTHER),
            "meta": st.one_of(st.just(_META), _OTHER),
        }
    ),
    st.fixed_dictionaries(
        {
            "ascii": st.booleans(),  # json.dumps' ensure_ascii: \\uXXXX escapes for every non-ASCII character
            "spaces": st.booleans(),  # ", " and ": " between tokens
            "drop": st.sampled_from([(), ("image",), ("caption",), ("key",)]),
            "shuffle": st.integers(0, 3),
            "extra": _KEYS,
        }
    ),
)
"""Anything: values of every type, missing and repeated keys, tokens orjson refuses."""


def _encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value, ensure_ascii=ascii_only)


def json_line(record: dict[str, Any], form: dict[str, Any]) -> str:
    """One line of JSON (perhaps broken: a raw token, a repeated key), as a user's file may hold it."""
    pairs = [(k, v) for k, v in record.items() if k not in form["drop"]]
    random.Random(form["shuffle"]).shuffle(pairs)
    for key, as_text in form.get("extra", []):
        pairs.append((key, "x/y.jpg" if as_text else 7))
    comma, colon = (", ", ": ") if form["spaces"] else (",", ":")
    ascii_only = form["ascii"]
    body = comma.join(_encode(k, ascii_only) + colon + _encode(v, ascii_only) for k, v in pairs)
    return "{" + body + "}\n"


ODD_LINES = [
    "\n",
    "\r\n",
    " \n",
    "\t\n",
    "\u3000\n",
    "\x1c\n",
    "\x0c\n",
    "[1]\n",
    '"s"\n',
    "3\n",
    "null\n",
    "{}\n",
    "{\n",
    '{"image":"a.jpg","caption":"x"} {"image":"b.jpg","caption":"y"}\n',
    '{"image":"a.jpg","caption":"x"}{"image":"b.jpg","caption":"y"}\n',
    '{"image":"a.jpg","caption":"x"}\r{"image":"b.jpg","caption":"y"}\n',
    '{"image":"a.jpg","meta":\n',
    '{"caption":"x"}}\n',
    '{"image":"a.jpg",\n"caption":"x"}\n',
    '{"image":"a.jpg","caption":"x",}\n',
    '{"image":"a.jpg","caption":"x"}}\n',
    '\ufeff{"image":"a.jpg","caption":"x"}\n',
    ' {"image":"a.jpg","caption":"x"}\n',
    '{"image":"a.jpg","caption":"x"} \n',
    '{"image":"a.jpg","caption":"x"}\r\r\n',
    '{"image":"a.jpg","caption":"x"\r}\n',
    '{"image":"a.jpg","caption":"x"}\x0c\n',
    '{"image":"a.jpg","caption":"x"',
    '{"image":"a.jpg","caption":"x","d":' + "[" * 600 + "]" * 600 + "}\n",
    '{"image":"a.jpg","caption":"x","d":' + "[" * 1100 + "]" * 1100 + "}\n",
    '{"image":"a.jpg","caption":"x","n":1.7976931348623159e308}\n',
    '{"\\u0069mage":"a.jpg","caption":"x"}\n',
    '{"\\u0069mage":"a.jpg","image":"b.jpg","caption":"x"}\n',
    '{"\\u0069mage":5,"caption":"x"}\n',
    '{"meta":{"image":"n.jpg"},"caption":"x"}\n',
    '{"image":"a.jpg","caption":"x","meta":{"image":"n.jpg"}}\n',
    '{"image" : "a.jpg" , "caption" : "x" }\n',
    '{"image":"a.jpg"\t,\t"caption":"x"}\n',
    '{"image":"a.jpg","caption":"\xff"}\n',
    '{"image":"a.jpg","caption":"\\u00e9\\u0000"}\n',
    '{"image":"a.jpg","caption":"\\ud83d\\ude00 \\u2028"}\n',
    '{"image":"a.jpg","caption":"x","n":NaN}\n',
    '{"image":"a.jpg","caption":"x","n":[-Infinity]}\n',
    '{"image":"a.jpg","caption":"x","n":' + "1" * 400 + "}\n",
    '{"image":"a.jpg","caption":"x","n":-' + "9" * 19 + ".5}\n",
    '{"image":"a.jpg","caption":"x","n":[1e400]}\n',
    '{"image":"a.jpg","caption":"x","n":1E+99}\n',
    '{"image":"a.jpg","caption":"x","s":"\\udc00"}\n',
    '{"image":"a.jpg","caption":"x","s":"\\ud800"}\n',
    '{"image":"a.jpg","caption":"x","s":"\\ud800\\u0041"}\n',
    '{"image":"a.jpg","caption":"x","s":"a\\qb"}\n',
    '{"image":"a.jpg","caption":"x","s":"a\\u12"}\n',
    '{"image":"a.jpg","caption":"x","t":truefalse}\n',
    '{"image":"a.jpg","caption":"x","t":[1 2]}\n',
    '{"image":"a.jpg","caption":"x","t":[1,,2]}\n',
]
"""Lines a user's file may hold that no record strategy writes (blank, broken, pyarrow and orjson apart)."""
_RAW_LINES = st.sampled_from(ODD_LINES)


def jsonl_bytes(lines: list[str], raw: list[tuple[int, str]], crlf: bool, bom: bool, last_nl: bool) -> bytes:
    lines = [line.replace("\n", "\r\n") if crlf else line for line in lines]
    for at, line in sorted(raw):  # malformed or blank lines as a user's file may hold them
        lines.insert(min(at, len(lines)), line)
    text = ("\ufeff" if bom else "") + "".join(lines)
    if not last_nl:
        text = text.rstrip("\r\n")
    # a lone surrogate written raw is invalid UTF-8 (ensure_ascii=False); "\xff" stands for a stray byte
    return text.encode("utf-8", errors="surrogatepass").replace("\xff".encode(), b"\xff")


def both_paths_agree(data: bytes, shards_: int, read: int, table: str) -> None:
    options = TABLES[table]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "captions.jsonl")
        src.write_bytes(data)
        with reads_of(read):
            try:
                expected: Any = shard_files(
                    src, Path(tmp, "row"), vectorized=False, num_shards=shards_, options=options
                )
            except Exception as exc:  # the same failure is expected of both
                expected = repr(exc)
            try:
                got: Any = shard_files(
                    src, Path(tmp, "col"), vectorized=True, num_shards=shards_, options=options
                )
            except Exception as exc:
                got = repr(exc)
        assert got == expected


_CLEAN = {"image": "d1/a.jpg", "caption": "A caption", "key": "7", "url": "u", "width": 3, "meta": None}
_PLAIN = {"ascii": False, "spaces": False, "drop": (), "shuffle": 0, "extra": []}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.one_of(_TYPICAL, _WILD), max_size=25),
    raw=st.lists(st.tuples(st.integers(0, 25), _RAW_LINES), max_size=3),
    crlf=st.booleans(),
    bom=st.booleans(),
    last_nl=st.booleans(),
    shards_=st.integers(1, 3),
    read=st.sampled_from([64, 300, 4 * 2**20]),
    table=st.sampled_from(list(TABLES)),
)
@example(
    rows=[(_CLEAN, _PLAIN)] * 3,
    raw=[(1, "\u3000\n")],
    crlf=True,
    bom=True,
    last_nl=False,
    shards_=2,
    read=64,
    table="image",
)
def test_vectorized_path_equals_row_path(
    rows: list[tuple[dict[str, Any], dict[str, Any]]],
    raw: list[tuple[int, str]],
    crlf: bool,
    bom: bool,
    last_nl: bool,
    shards_: int,
    read: int,
    table: str,
) -> None:
    data = jsonl_bytes([json_line(r, f) for r, f in rows], raw, crlf, bom, last_nl)
    both_paths_agree(data, shards_, read, table)


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("line", ODD_LINES)
def test_each_odd_line(line: str, table: str) -> None:
    # one odd line between clean ones, in a block of its own and in one block with the rest
    clean = json_line(_CLEAN, _PLAIN)
    for read in (64, 4 * 2**20):
        both_paths_agree(jsonl_bytes([clean, clean], [(1, line)], False, False, True), 1, read, table)


def test_clean_lines_never_reach_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compact or spaced, escaped or not, with metadata of every JSON type: arrow reads them; odd lines go to
    # the row path one by one, and a blank line is no row
    lines = []
    for i in range(3000):
        record = {"image": f"d/{i}.jpg", "caption": f'Cap, "{i}" ok é', "key": f"k{i}", "w": i, "s": 0.5}
        record["meta"] = {"tags": ["a", None], "nsfw": False}
        lines.append(json.dumps(record, ensure_ascii=i % 2 == 0, separators=(",", ":") if i % 3 else None))
    lines[10] = '{"image":"d/10.jpg","caption":"with <image> inside"}'
    lines[2000] = '{"image":"d/x.jpg","caption":"x","s":NaN}'
    lines[2500] = '{"image":"d/y.jpg","caption":"\\ud800"}'
    lines.insert(100, "")
    src = tmp_path / "captions.jsonl"
    src.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    calls = []
    real = columnar.jsonl_rows

    def counting(lines: Any, *args: Any) -> Any:
        lines = list(lines)
        calls.append(len(lines))
        return real(lines, *args)

    monkeypatch.setattr(columnar, "jsonl_rows", counting)
    options = TABLES["image --id-column"]
    got = shard_files(src, tmp_path / "col", vectorized=True, options=options)
    assert calls == [1, 1, 1]  # one line each: the three flagged rows
    monkeypatch.setattr(columnar, "jsonl_rows", real)
    assert got == shard_files(src, tmp_path / "row", vectorized=False, options=options)
    assert got[0].count(b",\n") == 2996 and got[2].count(b"\n") == 3  # records (one shard: framed), rejects


def test_a_block_pyarrow_reads_otherwise_goes_whole_to_the_row_path() -> None:
    # two objects on a line: pyarrow reads two rows, orjson one error; an object over two lines: the other
    # way round. The counts could even out, so any count that differs sends the block to the row path.
    one = b'{"image":"a.jpg","caption":"x"}\n'
    names = ["image", "caption"]
    assert read_lines(one * 3, names) is not None
    assert read_lines(one + b'{"image":"b.jpg","n":1} {"caption":"z"}\n', names) is None
    assert read_lines(one + b'{"image":"a.jpg","meta":\n{"caption":"x"}}\n', names) is None
    lines = read_lines(one + b'{"image":"b.jpg","caption":"y","image":"c.jpg"}\n', names)  # orjson: the last
    assert lines is not None and lines.flagged.tolist() == [False, True]
    assert read_lines(one + b'{"image":"\xff"}\n', ["image"]) is None  # invalid UTF-8


def test_merged_output_is_identical_whatever_the_shard_count(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = []
    for i in range(300):
        record = {"image": f"d/{i % 50}.jpg", "caption": f"cap {i % 70}", "key": str(i)}
        if rng.random() < 0.1:
            record[rng.choice(list(record))] = rng.choice(["", " ", "<image>", "../x", 5, None, '"q" \\ é'])
        lines.append(json_line(record, {**_PLAIN, "ascii": rng.random() < 0.5}))
    raw = [(rng.randrange(300), rng.choice(ODD_LINES)) for _ in range(10)]
    src = tmp_path / "captions.jsonl"
    src.write_bytes(jsonl_bytes(lines, raw, crlf=False, bom=True, last_nl=False))
    args = (
        "--from",
        "captions",
        "--media",
        "image",
        "--media-column",
        "image",
        "--caption-column",
        "caption",
    )
    merged = []
    for n in (1, 3):
        dst = tmp_path / f"out-{n}"
        for i in range(n):
            r = neva(
                "data", "convert", str(src), str(dst), *args, "--num-shards", str(n), "--shard-index", str(i)
            )
            assert r.returncode == 0, r.stderr
        r = neva("data", "merge", str(dst), "--name", "d")
        assert r.returncode == 0, r.stderr
        merged.append(((dst / "d.json").read_bytes(), (dst / "rejects.jsonl").read_bytes()))
    assert merged[0] == merged[1]
    assert merged[0][0].count(b'"conversations"') > 200 and merged[0][1]  # records and rejects


def test_one_column_in_two_roles_takes_the_row_path(tmp_path: Path) -> None:
    # the id is the media path: a template of distinct columns cannot say that (it failed), the row path can
    options = ConvertOptions(
        "captions", "image", media_column="image", caption_column="caption", id_column="image"
    )
    assert not any(columnar.applies(options, None, kind) for kind in ("csv", "jsonl", "parquet"))
    inputs = {"t.jsonl": '{"image":"a.jpg","caption":"x"}\n', "t.csv": "image,caption\na.jpg,x\n"}
    for name, text in inputs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        records = shard_files(tmp_path / name, tmp_path / f"out-{name}", vectorized=True, options=options)[0]
        assert records.startswith(b'[\n{"id":"a.jpg","image":"a.jpg",')  # one shard: framed as the array
