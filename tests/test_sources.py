"""Readers: CSV / JSONL / JSON-array / Parquet corner cases; byte-range splits cover every record once."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from neva_prep import storage
from neva_prep.data.readers import base, read_split
from neva_prep.data.readers.base import Row
from neva_prep.data.readers.files import expand_sources
from neva_prep.data.readers.split import splits_for_shard
from neva_prep.data.records import ConvertOptions, RecordError, build_record, encode_record
from neva_prep.errors import BadInput

WEBVID = ConvertOptions("webvid", "video")
LLAVA = ConvertOptions("llava", "image")


def read_all(url: str, fmt: str, options: ConvertOptions, shards: int = 1) -> list[Row]:
    rows: list[Row] = []
    for i in range(shards):
        for split in splits_for_shard([url], fmt, shards, i):
            rows.extend(read_split(split, fmt, options))
    return rows


def plain(rows: list[Row]) -> list[tuple[Any, str, str | None]]:
    return [(r.value, r.raw, r.error) for r in rows]


@contextlib.contextmanager
def tiny_chunks(size: int) -> Iterator[None]:
    """Make the readers' chunks a few bytes long so that every carry-over path runs on tiny files."""
    old = base.CHUNK, base.READ
    base.CHUNK = base.READ = size
    try:
        yield
    finally:
        base.CHUNK, base.READ = old


# --- CSV ---------------------------------------------------------------------------------------------------


def test_webvid_both_column_orders_bom_crlf_and_quoting(tmp_path: Path) -> None:
    partitioned = tmp_path / "a.csv"
    partitioned.write_bytes(
        b"\xef\xbb\xbfvideoid,contentUrl,duration,page_dir,name\r\n"
        b'21179416,https://x/1.mp4,PT00H00M11S,006001_006050,"Aerial, shot ""of"" a caf\xc3\xa9"\r\n'
        b'1,https://x/2.mp4,PT00H00M17S,000001_000050,"two\r\nlines"\r\n'
    )
    original = tmp_path / "b.csv"
    original.write_text(
        "videoid,name,page_idx,page_dir,duration,contentUrl\n"
        '21179416,"Aerial, shot ""of"" a café",1,006001_006050,'
        'PT00H00M11S,https://x/1.mp4\n1,"two\r\nlines",2,000001_000050,PT00H00M17S,https://x/2.mp4\n',
        encoding="utf-8",
        newline="",
    )
    for path in (partitioned, original):
        rows = read_all(str(path), "webvid", WEBVID)
        assert [r.split_row for r in rows] == [1, 2]
        records = [build_record(r, WEBVID) for r in rows]
        assert [r["id"] for r in records] == ["21179416", "1"]
        assert records[0]["video"] == "006001_006050/21179416.mp4"
        assert records[0]["conversations"][1]["value"] == 'Aerial, shot "of" a café'
        assert records[1]["conversations"][1]["value"] == "two\r\nlines"  # kept as written, not "fixed"
    assert rows[0].raw.startswith("21179416,")


def test_csv_bad_rows_are_rows_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_bytes(
        b"videoid,page_dir,name\n"
        b"1,p,ok\n"
        b"2,p\n"  # too few fields
        b'3,p,"closed"junk\n'  # text after a closing quote
        b"4,p,caf\xe9 latin-1\n"  # invalid UTF-8
        b"\n"  # blank lines are not records
        b"5,p,fine\n"
    )
    rows = read_all(str(path), "webvid", WEBVID)
    assert [r.split_row for r in rows] == [1, 2, 3, 4, 5]
    assert [r.error.split(":")[0] if r.error else None for r in rows] == [
        None,
        "malformed csv row",
        "malformed csv row",
        "invalid utf-8",
        None,
    ]
    assert rows[1].raw == "2,p" and rows[3].raw == "4,p,caf\ufffd latin-1"
    with pytest.raises(RecordError) as info:
        build_record(rows[3], WEBVID)
    assert info.value.reason == "invalid utf-8"


def test_csv_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("videoid,name\n1,x\n")
    with pytest.raises(BadInput, match=r"w.csv, row 1: no column 'page_dir'"):
        read_all(str(path), "webvid", WEBVID)
    path.write_text("")
    assert read_all(str(path), "webvid", WEBVID) == []
    path.write_text("videoid,page_dir,name\n")
    assert read_all(str(path), "webvid", WEBVID) == []


