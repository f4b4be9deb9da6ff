"""`data convert` in shards, then `data merge`: the commands a user runs, on real CSV / JSON, local and s3://."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import neva
from neva_prep import storage
from neva_prep.data.convert import CRASH_ENV, convert_shard
from neva_prep.data.merge import merge_shards
from neva_prep.data.records import ConvertOptions
from neva_prep.data.shards import shard_dir
from neva_prep.errors import BadInput

PROMPT = "<video>\nWrite a terse but informative summary of the following video clip."
WEBVID = ConvertOptions(source_format="webvid", media="video")


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def webvid_csv(rows: list[tuple[str, str, str]], *, original_order: bool = False) -> bytes:
    """A WebVid CSV (BOM, CRLF) from (videoid, page_dir, name) rows, in either column order of the wild."""
    lines = []
    if original_order:
        lines.append("videoid,name,page_idx,page_dir,duration,contentUrl")
        for vid, page_dir, name in rows:
            lines.append(f"{vid},{csv_field(name)},7,{page_dir},PT00H00M17S,https://x/{vid}.mp4")
    else:
        lines.append("videoid,contentUrl,duration,page_dir,name")
        for vid, page_dir, name in rows:
            lines.append(f"{vid},https://x/{vid}.mp4,PT00H00M17S,{page_dir},{csv_field(name)}")
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


# Row 2 is the NeMo guide's example; row 4 has no caption; row 6 repeats row 1's id (a later duplicate).
ROWS = [
    ("1000050", "076101_076150", 'Aerial view, "golden hour", of a lighthouse'),
    ("1043215450", "076101_076150", "Young happy couple walking on the beach"),
    ("1000187", "076101_076150", "Café au lait\nbeing poured, slow motion"),
    ("1000324", "076151_076200", ""),
    ("1000461", "076151_076200", "Crowd crossing a street in Tokyo"),
    ("1000050", "076151_076200", "A duplicate id, rejected because row 1 came first"),
    ("1000598", "076151_076200", "Snow falling on pine trees"),
]


def convert_all(src: str, dst: str, n: int, *args: str, env: dict[str, str] | None = None) -> None:
    for i in range(n):
        r = neva("data", "convert", src, dst, "--from", "webvid", "--media", "video",
                 "--num-shards", str(n), "--shard-index", str(i), *args, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"shard {i} of {n}" in r.stdout


def load_jsonl(url: str) -> list[dict]:
    return [orjson.loads(line) for line in storage.read_bytes(url).splitlines()]


def test_webvid_from_s3_in_shards(s3: str, tmp_path: Path) -> None:
    storage.write_bytes(f"{s3}/in/webvid.csv", webvid_csv(ROWS, original_order=True))
    dst = f"{s3}/out/webvid"
    convert_all(f"{s3}/in/*.csv", dst, 3)
    r = neva("data", "merge", dst, "--name", "webvid")
    assert r.returncode == 0, r.stderr
    assert "7 input rows, 5 records, 2 rejected" in r.stdout
    assert "testing-secret" not in r.stdout + r.stderr

    data = storage.read_bytes(f"{dst}/webvid.json")
    records = orjson.loads(data)
    assert [rec["id"] for rec in records] == ["1000050", "1043215450", "1000187", "1000461", "1000598"]
    # The NeMo guide's example record, with the relative path the loader wants.
    assert records[1] == {
        "id": "1043215450",
        "video": "076101_076150/1043215450.mp4",
        "conversations": [
            {"from": "human", "value": PROMPT},
            {"from": "gpt", "value": "Young happy couple walking on the beach"},
        ],
    }
    assert records[2]["conversations"][1]["value"] == "Café au lait\nbeing poured, slow motion"
    assert data.startswith(b"[\n{") and data.endswith(b"}\n]\n")

    rejects = load_jsonl(f"{dst}/rejects.jsonl")
    assert [(r["source"], r["row"], r["reason"]) for r in rejects] == [
        (f"{s3}/in/webvid.csv", 4, "missing field 'name'"),
        (f"{s3}/in/webvid.csv", 6, "duplicate id"),
    ]
    assert "1000324" in rejects[0]["input"] and "A duplicate id" in rejects[1]["input"]
    stats = orjson.loads(storage.read_bytes(f"{dst}/stats.json"))
    assert (stats["input_rows"], stats["converted"], stats["rejected"]) == (7, 5, 2)
    assert stats["rejected_by_reason"] == {"duplicate id": 1, "missing field 'name'": 1}
    assert len(stats["shards"]) == 3
    assert sum(s["converted"] for s in stats["shards"]) == 5
    assert stats["lengths"]["turns"] == {"count": 5, "min": 2, "max": 2, "sum": 10, "mean": 2.0}

    # Same bytes as one local shard: the shard count and the storage do not change the output.
    local = tmp_path / "one"
    (tmp_path / "webvid.csv").write_bytes(webvid_csv(ROWS))
    convert_all(str(tmp_path / "webvid.csv"), str(local), 1)
    assert neva("data", "merge", str(local), "--name", "webvid").returncode == 0
    assert (local / "webvid.json").read_bytes() == data


def llava_records() -> list[object]:
    def rec(i: int, **extra: object) -> dict[str, object]:
        return {
            "id": f"{i:06d}",
            "image": f"coco/train2017/{i:012d}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": f'Answer {i}, with "quotes" and ünïcode.'},
            ],
            **extra,
        }

    text_only = {
        "id": "t1",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
    }
    return [rec(1), rec(2), text_only, rec(3), "not an object", rec(4, image="/abs/x.jpg"), rec(5), rec(2)]


def test_llava_from_s3_to_video(s3: str) -> None:
    storage.write_bytes(f"{s3}/llava.json", orjson.dumps(llava_records(), option=orjson.OPT_INDENT_2))
    dst = f"{s3}/out"
    for i in range(2):
        r = neva("data", "convert", f"{s3}/llava.json", dst, "--from", "llava", "--media", "video",
                 "--num-shards", "2", env={"JOB_COMPLETION_INDEX": str(i)})  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = neva("data", "merge", dst, "--name", "llava")
    assert r.returncode == 0, r.stderr
    records = orjson.loads(storage.read_bytes(f"{dst}/llava.json"))
    assert [rec["id"] for rec in records] == ["000001", "000002", "000003", "000005"]
    assert records[0]["video"] == "coco/train2017/000000000001.jpg"
    assert records[0]["conversations"][0]["value"] == "<video>\nWhat is in the picture?"
    rejects = load_jsonl(f"{dst}/rejects.jsonl")
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (3, "text-only record (video)"),
        (5, "non-object record"),
        (6, "path escapes root"),
        (8, "duplicate record"),  # rec(2) again: the same image and conversations
    ]
    assert all(r["source"] == f"{s3}/llava.json" and r["input"] for r in rejects)


def test_killed_shard_is_redone_without_duplicates(tmp_path: Path) -> None:
    rows = [(str(10_000 + i), f"{i // 100:06d}_x", f'caption {i}, "quoted"') for i in range(3000)]
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(rows))
    dst = tmp_path / "out"
    convert_all(str(src), str(dst), 1)
    assert neva("data", "merge", str(dst), "--name", "one").returncode == 0
    expected = (dst / "one.json").read_bytes()

    sharded = tmp_path / "sharded"
    base = [
        "data",
        "convert",
        str(src),
        str(sharded),
        "--from",
        "webvid",
        "--media",
        "video",
        "--num-shards",
        "2",
    ]
    killed = neva(*base, "--shard-index", "1", env={CRASH_ENV: "700"})
    assert killed.returncode == 137
    shard1 = Path(shard_dir(str(sharded), 1, 2))
    assert not (shard1 / "DONE").exists()
    assert any(".tmp-" in p.name for p in shard1.iterdir())  # half-written temporary files stay behind

    r = neva("data", "merge", str(sharded), "--name", "one")
    assert r.returncode == 1
    assert "2 of 2 shard(s) not finished" in r.stderr and ": 0, 1;" in r.stderr
    assert neva(*base, "--shard-index", "0").returncode == 0
    r = neva("data", "merge", str(sharded), "--name", "one")
    assert r.returncode == 1 and "1 of 2 shard(s) not finished" in r.stderr and ": 1;" in r.stderr
    assert not (sharded / "one.json").exists()

    assert neva(*base, "--shard-index", "1").returncode == 0
    again = neva(*base, "--shard-index", "1")
    assert "already done (skipped" in again.stdout
    r = neva("data", "merge", str(sharded), "--name", "one")
    assert r.returncode == 0, r.stderr
    assert "3,000 input rows, 3,000 records, 0 rejected" in r.stdout  # one number format: 614,400
    assert (sharded / "one.json").read_bytes() == expected

    forced = neva(*base, "--shard-index", "1", "--force")
    assert forced.returncode == 0 and "skipped" not in forced.stdout


def test_shard_index_out_of_range_is_bad_input(tmp_path: Path) -> None:
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(ROWS))
    base = ["data", "convert", str(src), str(tmp_path / "out"), "--from", "webvid", "--media", "video"]
    r = neva(*base, "--num-shards", "3", "--shard-index", "3")
    assert r.returncode == 2 and "--shard-index 3 is out of range" in r.stderr
    r = neva(*base, "--num-shards", "3", env={"JOB_COMPLETION_INDEX": "", "SLURM_ARRAY_TASK_ID": "4"})
    assert r.returncode == 2 and "--shard-index 4" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("DONE"))


def test_media_root_rejects_missing_files_with_one_listing_per_directory(tmp_path: Path) -> None:
    media = tmp_path / "videos"
    for vid, page_dir, _ in ROWS[:3]:
        (media / page_dir).mkdir(parents=True, exist_ok=True)
        (media / page_dir / f"{vid}.mp4").write_bytes(b"")
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(ROWS))
    dst = tmp_path / "out"
    result = convert_shard(str(src), str(dst), options=WEBVID, media_root=str(media))
    assert (result.converted, result.rejected) == (3, 4)
    assert result.rejected_by_reason == {"media missing": 3, "missing field 'name'": 1}
    merged = merge_shards(str(dst), name="webvid")
    rejects = [orjson.loads(x) for x in (dst / "rejects.jsonl").read_bytes().splitlines()]
    missing = [r for r in rejects if r["reason"] == "media missing"]
    assert [r["row"] for r in missing] == [5, 6, 7]
    assert "076151_076200/1000461.mp4" in missing[0]["detail"]
    assert merged.input_rows == merged.converted + merged.rejected == 7

    # The same through the CLI, and the listing count: one per directory, not one per file.
    from neva_prep.data.media import MediaRoot

    root = MediaRoot(str(media))
    assert [root.exists(f"{d}/{v}.mp4") for v, d, _ in ROWS] == [True] * 3 + [False] * 4
    assert root.listings == 2
    r = neva("data", "convert", str(src), str(tmp_path / "cli"), "--from", "webvid", "--media", "video",
             "--media-root", str(media))  # fmt: skip
    assert r.returncode == 0 and "media missing: 3" in r.stdout


def test_merge_refuses_mixed_runs_and_bad_names(tmp_path: Path) -> None:
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(ROWS))
    dst = str(tmp_path / "out")
    r = neva("data", "merge", dst, "--name", "x")
    assert r.returncode == 2 and "no such folder" in r.stderr  # a wrong path: retrying cannot help
    (tmp_path / "out").mkdir()
    r = neva("data", "merge", dst, "--name", "x")
    assert r.returncode == 1 and "no shards found" in r.stderr  # shards may still come
    convert_shard(str(src), dst, options=WEBVID, num_shards=1)
    convert_shard(str(src), dst, options=WEBVID, num_shards=2, shard_index=0)
    r = neva("data", "merge", dst, "--name", "x")
    assert r.returncode == 1 and "different --num-shards (1, 2)" in r.stderr
    r = neva("data", "merge", dst, "--name", "x", "--num-shards", "1")
    assert r.returncode == 0, r.stderr
    r = neva("data", "merge", dst, "--name", "../x")
    assert r.returncode == 2 and "--name" in r.stderr


_caption = st.text(alphabet=st.sampled_from(list("ab ,\"\n\r'é漢😀<>")), min_size=0, max_size=12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 2), _caption), min_size=0, max_size=25),
    files=st.integers(1, 3),
    counts=st.lists(st.integers(1, 7), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_merged_output_is_identical_whatever_the_shard_count(
    rows: list[tuple[int, int, str]], files: int, counts: list[int], seed: int
) -> None:
    """Split rows over 1-3 CSV files; merge after 1 shard and after N shards run in a random order."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        per_file = [rows[i::files] for i in range(files)]
        for i, part in enumerate(per_file):
            csv_rows = [(f"v{vid}", f"d{d}", caption) for vid, d, caption in part]
            (base / f"part-{i}.csv").write_bytes(webvid_csv(csv_rows, original_order=i % 2 == 1))
        outputs: list[tuple[bytes, ...]] = []
        for n in [1, *counts]:
            dst = str(base / f"out-{n}-{len(outputs)}")
            order = list(range(n))
            random.Random(seed).shuffle(order)
            try:
                for i in order:
                    convert_shard(str(base / "part-*.csv"), dst, options=WEBVID, num_shards=n, shard_index=i)
                result = merge_shards(dst, name="d")
            except BadInput as exc:  # no rows, or every row rejected: no dataset, whatever the shards
                assert not any(caption.strip() for _, _, caption in rows), exc
                outputs.append((b"bad input",))
                continue
            assert result.input_rows == len(rows) == result.converted + result.rejected
            outputs.append(tuple(Path(dst, f).read_bytes() for f in ("d.json", "rejects.jsonl")))
        assert all(o == outputs[0] for o in outputs)
        if outputs[0] == (b"bad input",):
            return
        records = orjson.loads(outputs[0][0])
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids))
        rejects = [orjson.loads(x) for x in outputs[0][1].splitlines()]
        rows_of = {f"part-{i}.csv": len(part) for i, part in enumerate(per_file)}
        assert all(1 <= r["row"] <= rows_of[Path(r["source"]).name] for r in rejects)
        assert len({(r["source"], r["row"]) for r in rejects}) == len(rejects)


