"""Bad input to the data step: exit 2, one line naming the file, and nothing at the destination — for
unreadable files, empty inputs and options the format cannot use."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import neva
from test_data_convert_merge import webvid_csv

WEBVID = ("--from", "webvid", "--media", "video")
LLAVA = ("--from", "llava", "--media", "image")
CAPTIONS = ("--from", "captions", "--media", "image", "--media-column", "path", "--caption-column", "text")
GOOD_LLAVA = orjson.dumps(
    [
        {
            "id": 1,
            "image": "a.jpg",
            "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
        }
    ]
)


def refused(src: Path, dst: Path, *options: str, says: str) -> None:
    r = neva("data", "convert", str(src), str(dst), *options)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("neva-prep: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr, r.stderr
    assert not dst.exists(), sorted(str(p) for p in dst.rglob("*"))


@pytest.mark.parametrize(
    ("name", "content", "options", "says"),
    [
        # unreadable files: found before anything is created
        ("w.csv", b"videoid,name\n1,a caption\n", WEBVID, "no column 'page_dir'"),
        ("w.csv", b"1,d,a caption\n2,d,another\n", WEBVID, "needs a header row"),  # a CSV without header
        ("c.csv", b"path,caption\na.jpg,hi\n", CAPTIONS, "no column 'text'"),  # a bad --caption-column
        ("x.json", b'"just a string"', LLAVA, "expected a JSON array or JSON lines"),
        ("x.json", b'{\n  "data": [1, 2]\n}\n', LLAVA, "expected a JSON array or JSON lines"),
        ("x.json", b'[{"id": 1}, {"id": 2}', LLAVA, "the array is not closed"),
        # found only while reading: the folders made for the shard go again
        ("x.json", b'[{"id": 1}, {"id": 2,]}]', LLAVA, "invalid JSON"),
        ("x.json", b'[{"id": 1}]\n[{"id": 2}]\n', LLAVA, "byte 10 (the array ends here and another begins"),
        # empty inputs: no dataset, not an empty success
        ("w.csv", b"", WEBVID, "empty (0 bytes)"),
        ("x.json", b"", LLAVA, "empty (0 bytes)"),
        ("w.csv", b"\xef\xbb\xbfvideoid,contentUrl,duration,page_dir,name\r\n", WEBVID, "no data rows"),
        ("x.json", b" [ ]\n", LLAVA, "no data rows"),
        ("x.jsonl", b"\n\n", LLAVA, "no data rows"),
    ],
)
def test_unusable_input_exits_2_and_creates_nothing(
    tmp_path: Path, name: str, content: bytes, options: tuple[str, ...], says: str
) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    refused(src, tmp_path / "out" / "ds", *options, says=says)


@pytest.mark.parametrize(
    ("columns", "option", "says"),
    [
        (
            {"path": pa.array(["a.jpg"]), "text": pa.array([["x", "y"]])},
            (),
            "'text' (--caption-column) holds list",
        ),
        (
            {"path": pa.array([1]), "text": pa.array(["x"])},
            (),
            "'path' (--media-column) holds int64, not text",
        ),
        (
            {"path": pa.array(["a.jpg"]), "text": pa.array([None], pa.null())},
            (),
            "'text' (--caption-column) holds null",
        ),
        (
            {"path": pa.array(["a.jpg"]), "text": pa.array(["x"]), "k": pa.array([1.0])},
            ("--id-column", "k"),
            "'k' (--id-column) holds double, not text or integers",
        ),
    ],
)
def test_parquet_column_of_another_type_exits_2(
    tmp_path: Path, columns: dict[str, pa.Array], option: tuple[str, ...], says: str
) -> None:
    """A Parquet column that no row could be read from (its type fails the rule on every row) is refused
    before the first row, instead of a rejects file as long as the input."""
    src = tmp_path / "c.parquet"
    pq.write_table(pa.table(columns), src)
    refused(src, tmp_path / "out", *CAPTIONS, *option, says=says)


def test_parquet_text_columns_of_every_encoding_convert(tmp_path: Path) -> None:
    """Dictionary-encoded and large text columns, and integer ids, are text to the row path: accepted."""
    src = tmp_path / "c.parquet"
    table = pa.table(
        {
            "path": pa.array(["a.jpg", "b.jpg"]).dictionary_encode(),
            "text": pa.array(["x", "y"], pa.large_string()),
            "k": pa.array([1, 2], pa.int32()),
        }
    )
    pq.write_table(table, src)
    r = neva("data", "convert", str(src), str(tmp_path / "out"), *CAPTIONS, "--id-column", "k")
    assert r.returncode == 0 and "2 converted, 0 rejected" in r.stdout, r.stdout + r.stderr


def test_an_existing_destination_is_left_as_it_was(tmp_path: Path) -> None:
    src = tmp_path / "w.csv"
    src.write_bytes(b"videoid,name\n1,a caption\n")
    dst = tmp_path / "out"
    dst.mkdir()
    r = neva("data", "convert", str(src), str(dst), *WEBVID)
    assert r.returncode == 2 and list(dst.iterdir()) == []


def test_empty_glob_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    refused(tmp_path / "in" / "*.csv", tmp_path / "out", *WEBVID, says="matches no input files")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--prompts", "image_brief"), "--prompts is for --from captions and webvid"),
        (("--caption-column", "caption"), "--caption-column is for --from captions"),
        (("--media-column", "image"), "--media-column is for --from captions"),
        (("--id-column", "id"), "--id-column is for --from captions"),
    ],
)
def test_llava_refuses_options_it_cannot_use(tmp_path: Path, extra: tuple[str, ...], says: str) -> None:
    src = tmp_path / "x.json"
    src.write_bytes(GOOD_LLAVA)
    refused(src, tmp_path / "out", *LLAVA, *extra, says=says)


def test_webvid_refuses_column_options_and_honours_prompts(tmp_path: Path) -> None:
    src = tmp_path / "w.csv"
    src.write_bytes(webvid_csv([(str(i), "d", f"caption {i}") for i in range(30)]))
    refused(src, tmp_path / "bad", *WEBVID, "--caption-column", "name", says="--caption-column is for")

    dst = tmp_path / "out"
    r = neva("data", "convert", str(src), str(dst), *WEBVID, "--prompts", "video_brief")
    assert r.returncode == 0, r.stderr
    assert neva("data", "merge", str(dst), "--name", "w").returncode == 0
    humans = {rec["conversations"][0]["value"] for rec in orjson.loads((dst / "w.json").read_bytes())}
    assert len(humans) > 1  # the list is used (its first prompt is the guide's), not the guide's alone
    assert all(h.startswith("<video>\n") for h in humans)


def test_no_rows_across_all_shards_is_refused_by_the_merge(tmp_path: Path) -> None:
    """Each shard alone may legitimately hold no rows; the merge sees that the whole dataset has none."""
    header = b"videoid,contentUrl,duration,page_dir,name\n"
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_bytes(header)
    dst = tmp_path / "out"
    for i in (0, 1):
        r = neva("data", "convert", str(tmp_path / "*.csv"), str(dst), *WEBVID, "--num-shards", "2",
                 "--shard-index", str(i))  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = neva("data", "merge", str(dst), "--name", "w")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no data rows in any input" in r.stderr
    assert str(tmp_path / "a.csv") in r.stderr and str(tmp_path / "b.csv") in r.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["shards"]  # no w.json, rejects or stats


def test_every_row_rejected_is_refused_by_the_merge(tmp_path: Path) -> None:
    src = tmp_path / "w.csv"
    src.write_bytes(webvid_csv([("1", "d", ""), ("2", "d", " ")]))  # no caption anywhere
    dst = tmp_path / "out"
    assert neva("data", "convert", str(src), str(dst), *WEBVID).returncode == 0
    r = neva("data", "merge", str(dst), "--name", "w")
    assert r.returncode == 2
    assert "all 2 input rows were rejected (missing field 'name': 2)" in r.stderr
    assert not (dst / "w.json").exists()


def test_empty_files_beside_data_are_fine(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"")
    (tmp_path / "b.csv").write_bytes(webvid_csv([("1", "d", "a caption")]))
    dst = tmp_path / "out"
    assert neva("data", "convert", str(tmp_path / "*.csv"), str(dst), *WEBVID).returncode == 0
    r = neva("data", "merge", str(dst), "--name", "w")
    assert r.returncode == 0 and "1 input rows, 1 records" in r.stdout


def test_validate_refuses_a_file_without_records(tmp_path: Path) -> None:
    path = tmp_path / "neva.json"
    path.write_bytes(b"[]\n")
    r = neva("data", "validate", str(path), "--media", "image")
    assert r.returncode == 2 and "no records" in r.stderr