def test_unterminated_quote_is_one_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text('videoid,page_dir,name\n1,p,"never closed\n2,p,x\n')
    rows = read_all(str(path), "webvid", WEBVID)
    assert len(rows) == 1 and rows[0].error is not None and rows[0].error.startswith("malformed csv row")


def test_repeated_header_is_a_reject_not_a_record(tmp_path: Path) -> None:
    """`cat a.csv b.csv` repeats the header (with the second file's BOM, if Excel saved it): that row is a
    reject with its own reason, never a record `page_dir/videoid.mp4` captioned "name"."""
    path = tmp_path / "w.csv"
    first, second = "videoid,page_dir,name\n1,p,a\n2,p,b\n", "\ufeffvideoid,page_dir,name\r\n3,p,c\r\n"
    path.write_bytes((first + second + " videoid,page_dir , name\n").encode())
    rows = read_all(str(path), "webvid", WEBVID)
    assert [r.split_row for r in rows] == [1, 2, 3, 4, 5]
    assert [r.error.split(":")[0] if r.error else r.value["videoid"] for r in rows] == [
        "1",
        "2",
        "repeated header",
        "3",
        "repeated header",
    ]


_text = st.text(alphabet=st.sampled_from([*list("ab ,\"\n\r'é€"), "\u2028"]), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(st.tuples(_text, _text, _text), max_size=12),
    terminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    quote_all=st.booleans(),
    shards=st.integers(1, 9),
    chunk=st.integers(1, 9),
)
def test_csv_splits_cover_every_record_once(
    cells: list[tuple[str, str, str]], terminator: str, bom: bool, quote_all: bool, shards: int, chunk: int
) -> None:
    # csv.writer leaves a lone "\r" unquoted when the terminator is "\n": such a file is malformed
    assume(quote_all or terminator == "\r\n" or not any("\r" in c for row in cells for c in row))
    buf = io.StringIO(newline="")
    writer = csv.writer(
        buf, lineterminator=terminator, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    )
    writer.writerow(["videoid", "page_dir", "name"])
    writer.writerows(cells)
    data = (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "w.csv")
        path.write_bytes(data)
        one = read_all(str(path), "webvid", WEBVID)
        # ground truth: the csv module on the whole file (rows that are all-empty are blank lines)
        truth = [r for r in csv.reader(io.StringIO(buf.getvalue(), newline="")) if r][1:]
        assert [r.value for r in one] == [
            dict(zip(["videoid", "page_dir", "name"], t, strict=True)) for t in truth
        ]
        with tiny_chunks(chunk):
            many = read_all(str(path), "webvid", WEBVID, shards)
        assert plain(many) == plain(one)


# --- JSONL and JSON arrays ---------------------------------------------------------------------------------


def test_jsonl_rows_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        b'{"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"}, '
        b'{"from": "gpt", "value": "c"}]}\n'
        b"\n"
        b"{not json}\r\n"
        b'{"id": "caf\xe9"}\n'
        b"[1, 2]\n"
    )
    rows = read_all(str(path), "llava", LLAVA)
    assert [r.split_row for r in rows] == [1, 2, 3, 4]
    assert rows[0].error is None and build_record(rows[0], LLAVA)["id"] == "1"
    assert rows[1].error is not None and rows[1].error.startswith("invalid json:")
    assert rows[1].raw == "{not json}"
    assert rows[2].error is not None and rows[2].error.startswith("invalid utf-8:")
    with pytest.raises(RecordError, match="non-object record"):
        build_record(rows[3], LLAVA)


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet='a[]{},"\\\n: é', max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text('ab["{', max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(_json_value, max_size=10),
    indent=st.sampled_from([None, 1, 2]),
    lines=st.booleans(),
    shards=st.integers(1, 9),
    chunk=st.integers(1, 9),
)
def test_json_splits_cover_every_record_once(
    values: list[Any], indent: int | None, lines: bool, shards: int, chunk: int
) -> None:
    if lines:
        name, data = "x.jsonl", "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values)
    else:
        name, data = "x.json", json.dumps(values, indent=indent, ensure_ascii=False) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_text(data, encoding="utf-8")
        one = read_all(str(path), "llava", LLAVA)
        assert [r.value for r in one] == values
        assert [r.split_row for r in one] == list(range(1, len(values) + 1))
        with tiny_chunks(chunk):
            many = read_all(str(path), "llava", LLAVA, shards)
        assert plain(many) == plain(one)