def test_bad_input_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "webvid.csv"
    src.write_text("videoid,name\n1,a caption\n", encoding="utf-8")  # no page_dir column
    dst = tmp_path / "out"
    r = neva("data", "convert", str(src), str(dst), "--from", "webvid", "--media", "video")
    assert r.returncode == 2
    assert r.stderr.startswith("neva-prep: error: ") and "page_dir" in r.stderr and r.stderr.count("\n") == 1
    assert [p.name for p in dst.rglob("*") if p.is_file()] == []

    r = neva(
        "data", "convert", str(tmp_path / "absent-*.csv"), str(dst), "--from", "webvid", "--media", "video"
    )
    assert r.returncode == 2 and "matches no input files" in r.stderr


def test_converted_output_passes_validate(tmp_path: Path) -> None:
    src = tmp_path / "llava.json"
    src.write_bytes(orjson.dumps(llava_records()))
    dst = tmp_path / "out"
    assert neva("data", "convert", str(src), str(dst), "--from", "llava", "--media", "image").returncode == 0
    assert neva("data", "merge", str(dst), "--name", "neva").returncode == 0
    r = neva("data", "validate", str(dst / "neva.json"), "--media", "image")
    assert r.returncode == 0, r.stdout
    assert "valid: 5 records, 5 valid, 0 invalid" in r.stdout  # text-only kept for image


