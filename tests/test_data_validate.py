"""`data validate FILE`: the convert's record rules on an existing NeVA / VideoNeVA JSON, streamed."""

from __future__ import annotations

from pathlib import Path

import orjson

from conftest import neva
from neva_prep import storage


def record(i: int, media: str = "image", **extra: object) -> dict[str, object]:
    return {
        "id": f"r{i}",
        media: f"dir{i % 2}/{i}.jpg",
        "conversations": [
            {"from": "human", "value": f"<{media}>\nDescribe it."},
            {"from": "gpt", "value": f"Caption {i}"},
        ],
        **extra,
    }


def test_valid_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "neva.json"
    path.write_bytes(orjson.dumps([record(i) for i in range(5)], option=orjson.OPT_INDENT_2))
    r = neva("data", "validate", str(path), "--media", "image")
    assert r.returncode == 0, r.stderr
    assert "valid: 5 records, 5 valid, 0 invalid" in r.stdout


def test_invalid_records_are_reported_with_row_and_reason(tmp_path: Path) -> None:
    bad_turns = record(3)
    bad_turns["conversations"] = [{"from": "gpt", "value": "x"}]
    records = [
        record(1),
        record(
            2, conversations=[{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "y"}]
        ),
        bad_turns,
        record(4, image="../escape.jpg"),
        record(1),  # the same record as row 1
        record(6, media="video"),
        record(1, conversations=[{"from": "human", "value": "<image>\nWhy?"}, {"from": "gpt", "value": "z"}]),
    ]
    path = tmp_path / "neva.json"
    path.write_bytes(orjson.dumps(records))
    r = neva("data", "validate", str(path), "--media", "image")
    assert r.returncode == 3
    lines = [orjson.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [(x["row"], x["reason"]) for x in lines] == [
        (2, "placeholder count"),
        (3, "turn order"),
        (4, "path escapes root"),
        (5, "duplicate record"),
        (6, "wrong media key 'video'"),
    ]
    assert all(x["source"] == str(path) and x["input"] and x["detail"] for x in lines)
    assert "INVALID: 7 records, 2 valid, 5 invalid" in r.stdout
    # row 7 repeats row 1's id with another conversation: a distinct sample, counted, not invalid
    assert "repeated ids: 1 valid records share their id" in r.stdout

    report = tmp_path / "report.jsonl"
    r = neva("data", "validate", str(path), "--media", "image", "--report", str(report))
    assert r.returncode == 3
    assert [orjson.loads(x) for x in report.read_bytes().splitlines()] == lines
    assert not any(x.startswith("{") for x in r.stdout.splitlines())


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"id": "a", "image": "x.jpg", "conversations": [')
    r = neva("data", "validate", str(path), "--media", "image")
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(path) in r.stderr and r.stderr.count("\n") == 1
    r = neva("data", "validate", str(tmp_path / "absent.json"), "--media", "image")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_media_root_on_s3(s3: str) -> None:
    for i in (0, 1, 2):
        storage.write_bytes(f"{s3}/media/dir{i % 2}/{i}.jpg", b"jpg")
    storage.write_bytes(f"{s3}/neva.json", orjson.dumps([record(i) for i in range(4)]))
    r = neva("data", "validate", f"{s3}/neva.json", "--media", "image", "--media-root", f"{s3}/media")
    assert r.returncode == 3
    lines = [orjson.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [(x["row"], x["reason"]) for x in lines] == [(4, "media missing")]
    assert "dir1/3.jpg" in lines[0]["detail"]
    assert "testing-secret" not in r.stdout + r.stderr