def test_json_array_is_streamed_not_loaded(tmp_path: Path) -> None:
    # a big array read with tiny chunks: the reader never needs more than a chunk plus one element
    records = [
        {
            "id": str(i),
            "image": f"d/{i}.jpg",
            "meta": [{"a": [1]}, {"b": "]},"}],  # looks like element ends: block guesses must be proven
            "conversations": [{"from": "human", "value": "<image>\n[q]},"}],
        }
        for i in range(300)
    ]
    path = tmp_path / "big.json"
    for data in (orjson.dumps(records), orjson.dumps(records, option=orjson.OPT_INDENT_2)):
        path.write_bytes(data)  # one line with no newline anywhere, then indented
        for chunk in (64, 200, 1000):
            with tiny_chunks(chunk):
                rows = read_all(str(path), "llava", LLAVA, shards=4)
            assert [r.value for r in rows] == records


@pytest.mark.parametrize("chunk", [7, 64, 4 * 2**20])
@pytest.mark.parametrize("shards", [1, 3])
def test_concatenated_json_arrays_are_named(tmp_path: Path, chunk: int, shards: int) -> None:
    """`cat a.json b.json` is bad input that says where the first array ends and why, whichever reader (block
    parse, split boundary, block boundary) meets it; a mismatched bracket is not called a concatenation."""
    first = json.dumps([{"id": i, "conversations": []} for i in range(40)], indent=1).encode()
    path = tmp_path / "x.json"
    path.write_bytes(first + b"\n" + first)
    with tiny_chunks(chunk), pytest.raises(BadInput) as caught:
        read_all(str(path), "llava", LLAVA, shards=shards)
    says = f"x.json: invalid JSON near byte {len(first) - 1} (the array ends here and another begins"
    assert says in str(caught.value)
    path.write_bytes(b'[{"id": 1}, {"id": 2]}, {"id": 3}]')
    with tiny_chunks(chunk), pytest.raises(BadInput, match=r"\(unbalanced brackets\)"):
        read_all(str(path), "llava", LLAVA, shards=shards)


def test_broken_json_array_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b'[{"id": 1}, {"id": 2,}, {"id": "caf\xe9"}, , {"id": 5}]')
    rows = read_all(str(path), "llava", LLAVA)  # bad elements become rows with an error, with their text
    assert [(r.value, r.raw, (r.error or "").split(":")[0]) for r in rows] == [
        ({"id": 1}, '{"id": 1}', ""),
        (None, '{"id": 2,}', "invalid json"),
        (None, '{"id": "caf\ufffd"}', "invalid utf-8"),
        (None, "", "invalid json"),
        ({"id": 5}, '{"id": 5}', ""),
    ]
    for broken in ('[{"id": 1}, {"id": {2}]', '[{"id": 1}, {"id": 2,]}]'):
        path.write_text(broken)
        with pytest.raises(BadInput, match=r"x\.json: invalid JSON"):
            read_all(str(path), "llava", LLAVA)
    path.write_text('[{"id": 1},]')  # a trailing comma: an empty last element, not silently dropped
    assert [r.error for r in read_all(str(path), "llava", LLAVA)] == [
        None,
        "invalid json: an empty element (two commas, or a comma before `]`)",
    ]
    path.write_text('[{"id": 1}, {"id": 2}')
    with pytest.raises(BadInput, match="not closed"):
        read_all(str(path), "llava", LLAVA)
    path.write_text('"just a string"')
    with pytest.raises(BadInput, match="expected a JSON array"):
        read_all(str(path), "llava", LLAVA)