CLEAN_ROWS = [row for i, row in enumerate(ROWS) if i not in (3, 5)]  # no reject, no duplicate


def test_one_shard_merge_publishes_the_shard_file_itself(tmp_path: Path) -> None:
    """A 1-shard run's records file is framed as the array: a merge that keeps every record links it (no
    second copy of the dataset on disk), with the bytes a 3-shard merge writes."""
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(CLEAN_ROWS))
    outputs = {}
    for n in (1, 3):
        convert_all(str(src), str(tmp_path / f"n{n}"), n)
        r = neva("data", "merge", str(tmp_path / f"n{n}"), "--name", "w")
        assert r.returncode == 0 and "5 input rows, 5 records, 0 rejected" in r.stdout, r.stderr
        outputs[n] = tmp_path / f"n{n}" / "w.json"
    records_file = Path(shard_dir(str(tmp_path / "n1"), 0, 1)) / "records.jsonl"
    assert outputs[1].stat().st_ino == records_file.stat().st_ino
    assert outputs[1].read_bytes() == outputs[3].read_bytes()
    assert [r["id"] for r in orjson.loads(outputs[1].read_bytes())] == [v for v, _, _ in CLEAN_ROWS]

    # Nothing writes a shard's file in place: a re-run writes a new one, and the published array keeps
    # its bytes until the next merge publishes the new records.
    before = outputs[1].read_bytes()
    src.write_bytes(webvid_csv([(v, d, name + " (edited)") for v, d, name in CLEAN_ROWS]))
    convert_all(str(src), str(tmp_path / "n1"), 1, "--force")
    assert outputs[1].read_bytes() == before
    assert neva("data", "merge", str(tmp_path / "n1"), "--name", "w").returncode == 0
    assert all(
        r["conversations"][1]["value"].endswith(" (edited)") for r in orjson.loads(outputs[1].read_bytes())
    )

    # A framed file that is not what its stats say is refused (exit 1: re-run the shard), nothing published.
    records_file.write_bytes(records_file.read_bytes()[:-1])
    outputs[1].unlink()
    r = neva("data", "merge", str(tmp_path / "n1"), "--name", "w")
    assert r.returncode == 1 and "records.jsonl: not framed as its stats say" in r.stderr
    assert not outputs[1].exists()


