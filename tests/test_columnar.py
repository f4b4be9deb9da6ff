"""The columnar WebVid path equals the row path: the same records, index, rejects and stats, byte for byte.

The rules live in one validator (`records.py`); the vectorized path only flags rows for it. These tests throw
random rows at both paths (valid, broken, unicode, quotes, newlines, carriage returns, placeholders, paths
that escape) and compare every file a shard writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from neva_prep.data import convert, shards
from neva_prep.data.readers import base, columnar
from neva_prep.data.records import ConvertOptions

WEBVID = ConvertOptions("webvid", "video")
CAPTIONS = {"media_column": "page_dir", "caption_column": "name"}
TABLES = {  # the same rows read as each table the columnar path reads
    "webvid": (WEBVID, "csv"),
    "webvid --prompts": (ConvertOptions("webvid", "video", prompts="video_brief"), "csv"),
    "captions": (ConvertOptions("captions", "image", **CAPTIONS), "csv"),
    "captions --id-column": (ConvertOptions("captions", "video", **CAPTIONS, id_column="videoid"), "csv"),
    "captions parquet": (ConvertOptions("captions", "image", **CAPTIONS), "parquet"),
    "captions parquet --id-column": (
        ConvertOptions("captions", "image", **CAPTIONS, id_column="videoid"),
        "parquet",
    ),
}
FILES = (shards.RECORDS, shards.INDEX, shards.REJECTS, shards.STATS)


@contextlib.contextmanager
def reads_of(size: int) -> Iterator[None]:
    old = base.CHUNK, base.READ
    base.CHUNK = base.READ = size
    try:
        yield
    finally:
        base.CHUNK, base.READ = old


def shard_files(
    src: Path, dst: Path, *, vectorized: bool, num_shards: int = 1, options: ConvertOptions = WEBVID
) -> list[bytes]:
    """Every file of every shard of `src` converted by one path."""
    real = columnar.applies
    if not vectorized:
        columnar.applies = lambda *args: False  # type: ignore[assignment]
    try:
        out = []
        for i in range(num_shards):
            convert.convert_shard(str(src), str(dst), options=options, num_shards=num_shards, shard_index=i)
            folder = Path(shards.shard_dir(str(dst), i, num_shards))
            out += [(folder / name).read_bytes() for name in FILES]
        return out
    finally:
        columnar.applies = real  # type: ignore[assignment]


_PIECES = [*"abcXYZ019 ,.-_/:é日", '"', "\n", "\r", "\\", "\t", "\x00", "\x1c", "\u3000", "\u2028"]
_TEXT = st.lists(st.sampled_from([*_PIECES, "<video>", "<image>", ".."]), max_size=8).map("".join)


def _field(clean: str) -> st.SearchStrategy[str]:
    """A clean value, the same with one odd piece inside (a single rule broken, or none), or random text."""
    valid = st.from_regex(clean, fullmatch=True)
    piece = st.sampled_from(
        ["<video>", "<image>", "..", "/..", "/", "\\", "C:", "s3://", "Über", " ", "\u3000", '"']
    )
    one = st.one_of(st.tuples(valid, piece, valid).map("".join), st.tuples(piece, valid).map("".join))
    return st.one_of(valid, valid, valid, one, one, one, _TEXT)


_ROW = st.fixed_dictionaries(
    {
        "videoid": _field(r"[0-9]{1,9}"),
        "page_dir": _field(r"[0-9]{6}_[0-9]{6}"),
        "name": _field(r"[A-Za-z][a-z ,]{0,30}"),
        "contentUrl": st.just("https://x/y.mp4"),
    }
)


def write_csv(rows: list[dict[str, str]], raw_lines: list[tuple[int, str]], crlf: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["videoid", "contentUrl", "page_dir", "name"])
    lines = []
    for row in rows:
        one = io.StringIO()
        csv.writer(one, lineterminator="\r\n" if crlf else "\n").writerow(
            [row["videoid"], row["contentUrl"], row["page_dir"], row["name"]]
        )
        lines.append(one.getvalue())
    for at, line in sorted(raw_lines):  # malformed or blank lines as a user's file may hold them
        lines.insert(min(at, len(lines)), line)
    return buf.getvalue() + "".join(lines)


_RAW = st.sampled_from(
    [
        "\n",
        "\r\n",
        " \n",
        "\u3000\n",
        '1,u,"bad "quote" inside",x\n',
        '2,u,000001_000050,"x" y\n',
        "3,u,a\rb,c\n",
        '4,u,000001_000050,ab"c\n',
        "5,u,000001_000050\n",
        "6,u,000001_000050,x,extra\n",
        '7,u,000001_000050,"open\n',
        "8,u,000001_000050, caption with a leading space\n",
        "9,u,/abs,cap\n",
        "10,u,c:/x,cap\n",
        "\xff\n",
        "videoid,contentUrl,page_dir,name\n",  # files concatenated with their headers (`cat a.csv b.csv`)
        "\ufeffvideoid,contentUrl,page_dir,name\r\n",  # ... the second one saved by Excel
        " videoid ,contentUrl, page_dir,name \n",
        "videoid,contentUrl,page_dir,other\n",  # not the header: a row
    ]
)


def _one(**fields: str) -> list[dict[str, str]]:
    """A clean row, one between two clean rows with `fields` changed (one rule at a time)."""
    clean = {"videoid": "7", "page_dir": "000001_000050", "name": "A caption", "contentUrl": "u"}
    return [clean, {**clean, **fields}, clean]


_ONE_RULE_EACH = [
    _one(name="with <video> inside"),
    _one(name="with <image> inside"),
    _one(name="back\\slash"),
    _one(name='a "quoted" word'),
    _one(name=" leading space"),
    _one(name="\u3000ideographic space first"),
    _one(name="Über"),
    _one(name=""),
    _one(page_dir="/abs"),
    _one(page_dir="\\abs"),
    _one(page_dir="C:x"),
    _one(page_dir="s3://b"),
    _one(page_dir="a/../b"),
    _one(page_dir=".."),
    _one(videoid="1/../2"),
    _one(videoid="a\tb"),
    _one(videoid=""),
    _one(page_dir="d/.x"),  # a basename starting with "." has no extension (posixpath.splitext)
    _one(page_dir="d/x."),
    _one(page_dir="a.b/c"),
    _one(page_dir="a/b.c.d"),
    _one(videoid="videoid", contentUrl="contentUrl", page_dir="page_dir", name="name"),  # the header again
    _one(videoid="\ufeff videoid", contentUrl="contentUrl", page_dir="page_dir ", name="name"),
    _one(videoid="videoid", page_dir="page_dir", name="name"),  # not the header (contentUrl differs)
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(_ROW, max_size=25),
    raw=st.lists(st.tuples(st.integers(0, 25), _RAW), max_size=2),
    crlf=st.booleans(),
    shards_=st.integers(1, 3),
    read=st.sampled_from([64, 300, 4 * 2**20]),
    table=st.sampled_from(list(TABLES)),
)
@example(rows=_ONE_RULE_EACH[0], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[1], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[2], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[3], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[4], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[5], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[6], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[7], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[8], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[9], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[10], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[11], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[12], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[13], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[14], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[15], raw=[], crlf=False, shards_=1, read=64, table="webvid")
@example(rows=_ONE_RULE_EACH[16], raw=[], crlf=False, shards_=1, read=64, table="webvid")
def test_vectorized_path_equals_row_path(
    rows: list[dict[str, str]], raw: list[tuple[int, str]], crlf: bool, shards_: int, read: int, table: str
) -> None:
    both_paths_agree(rows, raw, crlf, shards_, read, table)


def both_paths_agree(
    rows: list[dict[str, str]], raw: list[tuple[int, str]], crlf: bool, shards_: int, read: int, table: str
) -> None:
    options, kind = TABLES[table]
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            src = Path(tmp, "captions.parquet")
            names = ("videoid", "contentUrl", "page_dir", "name")
            data = pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in names})
            pq.write_table(data, src, row_group_size=max(1, read // 64))
        else:
            text = write_csv(rows, raw, crlf)
            src = Path(tmp, "webvid.csv")
            src.write_bytes(text.encode("utf-8").replace("\xff".encode(), b"\xff"))
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


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("rule", range(len(_ONE_RULE_EACH)))
def test_one_rule_at_a_time(rule: int, table: str) -> None:
    both_paths_agree(_ONE_RULE_EACH[rule], [], False, 1, 64, table)


def test_clean_rows_never_reach_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a clean table goes through arrow kernels alone; a few bad rows go to the row path one by one
    rows = [
        {"videoid": str(1000 + i), "contentUrl": "u", "page_dir": "000001_000050", "name": f'Cap, "{i}" ok'}
        for i in range(3000)
    ]
    rows[10]["name"] = "with <video> inside"
    rows[2000]["page_dir"] = "../up"
    rows[2500]["name"] = "\u3000Über"  # white space to Python (isspace) first: Python decides, keeps it
    src = tmp_path / "webvid.csv"
    src.write_text(write_csv(rows, [], crlf=False), encoding="utf-8")
    calls = []
    real = columnar.csv_rows

    def counting(lines: Any, *args: Any) -> Any:
        lines = list(lines)
        calls.append(len(lines))
        return real(lines, *args)

    monkeypatch.setattr(columnar, "csv_rows", counting)
    got = shard_files(src, tmp_path / "col", vectorized=True)
    assert calls == [1, 1, 1]  # one line each: the three flagged rows
    monkeypatch.setattr(columnar, "csv_rows", real)
    assert got == shard_files(src, tmp_path / "row", vectorized=False)
    framed = got[0].decode()  # the one shard of a 1-shard run is framed as the array (shards.FRAME_START)
    assert framed.startswith("[\n") and framed.endswith("}\n]\n")
    records = framed[2:-3].split(",\n")  # records joined by shards.RECORD_END
    assert len(records) == 2998
    assert records[0] == (
        '{"id":"1000","video":"000001_000050/1000.mp4","conversations":[{"from":"human","value":"<video>\\n'
        'Write a terse but informative summary of the following video clip."},{"from":"gpt","value":'
        '"Cap, \\"0\\" ok"}]}'
    )


def test_parquet_nulls_and_other_types_take_the_row_path(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 500
    table = pa.table(
        {
            "page_dir": [None if i % 97 == 0 else f"d/{i}.jpg" for i in range(n)],
            "name": [None if i % 89 == 0 else f"caption {i}" for i in range(n)],
            "videoid": [f"k{i}" for i in range(n)],
        }
    )
    typed = pa.table(
        {
            "page_dir": [f"d/{i}.jpg" for i in range(n)],
            "name": [f"c {i}" for i in range(n)],
            "videoid": list(range(n)),
        }
    )  # integer ids: str() by the row path
    for data in (table, typed):
        src = tmp_path / "t.parquet"
        pq.write_table(data, src, row_group_size=64)
        for id_column in (None, "videoid"):
            options = ConvertOptions("captions", "image", **CAPTIONS, id_column=id_column)
            got = shard_files(src, tmp_path / "col", vectorized=True, num_shards=2, options=options)
            assert got == shard_files(src, tmp_path / "row", vectorized=False, num_shards=2, options=options)
            assert (b"missing field" in got[2] + got[6]) == (data is table)


def test_space_is_what_python_calls_white_space() -> None:
    # the vectorized "may be blank" mask must know every character str.isspace() knows
    assert set(columnar.SPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
