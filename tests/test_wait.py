"""`data wait`: what a Kubernetes merge runs in its init container. Run for real against shards converted
while it waits (locally and on the S3 server): 0 when every shard finished, 2 when one failed with bad input
(its failure record), 1 on timeout; one listing per poll."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, neva
from neva_prep import storage
from neva_prep.data import wait as wait_module
from neva_prep.data.wait import failure_record, shard_states, wait_for_shards
from neva_prep.errors import BadInput, StepFailed

WEBVID = str(REPO / "job/neva_prep/sample/webvid.csv")
CONVERT = ("--from", "webvid", "--media", "video", "--num-shards", "2")


def _start_wait(dst: str, *args: str) -> subprocess.Popen[str]:
    """`neva-prep data wait DST ...` in the background, as the merge pod's init container runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "neva_prep.cli", "data", "wait", dst, "--num-shards", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _still_waiting(proc: subprocess.Popen[str], seconds: float = 1.5) -> bool:
    time.sleep(seconds)
    return proc.poll() is None


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_wait_ends_with_0_when_the_last_shard_finishes(where: str, tmp_path: Path, request: Any) -> None:
    dst = str(tmp_path / "webvid") if where == "local" else f"{request.getfixturevalue('s3')}/runs/webvid"
    proc = _start_wait(dst, "--interval", "0.2", "--timeout", "120")
    try:
        assert _still_waiting(proc), proc.communicate()
        assert neva("data", "convert", WEBVID, dst, *CONVERT, "--shard-index", "1").returncode == 0
        assert _still_waiting(proc)  # one of two: still waiting (a listing cache would also stop it here)
        assert neva("data", "convert", WEBVID, dst, *CONVERT, "--shard-index", "0").returncode == 0
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "1 of 2 shard(s) finished; waiting for 0" in out
    assert f"all 2 shard(s) finished under {dst}" in out
    assert neva("data", "merge", dst, "--name", "webvid", "--num-shards", "2").returncode == 0


def test_a_shard_failed_with_bad_input_ends_the_wait_with_2(tmp_path: Path) -> None:
    bad = tmp_path / "webvid.csv"
    bad.write_text("videoid,name\n1,a caption\n", encoding="utf-8")  # no page_dir column
    dst = tmp_path / "webvid"
    proc = _start_wait(str(dst), "--interval", "0.2", "--timeout", "120")
    try:
        assert _still_waiting(proc)
        r = neva("data", "convert", str(bad), str(dst), *CONVERT, "--shard-index", "1", "--record-failure")
        assert r.returncode == 2
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    (line,) = err.strip().splitlines()
    assert line == (
        f"neva-prep: error: {dst}: shard 1 of 2 failed with bad input: {bad}, row 1: no column 'page_dir' "
        "in header videoid,name (a CSV file needs a header row naming its columns)"
    )
    # the record is the one file the failed shard left, beside (not in) the shard folders
    assert [p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()] == [
        "shards/00001-of-00002.FAILED"
    ]
    assert (dst / "shards/00001-of-00002.FAILED").read_text() == r.stderr.removeprefix("neva-prep: error: ")

    # the input fixed, the shard runs again: its record goes, its marker comes, the wait ends with 0
    bad.write_text(Path(WEBVID).read_text(encoding="utf-8"), encoding="utf-8")
    for i in ("0", "1"):
        assert neva("data", "convert", str(bad), str(dst), *CONVERT, "--shard-index", i).returncode == 0
    assert not (dst / "shards/00001-of-00002.FAILED").exists()
    again = neva("data", "wait", str(dst), "--num-shards", "2")
    assert again.returncode == 0, again.stderr


def test_without_record_failure_bad_input_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "webvid.csv"
    bad.write_text("videoid,name\n1,a caption\n", encoding="utf-8")
    dst = tmp_path / "webvid"
    assert neva("data", "convert", str(bad), str(dst), *CONVERT, "--shard-index", "1").returncode == 2
    assert not dst.exists() or [p for p in dst.rglob("*") if p.is_file()] == []


def test_the_wait_gives_up_with_1_after_its_timeout(tmp_path: Path) -> None:
    dst = str(tmp_path / "webvid")
    assert neva("data", "convert", WEBVID, dst, *CONVERT, "--shard-index", "0").returncode == 0
    start = time.monotonic()
    r = neva("data", "wait", dst, "--num-shards", "2", "--timeout", "1", "--interval", "0.2")
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - start < 30
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"neva-prep: error: {dst}: shards still not finished after 1s (waiting for 1)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-shards", "0"), "--num-shards must be at least 1"),
        (("--num-shards", "2", "--interval", "0"), "--interval must be positive"),
        (("--num-shards", "2", "--timeout", "-1"), "--timeout must not be negative"),
    ],
)
def test_unusable_arguments_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    r = neva("data", "wait", str(tmp_path), *args)
    assert r.returncode == 2 and message in r.stderr


class _CountingFs:
    """A filesystem that records every method the wait calls on it."""

    def __init__(self, fs: Any, calls: list[str]) -> None:
        self._fs, self._calls = fs, calls

    def __getattr__(self, name: str) -> Any:
        self._calls.append(name)
        return getattr(self._fs, name)


def test_one_listing_per_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = storage.filesystem
    monkeypatch.setattr(wait_module.storage, "filesystem", lambda url: _CountingFs(real(url), calls))
    dst = tmp_path / "d"
    done = dst / "shards/00000-of-00003"
    done.mkdir(parents=True)
    (done / "DONE").write_text("{}")
    clock = iter(range(100))
    lines: list[str] = []
    with pytest.raises(StepFailed, match=r"waiting for 1, 2\)"):
        wait_for_shards(
            str(dst),
            3,
            timeout=4,
            interval=1,
            echo=lines.append,
            sleep=lambda s: None,
            clock=lambda: next(clock),
        )
    assert calls == ["find"] * 4  # polls at t=1, 2, 3, 4 (the clock ticks once per call)
    assert lines == ["1 of 3 shard(s) finished; waiting for 1, 2"]  # said once, not once per poll