def test_one_shard_merge_that_drops_records_reads_the_framed_file(tmp_path: Path) -> None:
    """With a duplicate to drop, the one framed shard is copied record by record: its `[` and `]` never
    reach the output, and a tampered end is caught."""
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(ROWS))
    for n in (1, 2):
        convert_all(str(src), str(tmp_path / f"n{n}"), n)
        r = neva("data", "merge", str(tmp_path / f"n{n}"), "--name", "w")
        assert r.returncode == 0 and "7 input rows, 5 records, 2 rejected" in r.stdout, r.stderr
    one, two = (tmp_path / f"n{n}" / "w.json" for n in (1, 2))
    assert one.read_bytes() == two.read_bytes()
    records_file = Path(shard_dir(str(tmp_path / "n1"), 0, 1)) / "records.jsonl"
    assert one.stat().st_ino != records_file.stat().st_ino
    data = records_file.read_bytes()
    assert data.startswith(b"[\n{") and data.endswith(b"}\n]\n")
    records_file.write_bytes(data[:-3] + b"\n}\n")
    r = neva("data", "merge", str(tmp_path / "n1"), "--name", "w")
    assert r.returncode == 1 and "records.jsonl: a record range does not end a record" in r.stderr


def test_one_shard_merge_on_s3_is_a_server_side_copy(s3: str, tmp_path: Path) -> None:
    storage.write_bytes(f"{s3}/one/webvid.csv", webvid_csv(CLEAN_ROWS))
    (tmp_path / "webvid.csv").write_bytes(webvid_csv(CLEAN_ROWS))
    for src, dst in (
        (f"{s3}/one/webvid.csv", f"{s3}/one/out"),
        (str(tmp_path / "webvid.csv"), str(tmp_path / "out")),
    ):
        convert_all(src, dst, 1)
        r = neva("data", "merge", dst, "--name", "w")
        assert r.returncode == 0 and "5 records" in r.stdout, r.stderr
    data = storage.read_bytes(f"{s3}/one/out/w.json")
    assert data == (tmp_path / "out" / "w.json").read_bytes()
    assert storage.read_bytes(f"{s3}/one/out/shards/00000-of-00001/records.jsonl") == data
