"""The `data check` report opened in a real headless browser (Debian's chromium, installed by .ci/run): the
page loads without a console message, needs nothing from outside, and its screenshot shows the plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from conftest import neva
from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's `chromium` package)"
)
PLOT_BLUE = (0x2E, 0x86, 0xC1)  # report.py's bar colour


def screenshot(page: Path, out: Path, tmp_path: Path) -> str:
    """Load `page` in headless chromium, save a screenshot; return chromium's log (stderr)."""
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
            "--window-size=1200,2400", f"--screenshot={out}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return proc.stderr


def console_messages(log: str) -> list[str]:
    """Chromium logs every console message (errors, uncaught exceptions, logs) as `CONSOLE(...)`."""
    return [line for line in log.splitlines() if re.search(r":CONSOLE[:(]", line)]


@needs_chromium
def test_console_detection_works(tmp_path: Path) -> None:
    """The check below can fail: a page that errors is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>console.error('boom'); nope();</script></body></html>"
    )
    log = screenshot(page, tmp_path / "bad.png", tmp_path)
    assert any("boom" in m for m in console_messages(log))


@needs_chromium
def test_report_loads_cleanly_and_shows_the_plots(tmp_path: Path) -> None:
    train_tokenizer(tmp_path / "tokenizer.model", 384)
    patch_tokenizer(str(tmp_path / "tokenizer.model"), str(tmp_path / "tokenizer_neva.model"))
    records = [
        {
            "id": f"r{i}",
            "image": f"{i}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\n" + "Describe this picture in detail. " * (i % 7)},
                {"from": "gpt", "value": "It shows a street with buses. " * (1 + i % 11)},
            ]
            + ([{"from": "human", "value": "And?"}, {"from": "gpt", "value": "More."}] if i % 4 == 0 else []),
        }
        for i in range(1, 120)
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    report = tmp_path / "report"
    proc = neva(
        "data", "check", str(tmp_path / "d.json"), "--media", "image", "--template", "v1",
        "--tokenizer", str(tmp_path / "tokenizer_neva.model"), "--seq-length", "600", "--report", str(report),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # some records are over 600 tokens
    page = report / "report.html"
    html = page.read_text()
    # self-contained: every image inline, no script, nothing fetched from anywhere
    assert html.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    for name in ("tokens.png", "turns.png", "answers.png", "findings.png"):
        assert Image.open(report / name).size[0] >= 600

    log = screenshot(page, tmp_path / "shot.png", tmp_path)
    assert console_messages(log) == []
    shot = Image.open(tmp_path / "shot.png").convert("RGB")
    assert max(ImageStat.Stat(shot).stddev) > 20  # not a blank page
    blue = int((np.abs(np.asarray(shot, dtype=np.int16) - PLOT_BLUE) < 12).all(axis=-1).sum())
    assert blue > 5000, blue  # the plots' bars were painted