def test_shard_states_reads_markers_and_records_of_this_shard_count_only(tmp_path: Path) -> None:
    dst = tmp_path / "d"
    for name in ("00000-of-00003/DONE", "00001-of-00003.FAILED", "00000-of-00002/DONE", "00002-of-00003/x"):
        (dst / "shards" / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / "shards" / name).write_text("")
    (dst / "shards/00000-of-00003.FAILED").write_text("stale")  # a marker wins over an older record
    states = shard_states(str(dst), 3)
    assert (states.done, states.failed, states.missing) == ({0}, {1}, [1, 2])
    assert shard_states(str(tmp_path / "nothing-yet"), 3).missing == [0, 1, 2]
    assert failure_record(str(dst), 1, 3) == str(dst / "shards/00001-of-00003.FAILED")


def test_a_failing_listing_is_retried_until_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(destination: str, num_shards: int) -> Any:
        raise OSError("connection reset")

    monkeypatch.setattr(wait_module, "shard_states", broken)
    clock = iter(range(100))
    lines: list[str] = []
    with pytest.raises(StepFailed, match="last listing error: OSError: connection reset"):
        wait_for_shards(
            str(tmp_path),
            1,
            timeout=2,
            interval=1,
            echo=lines.append,
            sleep=lambda s: None,
            clock=lambda: next(clock),
        )
    assert len(lines) == 2 and all("trying again" in line for line in lines)

    def bad(destination: str, num_shards: int) -> Any:
        raise BadInput("unsupported storage protocol")

    monkeypatch.setattr(wait_module, "shard_states", bad)
    with pytest.raises(BadInput):  # bad input is not retried
        wait_for_shards(str(tmp_path), 1, timeout=2, sleep=lambda s: None)


def test_for_merge_waits_for_the_shards_then_a_stats_file_newer_than_them(tmp_path: Path) -> None:
    """What a Kubernetes export or check runs first: a merged file of an earlier run does not count."""
    dst = tmp_path / "webvid"
    for i in ("0", "1"):
        assert neva("data", "convert", WEBVID, str(dst), *CONVERT, "--shard-index", i).returncode == 0
    assert neva("data", "merge", str(dst), "--name", "webvid").returncode == 0
    done = neva("data", "wait", str(dst), "--num-shards", "2", "--for", "merge")
    assert done.returncode == 0, done.stderr
    assert f"the merge of {dst} finished (its 2 shard(s), then stats.json)" in done.stdout

    # shard 1 runs again (its input changed): the old merge no longer counts until the merge runs again
    os.utime(dst / "stats.json", (1, 1))
    proc = _start_wait(str(dst), "--for", "merge", "--interval", "0.2", "--timeout", "120")
    try:
        assert _still_waiting(proc), proc.communicate()
        assert neva("data", "merge", str(dst), "--name", "webvid").returncode == 0
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "all 2 shard(s) finished; waiting for the merge (stats.json)" in out

    timed_out = neva("data", "wait", str(tmp_path / "none"), "--num-shards", "1", "--for", "merge",
                     "--timeout", "0.5", "--interval", "0.2")  # fmt: skip
    assert timed_out.returncode == 1
    assert "the merge still not finished after 0.5s (waiting for 0)" in timed_out.stderr


def test_for_merge_fails_with_2_when_a_shard_failed_with_bad_input(tmp_path: Path) -> None:
    dst = tmp_path / "d"
    record = dst / "shards/00000-of-00001.FAILED"
    record.parent.mkdir(parents=True)
    record.write_text("bad.csv, row 3: no caption\n")
    r = neva("data", "wait", str(dst), "--num-shards", "1", "--for", "merge", "--timeout", "5")
    assert r.returncode == 2 and "shard 0 of 1 failed with bad input: bad.csv, row 3: no caption" in r.stderr


@pytest.mark.parametrize(
    ("stage", "folder", "marker", "said"),
    [
        ("energon", "energon/parts", "DONE", "export shard(s)"),
        ("check", "shards", "part.json", "check shard(s)"),
    ],
)
def test_for_energon_and_check_wait_for_their_shards_markers(
    stage: str, folder: str, marker: str, said: str, tmp_path: Path
) -> None:
    parts = tmp_path / folder
    (parts / "00000-of-00002").mkdir(parents=True)
    (parts / "00000-of-00002" / marker).write_text("{}")
    (parts / "00001-of-00002").mkdir()
    (parts / "00001-of-00002" / "other").write_text("{}")  # written before the marker: not finished
    lines: list[str] = []
    with pytest.raises(StepFailed, match=rf"{stage} shards still not finished after 2s \(waiting for 1\)"):
        wait_module.wait_for_stage(str(tmp_path), 2, stage, timeout=2, interval=1, echo=lines.append,
                                   sleep=lambda s: None)  # fmt: skip
    assert lines == [f"1 of 2 {said} finished; waiting for 1"]
    (parts / "00001-of-00002" / marker).write_text("{}")
    r = neva("data", "wait", str(tmp_path), "--num-shards", "2", "--for", stage, "--timeout", "5")
    assert r.returncode == 0, r.stderr
    assert f"all 2 {stage + ' export' if stage == 'energon' else 'check'} shard(s) finished" in r.stdout