def test_json_array_edges(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf [ ] \n")
    assert read_all(str(path), "llava", LLAVA, shards=3) == []
    path.write_bytes(b'\xef\xbb\xbf[{"id": "\\"[,"}, "s", 3]')  # BOM, escaped quote, non-object elements
    assert [r.value for r in read_all(str(path), "llava", LLAVA, shards=4)] == [{"id": '"[,'}, "s", 3]
    path.write_bytes(b'[{"id": "caf\xe9"}]')
    assert [r.error for r in read_all(str(path), "llava", LLAVA)] == ["invalid utf-8: byte 12 of the element"]
    path.write_text('{"id": 1}\n{"id": 2}\n')  # a .json file of JSON lines
    assert [r.value for r in read_all(str(path), "llava", LLAVA, shards=2)] == [{"id": 1}, {"id": 2}]


# --- Parquet -----------------------------------------------------------------------------------------------


def test_parquet_row_groups_split_across_shards(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "caption": [f"caption {i}" for i in range(n)],
            "x": list(range(n)),
        }
    )
    path = tmp_path / "meta.parquet"
    pq.write_table(table, path, row_group_size=97)
    options = ConvertOptions("captions", "image", media_column="key", caption_column="caption")
    one = read_all(str(path), "captions", options)
    assert [r.value["key"] for r in one] == table.column("key").to_pylist()
    assert set(one[0].value) == {"key", "caption"}  # only the columns used are read
    for shards in (2, 3, 7, 40):
        assert plain(read_all(str(path), "captions", options, shards)) == plain(one)
    bad = ConvertOptions("captions", "image", media_column="path", caption_column="caption")
    with pytest.raises(BadInput, match="no column 'path'"):
        read_all(str(path), "captions", bad)


