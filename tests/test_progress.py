"""Progress in logs, from real runs: time-stamped lines with percentage, rate and time left; `launch local`
showing each running command's lines as they come, prefixed with its label."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import neva
from neva_prep.progress import Reporter, duration, size

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
LINE = re.compile(
    r"^(?P<label>.+?): (?P<pct>\d+)% \((?P<done>[\d.,]+ \S+) of (?P<total>[\d.,]+ \S+)\), [\d.,]+ \S+/s"
    r"(, \S+ left|, done in \S+)(, (?P<items>[\d,]+) (?P<what>\w+))?$"
)
FAST = {"NEVA_PREP_PROGRESS_S": "0"}  # a line on every update: the format is what is tested here


def webvid_csv(path: Path, rows: int) -> Path:
    lines = ["videoid,name,page_dir"] + [
        f"{i},a clip of thing number {i} in a field,dir{i % 7}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def progress_lines(stderr: str, label: str) -> list[re.Match[str]]:
    found = []
    for line in stderr.splitlines():
        stamp, _, rest = line.partition(" ")
        assert re.fullmatch(STAMP, stamp), line
        m = LINE.match(rest)
        assert m, line
        assert m["label"] == label
        found.append(m)
    return found


def test_data_convert_and_merge_log_lines(tmp_path: Path) -> None:
    src = webvid_csv(tmp_path / "webvid.csv", 60_000)  # ~3.5 MB: several 4 MiB-or-less reads and flushes
    dst = tmp_path / "out"
    r = neva("data", "convert", str(src), str(dst), "--from", "webvid", "--media", "video", env=FAST)
    assert r.returncode == 0, r.stderr
    lines = progress_lines(r.stderr, "data convert shard 0/1")
    assert len(lines) >= 3
    pcts = [int(m["pct"]) for m in lines]
    assert pcts == sorted(pcts) and pcts[-1] == 100  # bytes of the split, read in order, to the end
    header = len("videoid,name,page_dir\n")
    assert {m["total"] for m in lines} == {size(src.stat().st_size - header)}  # the split: all but the header
    assert lines[-1]["items"] == "60,000"  # the last line counts every row
    assert any(m["what"] == "rows" for m in lines)

    r = neva("data", "merge", str(dst), "--name", "w", env=FAST)
    assert r.returncode == 0, r.stderr
    lines = progress_lines(r.stderr, "data merge w")
    assert lines and lines[-1]["pct"] == "100" and lines[-1]["total"] == "60,000 rows"


def test_log_lines_are_rare_by_default(tmp_path: Path) -> None:
    """Without the test setting, a short step prints no progress at all (at most one line every 30 s)."""
    src = webvid_csv(tmp_path / "webvid.csv", 5_000)
    r = neva("data", "convert", str(src), str(tmp_path / "out"), "--from", "webvid", "--media", "video")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_launch_local_shows_running_commands_progress(tmp_path: Path) -> None:
    src = webvid_csv(tmp_path / "webvid.csv", 20_000)
    plan = tmp_path / "plan.yaml"
    dataset = {"name": "w", "source": str(src), "from": "webvid", "media": "video", "shards": 2}
    plan.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "datasets": [dataset]}))
    r = neva("launch", "local", str(plan), "--workers", "2", env=FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    for i, label in ((1, "w 1/2"), (2, "w 2/2")):
        live = [n for n, line in enumerate(out) if line.startswith(f"  [{label}] ")]
        assert live, r.stdout
        progress_lines(
            "\n".join(out[n].removeprefix(f"  [{label}] ") for n in live), f"data convert shard {i - 1}/2"
        )
        ended = next(n for n, line in enumerate(out) if line.startswith(f"[{label}] ok"))
        assert max(live) < ended  # shown while it ran, not after
    assert any(line.startswith("  [w merge] ") and "data merge w" in line for line in out)


def test_human_numbers() -> None:
    assert [size(n) for n in (0, 512, 2048, 5 * 2**20 + 2**19, 3 * 2**30)] == [
        "0 B",
        "512 B",
        "2.0 KiB",
        "5.5 MiB",
        "3.00 GiB",
    ]
    assert [duration(s) for s in (4.4, 187, 7500)] == ["4s", "3m07s", "2h05m"]


def test_batch_start_does_not_import_rich(tmp_path: Path) -> None:
    """A data shard in a log (no terminal) never loads rich: its import is ~50 ms of every task's start."""
    code = (
        "import sys; from neva_prep.data import convert, merge; from neva_prep.progress import Reporter\n"
        "with Reporter('x', 10) as r: r.advance(10)\n"
        "print(sorted(m for m in sys.modules if m.startswith('rich')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_terminal_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar is rich's, imported when the step starts."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with Reporter("convert", 100, unit="rows") as reporter:
        assert reporter._progress is not None
        reporter.advance(40, 2, "rows")
        assert reporter._progress.tasks[0].completed == 40
    assert not reporter._progress.live.is_started
