"""A plan's `check:` block: parsed with the dataset, shown by `plan check`, run by `launch local` after the
dataset's merge (whole, or in shards then --merge), its report in output/datasets/NAME/report/."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import neva
from neva_prep.launch.plan import check_argv, load_plan
from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer


def test_launch_local_runs_the_check_after_the_merge(tmp_path: Path) -> None:
    made = neva("sample", str(tmp_path / "sample"))
    assert made.returncode == 0, made.stderr
    plan_path = Path(made.stdout.strip())
    train_tokenizer(tmp_path / "tokenizer.model", 384)
    tokenizer = tmp_path / "tokenizer_neva.model"
    patch_tokenizer(str(tmp_path / "tokenizer.model"), str(tokenizer))
    doc = yaml.safe_load(plan_path.read_text())
    doc["model"] = None
    by_name = {d["name"]: d for d in doc["datasets"]}
    by_name["llava"]["check"] = {"template": "llama_2", "tokenizer": str(tokenizer), "seq_length": 4096}
    by_name["webvid"]["check"] = {
        "template": "llama_2", "tokenizer": str(tokenizer), "seq_length": 64, "num_frames": 2, "shards": 2,
    }  # fmt: skip
    plan_path.write_text(yaml.safe_dump(doc))

    plan = load_plan(str(plan_path))
    out = tmp_path / "sample" / "output" / "datasets"
    argv = check_argv(plan, plan.dataset("webvid"), merge=True)
    assert argv[3] == str(out / "webvid" / "webvid.json") and argv[-1] == "--merge"
    described = neva("plan", "check", str(plan_path))
    assert described.returncode == 0, described.stderr
    assert "neva-sample-llava-check:" in described.stdout
    assert "neva-sample-webvid-check-merge:" in described.stdout

    run = neva("launch", "local", str(plan_path), "--workers", "2")
    # webvid at 64 tokens: every 2-frame video (512 positions) is over, so a check found problems
    assert run.returncode == 3, run.stdout + run.stderr
    assert "[llava check] ok" in run.stdout
    assert "[webvid check 2/2] ok" in run.stdout and "[webvid check merge] FAILED (exit 3)" in run.stdout
    assert "a data check found problems" in run.stdout
    llava = json.loads((out / "llava" / "report" / "summary.json").read_text())
    assert llava["records"] == 9 and llava["findings"] == 0 and llava["tokens"]["max"] > 256
    webvid = json.loads((out / "webvid" / "report" / "summary.json").read_text())
    assert webvid["records"] == 19 and webvid["over_seq_length"] == 19
    assert (out / "webvid" / "report" / "report.html").exists()


def test_check_block_is_validated(tmp_path: Path) -> None:
    plan = {
        "output": str(tmp_path / "out"),
        "datasets": [
            {
                "name": "v",
                "source": "x.csv",
                "from": "webvid",
                "media": "video",
                "check": {"template": "plain"},
            }
        ],
    }
    path = tmp_path / "plan.yaml"
    for check, message in (
        ({"template": "plain"}, "datasets[0].check.tokenizer"),
        ({"template": "chatml", "tokenizer": "t", "seq_length": 8}, "expected one of plain, llama_2"),
        ({"template": "plain", "tokenizer": "t", "seq_length": 8}, "datasets[0].check.num_frames"),
        ({"template": "plain", "tokenizer": "t", "seq_length": 8, "num_frames": 4, "typo": 1}, "unknown key"),
        # `data check`'s own rules apply at plan load, not first when the check runs
        (
            {"template": "plain", "tokenizer": "t", "seq_length": 8, "num_frames": 4, "crop_size": 10},
            "give no patches",
        ),
    ):
        plan["datasets"][0]["check"] = check  # type: ignore[index]
        path.write_text(yaml.safe_dump(plan))
        proc = neva("plan", "check", str(path))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