def test_captions_csv_and_jsonl_by_extension(tmp_path: Path) -> None:
    options = ConvertOptions("captions", "image", media_column="file", caption_column="text")
    (tmp_path / "a.csv").write_text("file,text\nimg/1.jpg,a cat\n")
    (tmp_path / "b.jsonl").write_text('{"file": "img/2.jpg", "text": "a dog"}\n')
    urls = expand_sources(str(tmp_path / "*"))
    assert urls == [str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl")]
    records = [
        build_record(r, options)
        for i in range(2)
        for s in splits_for_shard(urls, "captions", 2, i)
        for r in read_split(s, "captions", options)
    ]
    assert sorted(r["image"] for r in records) == ["img/1.jpg", "img/2.jpg"]
    (tmp_path / "c.tsv").write_text("x")
    with pytest.raises(BadInput, match="cannot tell the file type"):
        splits_for_shard([str(tmp_path / "c.tsv")], "captions", 1, 0)


def test_expand_sources(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        expand_sources(str(tmp_path / "missing.csv"))
    with pytest.raises(BadInput, match="matches no input files"):
        expand_sources(str(tmp_path / "*.csv"))
    for name in ("b.csv", "a.csv"):
        (tmp_path / name).write_text("videoid,page_dir,name\n")
    assert expand_sources(str(tmp_path)) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]


def test_split_arithmetic(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("videoid,page_dir,name\n" + "".join(f"{i},p,c\n" for i in range(100)))
    size = path.stat().st_size
    splits = [splits_for_shard([str(path)], "webvid", 4, i) for i in range(4)]
    assert [s[0].start for s in splits] == [0, size // 4, size // 2, 3 * size // 4]
    assert splits[-1][0].end == size
    two = [splits_for_shard([str(path), str(path)], "webvid", 4, i) for i in range(4)]
    assert [[(s.file_index, s.start, s.end) for s in shard] for shard in two] == [
        [(0, 0, size // 2)],
        [(0, size // 2, size)],
        [(1, 0, size // 2)],
        [(1, size // 2, size)],
    ]
    with pytest.raises(BadInput, match="--shard-index"):
        splits_for_shard([str(path)], "webvid", 4, 4)


def test_many_files_split_as_one_stream(tmp_path: Path) -> None:
    urls = []
    for f, n in enumerate((3, 40, 1, 0, 17, 5)):
        path = tmp_path / f"part-{f}.csv"
        path.write_text("videoid,page_dir,name\n" + "".join(f"{f}-{i},p,caption {i}\n" for i in range(n)))
        urls.append(str(path))
    one = [r for s in splits_for_shard(urls, "webvid", 1, 0) for r in read_split(s, "webvid", WEBVID)]
    assert len(one) == 66
    for shards in (2, 3, 6, 13):
        per_shard = [splits_for_shard(urls, "webvid", shards, i) for i in range(shards)]
        rows = [r for splits in per_shard for s in splits for r in read_split(s, "webvid", WEBVID)]
        assert plain(rows) == plain(one)  # shards in index order = source order, across files too
        assert sum(len(splits) for splits in per_shard) < shards + len(urls)  # files are not cut N ways


# --- s3 ----------------------------------------------------------------------------------------------------


@pytest.mark.s3
def test_webvid_and_llava_from_s3(s3: str, tmp_path: Path) -> None:
    lines = ["videoid,contentUrl,duration,page_dir,name"]
    lines += [f'{i},u,PT1S,000001_000050,"clip {i}, with ""quotes""\nand a newline"' for i in range(200)]
    csv_url = storage.join(s3, "webvid/part-0.csv")
    storage.write_text(csv_url, "\r\n".join(lines) + "\r\n")
    rows = read_all(csv_url, "webvid", WEBVID, shards=3)
    records = [build_record(r, WEBVID) for r in rows]
    assert [r["id"] for r in records] == [str(i) for i in range(200)]
    assert plain(rows) == plain(read_all(csv_url, "webvid", WEBVID))

    llava = [
        {"id": i, "image": f"coco/{i}.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}]}
        for i in range(50)
    ]
    json_url = storage.join(s3, "llava.json")
    storage.write_bytes(json_url, orjson.dumps(llava, option=orjson.OPT_INDENT_2))
    assert [r.value for r in read_all(json_url, "llava", LLAVA, shards=5)] == llava
    assert expand_sources(storage.join(s3, "webvid/*.csv")) == [csv_url]
    assert encode_record(records[0]).startswith(b'{"id":"0","video":"000001_000050/0.mp4"')


# --- JSON array split edges: guessed, then proven -----------------------------------------------------------


@contextlib.contextmanager
def bytes_read() -> Iterator[list[int]]:
    """Count the bytes the readers read (every `storage.open_read` file), in total."""
    total = [0]
    real = storage.open_read

    class Counting(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            data: bytes = self.f.read(n)
            total[0] += len(data)
            return data

        def seek(self, pos: int, whence: int = 0) -> int:
            return int(self.f.seek(pos, whence))

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

    @contextlib.contextmanager
    def counting(url: str) -> Iterator[Any]:
        with real(url) as f:
            yield Counting(f)

    storage.open_read = counting  # type: ignore[assignment]
    try:
        yield total
    finally:
        storage.open_read = real  # type: ignore[assignment]


def test_json_array_shard_reads_its_share_not_the_prefix(tmp_path: Path) -> None:
    # The last of 4 shards used to scan the 3/4 of the file before its range to learn the bracket depth:
    # 4 shards then read ~2.5 file sizes and shard 3 took as long as a whole run.
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}] * 8  # objects too
    records = [{"id": str(i), "image": f"d/{i}.jpg", "conversations": turns} for i in range(4000)]
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2))
    size = path.stat().st_size
    with tiny_chunks(2**16), bytes_read() as total:
        rows = list(read_split(splits_for_shard([str(path)], "llava", 4, 3)[0], "llava", LLAVA))
    assert total[0] < size / 4 + 4 * 2**16  # its share, the two edge windows, the closing bracket
    with tiny_chunks(2**16):
        every = read_all(str(path), "llava", LLAVA, shards=4)
    assert [r.value for r in every] == records
    assert [r.value for r in rows] == records[len(records) - len(rows) :]


def test_json_array_separators_inside_strings(tmp_path: Path) -> None:
    # strings full of `},{` separators, also made of JSON that parses: a guessed edge is proven or refused
    fake = '"}, {"id": "x"}, {"id": "y"}, {"v": "'
    records = [{"id": str(i), "text": fake * (i % 5), "n": [{"a": "}, {"}] * (i % 3)} for i in range(3000)]
    path = tmp_path / "x.json"
    for data in (orjson.dumps(records), orjson.dumps(records, option=orjson.OPT_INDENT_2)):
        path.write_bytes(data)
        for shards in (2, 3, 7):
            with tiny_chunks(4096):
                assert [r.value for r in read_all(str(path), "llava", LLAVA, shards)] == records
