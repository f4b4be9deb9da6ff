"""The storage layer: atomic destination writes, locally and on a real S3 server, and redaction."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from neva_prep import storage
from neva_prep.errors import BadInput


class Boom(RuntimeError):
    pass


def test_local_atomic_write_commits_on_success(tmp_path: Path) -> None:
    dst = tmp_path / "a" / "b.bin"
    with storage.atomic_write(str(dst)) as f:
        f.write(b"hello")
        assert not dst.exists(), "visible before commit"
    assert dst.read_bytes() == b"hello"
    assert os.listdir(dst.parent) == ["b.bin"]


def test_local_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dst = tmp_path / "out.bin"
    with pytest.raises(Boom), storage.atomic_write(str(dst)) as f:
        f.write(b"x" * 1000)
        raise Boom
    assert os.listdir(tmp_path) == []


def test_local_failure_keeps_previous_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(Boom), storage.atomic_write(str(dst)) as f:
        f.write(b"new")
        raise Boom
    assert dst.read_bytes() == b"old"


def test_unwritable_destination_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with (
        pytest.raises(BadInput, match="cannot write destination"),
        storage.atomic_write(str(blocker / "x.bin")),
    ):
        pass


def test_missing_source_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        storage.open_read(str(tmp_path / "nope"))


def test_redact_hides_userinfo() -> None:
    assert storage.redact("s3://AKIA:secret@bucket/key") == "s3://***@bucket/key"
    assert storage.redact("/plain/path") == "/plain/path"


def test_join_and_glob(tmp_path: Path) -> None:
    for name in ("b.csv", "a.csv", "c.txt"):
        (tmp_path / name).write_text("x")
    assert storage.glob(str(tmp_path / "*.csv")) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert storage.join("s3://bucket/dir/", "x", "y") == "s3://bucket/dir/x/y"


@pytest.mark.s3
def test_s3_round_trip(s3: str) -> None:
    url = f"{s3}/dir/file.txt"
    storage.write_text(url, "héllo")
    assert storage.exists(url)
    assert storage.read_text(url) == "héllo"
    assert storage.listdir(f"{s3}/dir") == ["file.txt"]
    assert storage.glob(f"{s3}/dir/*.txt") == [url]


@pytest.mark.s3
def test_s3_failed_multipart_upload_leaves_nothing(
    s3: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after several parts were uploaded aborts the multipart upload: no object, no parts."""
    monkeypatch.setattr(storage, "BLOCK_SIZE", 5 * 2**20)
    url = f"{s3}/big.bin"
    with pytest.raises(Boom), storage.atomic_write(url) as f:
        for _ in range(3):
            f.write(os.urandom(4 * 2**20))  # 12 MiB: at least two parts already sent
        raise Boom
    assert not storage.exists(url)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = s3.removeprefix("s3://")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.s3
def test_s3_credentials_never_in_messages(s3: str) -> None:
    with pytest.raises(BadInput) as info:
        storage.open_read(f"{s3}/missing.bin")
    assert "testing-secret-never-printed" not in str(info.value)
    assert "testing" not in str(info.value).replace(s3, "")


def test_failed_local_write_leaves_no_folders_it_made(tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    url = str(tmp_path / "keep" / "a" / "b" / "file.bin")
    with pytest.raises(Boom), storage.atomic_write(url) as f:
        f.write(b"half")
        raise Boom
    assert [p.name for p in tmp_path.rglob("*")] == ["keep"]


def test_destination_under_a_regular_file_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for call in (storage.makedirs, storage.ensure_writable, lambda u: storage.write_text(u, "y")):
        with pytest.raises(BadInput, match=f"{blocker}/out: cannot write destination"):
            call(str(blocker / "out"))
    storage.remove(str(blocker / "out"))  # nothing there to remove: no error
    assert not storage.exists(str(blocker / "out")) and blocker.read_text() == "x"


def test_publish_copy_links_locally_and_copies_where_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "out" / "dst.bin"
    src.write_bytes(b"records")
    dst.parent.mkdir()
    dst.write_bytes(b"an older output")
    storage.publish_copy(str(src), str(dst))
    assert dst.stat().st_ino == src.stat().st_ino and os.listdir(dst.parent) == ["dst.bin"]

    def no_links(*args: object) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV: what another file system answers

    monkeypatch.setattr(os, "link", no_links)
    other = tmp_path / "out" / "copy.bin"
    storage.publish_copy(str(src), str(other))
    assert other.read_bytes() == b"records" and other.stat().st_ino != src.stat().st_ino
    assert sorted(os.listdir(dst.parent)) == ["copy.bin", "dst.bin"]  # no temporary file left


def test_publish_copy_on_s3_and_across_stores(s3: str, tmp_path: Path) -> None:
    storage.write_bytes(f"{s3}/p/src.bin", b"records")
    storage.publish_copy(f"{s3}/p/src.bin", f"{s3}/p/dst.bin")  # server-side
    assert storage.read_bytes(f"{s3}/p/dst.bin") == b"records"
    storage.publish_copy(f"{s3}/p/src.bin", str(tmp_path / "local.bin"))  # streamed
    assert (tmp_path / "local.bin").read_bytes() == b"records"
