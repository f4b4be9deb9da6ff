"""A shard is reused only for the input it was made from: an input edited in place (even to the same size)
redoes the shard, and the merge refuses shards made from different versions of an input."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from conftest import neva
from neva_prep import storage
from test_data_convert_merge import webvid_csv

CONVERT = ("--from", "webvid", "--media", "video")


def captions(url: str) -> list[str]:
    return [r["conversations"][1]["value"] for r in orjson.loads(storage.read_bytes(url))]


def test_local_input_rewritten_to_the_same_size_redoes_the_shard(tmp_path: Path) -> None:
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv([("1", "d", "a first caption")]))
    dst = tmp_path / "out"
    assert neva("data", "convert", str(src), str(dst), *CONVERT).returncode == 0
    before = src.stat()
    src.write_bytes(webvid_csv([("1", "d", "an edited one!!")]))  # same size, new bytes
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # as an editor a moment later
    assert src.stat().st_size == before.st_size

    r = neva("data", "convert", str(src), str(dst), *CONVERT)
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stdout
    assert neva("data", "merge", str(dst), "--name", "w").returncode == 0
    assert captions(str(dst / "w.json")) == ["an edited one!!"]
    # unchanged since: skipped, as before
    assert "already done (skipped" in neva("data", "convert", str(src), str(dst), *CONVERT).stdout


def test_merge_refuses_shards_of_different_input_versions(tmp_path: Path) -> None:
    src = tmp_path / "webvid.csv"
    rows = [(str(i), "d", f"caption number {i}") for i in range(10)]
    src.write_bytes(webvid_csv(rows))
    dst = tmp_path / "out"
    shard = ("--num-shards", "2", "--shard-index")
    assert neva("data", "convert", str(src), str(dst), *CONVERT, *shard, "0").returncode == 0
    src.write_bytes(webvid_csv([(v, d, c.replace("number", "NUMBER")) for v, d, c in rows]))
    assert neva("data", "convert", str(src), str(dst), *CONVERT, *shard, "1").returncode == 0

    r = neva("data", "merge", str(dst), "--name", "w")
    assert r.returncode == 2, r.stderr
    assert "different versions of" in r.stderr and str(src) in r.stderr and "shards 0 vs shards 1" in r.stderr
    assert r.stderr.count("\n") == 1 and not (dst / "w.json").exists()

    r = neva("data", "convert", str(src), str(dst), *CONVERT, *shard, "0")  # redone: its input changed
    assert r.returncode == 0 and "skipped" not in r.stdout
    assert neva("data", "merge", str(dst), "--name", "w").returncode == 0
    assert captions(str(dst / "w.json")) == [f"caption NUMBER {i}" for i in range(10)]


def test_s3_object_overwritten_gets_a_new_etag_and_redoes_the_shard(s3: str) -> None:
    src = f"{s3}/in/webvid.csv"
    storage.write_bytes(src, webvid_csv([("1", "d", "a first caption")]))
    dst = f"{s3}/out"
    assert neva("data", "convert", src, dst, *CONVERT).returncode == 0
    assert "already done (skipped" in neva("data", "convert", src, dst, *CONVERT).stdout
    storage.write_bytes(src, webvid_csv([("1", "d", "an edited one!!")]))  # same size, new ETag

    r = neva("data", "convert", src, dst, *CONVERT)
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stdout
    assert neva("data", "merge", dst, "--name", "w").returncode == 0
    assert captions(f"{dst}/w.json") == ["an edited one!!"]
    marker = orjson.loads(storage.read_bytes(f"{dst}/shards/00000-of-00001/DONE"))
    assert [sorted(i) for i in marker["inputs"]] == [["ETag", "size", "source"]]
