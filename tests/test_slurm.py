"""The Slurm rendering: golden files for the example plan, sbatch options, quoting that keeps hostile plan
values inert (checked by running the rendered scripts with bash), and bad plans refused with exit 2.

The scripts are submitted to a real cluster in test_slurm_cluster.py."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, neva
from neva_prep.errors import BadInput
from neva_prep.launch.plan import (
    Target,
    example_plan,
    merge_argv,
    model_argv,
    parse_plan,
    resolve,
    shard_argv,
)
from neva_prep.launch.slurm import array_parallelism, render, render_files

GOLDEN = REPO / "slurm"


def plan_of(**overrides: Any) -> Any:
    """A small valid plan, with top-level sections replaced by `overrides`."""
    data: dict[str, Any] = {
        "name": "neva",
        "output": "/data/out",
        "model": {"source": "/data/hf", "name": "tiny", "gpus": 0},
        "datasets": [
            {"name": "webvid", "source": "/data/w.csv", "from": "webvid", "media": "video", "shards": 3}
        ],
        "slurm": {"cpus_per_task": 1},
    }
    data.update(overrides)
    return parse_plan(data, "test-plan")


def sbatch_options(text: str) -> list[str]:
    """The `#SBATCH` options of a script, read the way sbatch reads them (shell-like words)."""
    opts = []
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            words = shlex.split(line[len("#SBATCH") :])
            assert len(words) == 1, line  # one option per line, nothing spilling over
            opts.append(words[0])
    return opts


def test_golden_files_match_the_example_plan(tmp_path: Path) -> None:
    """slurm/ is the rendering of `plan init`'s plan; regenerate with
    `neva-prep plan init > p.yaml && neva-prep launch slurm p.yaml --out slurm`."""
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    out = tmp_path / "slurm"
    done = neva("launch", "slurm", str(plan_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rendered = {p.name: p.read_text() for p in sorted(out.iterdir())}
    golden = {p.name: p.read_text() for p in sorted(GOLDEN.iterdir())}
    assert rendered == golden, "slurm/ drifted from `neva-prep launch slurm` of the example plan"
    assert all(os.stat(out / name).st_mode & stat.S_IXUSR for name in rendered)
    assert "submit with: bash" in done.stdout


def test_rendering_is_deterministic() -> None:
    plan = parse_plan(yaml.safe_load(example_plan()), "example")
    assert render_files(plan) == render_files(parse_plan(yaml.safe_load(example_plan()), "example"))


def test_sbatch_options_per_job() -> None:
    plan = plan_of(
        model={"source": "/hf", "name": "tiny", "gpus": 2},
        slurm={
            "partition": "gpu",
            "account": "proj",
            "time": "01:30:00",
            "mem": "8G",
            "cpus_per_task": 6,
            "log_dir": "/scratch/logs",
            "extra_sbatch": ["#SBATCH --qos=high", "--exclusive"],
        },
    )
    model, shards, merge = render(plan)
    common = {
        "--open-mode=append",
        "--partition=gpu",
        "--account=proj",
        "--time=01:30:00",
        "--mem=8G",
        "--cpus-per-task=6",
        "--qos=high",
        "--exclusive",
    }
    m, s, g = (set(sbatch_options(j.text)) for j in (model, shards, merge))
    assert common <= m and common <= s and common <= g
    assert "--gres=gpu:2" in m and not any(o.startswith("--gres") for o in s | g)
    assert {"--job-name=neva-model", "--output=/scratch/logs/%x-%j.out"} <= m
    assert {"--job-name=neva-webvid", "--array=0-2%3", "--output=/scratch/logs/%x-%A_%a.out"} <= s
    assert {"--job-name=neva-webvid-merge", "--kill-on-invalid-dep=yes"} <= g
    assert not any("requeue" in o for o in m | s | g)  # nothing may requeue a task that exited 2
    assert [j.after for j in (model, shards, merge)] == [None, None, shards.script]
    for job in (model, shards, merge):
        assert job.text.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in job.text


def test_no_gres_without_gpus_and_no_model_job_without_model() -> None:
    (model, *_) = render(plan_of())
    assert not any(o.startswith("--gres") for o in sbatch_options(model.text))
    assert [j.kind for j in render(plan_of(model=None))] == ["shards", "merge"]


def _ds(shards: int, parallelism: int | None) -> dict[str, Any]:
    ds: dict[str, Any] = {
        "name": "d",
        "source": "/s.csv",
        "from": "webvid",
        "media": "video",
        "shards": shards,
    }
    if parallelism is not None:
        ds["parallelism"] = parallelism
    return ds


@pytest.mark.parametrize(
    ("shards", "parallelism", "cap", "expected"),
    [(3, None, None, 3), (16, 8, None, 8), (16, None, 4, 4), (16, 2, 4, 2), (2, None, 8, 2)],
)
def test_array_parallelism(shards: int, parallelism: int | None, cap: int | None, expected: int) -> None:
    slurm = {"array_parallelism": cap} if cap else {}
    plan = plan_of(model=None, datasets=[_ds(shards, parallelism)], slurm=slurm)
    assert array_parallelism(plan, plan.datasets[0]) == expected
    assert f"--array=0-{shards - 1}%{expected}" in sbatch_options(render(plan)[0].text)


def test_container_image_goes_to_srun() -> None:
    plan = plan_of(slurm={"container_image": "nvcr.io#nvidia/nemo:24.05", "container_mounts": "/data:/data"})
    for job in render(plan):
        command = job.text.rstrip("\n").splitlines()[-1]
        words = shlex.split(command)
        assert words[:5] == [
            "srun",
            "--ntasks=1",
            "--cpus-per-task=4",
            "--container-image=nvcr.io#nvidia/nemo:24.05",
            "--container-mounts=/data:/data",
        ]
        assert words[5] == "neva-prep"


HOSTILE = "x; touch {d}/pwned-$(id -u) `touch {d}/pwned2` 'q\" # $HOME"


def _fake_bin(tmp: Path) -> Path:
    """`srun` that drops its options and runs the command, and `neva-prep` that records its argv as JSON."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "neva-prep").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['ARGV_LOG'], 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_hostile_plan_values_stay_inert(tmp_path: Path) -> None:
    """Plan values full of shell syntax reach `neva-prep` as the exact argv plan.py built, run nothing,
    and each `#SBATCH` line stays one option."""
    bad = HOSTILE.format(d=tmp_path)
    plan = plan_of(
        output=f"/out/{bad}",
        model={"source": bad, "name": bad, "gpus": 1, "tokens": [bad]},
        datasets=[{"name": "webvid", "source": bad, "from": "webvid", "media": "video", "media_root": bad}],
        slurm={
            "partition": bad,
            "account": bad,
            "mem": bad,
            "time": bad,
            "log_dir": f"{tmp_path}/logs {bad}",
            "container_mounts": bad,
        },
    )
    log = tmp_path / "argv.jsonl"
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", "ARGV_LOG": str(log)}
    for job in render(plan):
        options = sbatch_options(job.text)
        assert f"--partition={bad}" in options and f"--account={bad}" in options
        script = tmp_path / job.script
        script.write_text(job.text)
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    plan = resolve(plan, Target.SLURM)  # its `shards: auto` as the scripts run it
    ds = plan.datasets[0]
    recorded = [json.loads(line) for line in log.read_text().splitlines()]
    assert recorded == [model_argv(plan)[1:], shard_argv(plan, ds)[1:], merge_argv(plan, ds)[1:]]
    assert not list(tmp_path.glob("pwned*"))


@pytest.mark.parametrize(
    "section",
    [
        {"slurm": {"partition": "gpu\nrm -rf /"}},
        {"slurm": {"setup": ["ok", "a\rb"]}},
        {"slurm": {"extra_sbatch": ["--qos=x\ntouch /tmp/pwned"]}},
        {"model": {"source": "/hf\n", "name": "m"}},
    ],
)
def test_line_breaks_are_refused(section: dict[str, Any]) -> None:
    with pytest.raises(BadInput, match="single line"):
        render(plan_of(**section))


def test_bad_plan_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump(
            {
                "output": "/o",
                "datasets": [],
                "model": {"source": "/s", "name": "m"},
                "slurm": {"partition": "a\nb"},
            }
        )
    )
    out = tmp_path / "slurm"
    done = neva("launch", "slurm", str(plan_file), "--out", str(out))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "slurm.partition" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_submit_script_wires_each_merge_to_its_array(tmp_path: Path) -> None:
    """submit.sh run against an `sbatch` that records its arguments and hands out ids 100, 101, ..."""
    plan = plan_of(
        datasets=[
            {"name": "a", "source": "/a.csv", "from": "webvid", "media": "video", "shards": 2},
            {"name": "b", "source": "/b.json", "from": "llava", "media": "image", "shards": 1},
        ],
        slurm={"log_dir": "my logs"},
    )
    out = tmp_path / "slurm"
    out.mkdir()
    for name, text in render_files(plan).items():
        (out / name).write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/bash\nn=$(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0)\n'
        'echo "$*" >> "$SBATCH_LOG"\necho "$((100 + n));cluster"\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    sbatch_log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(sbatch_log)}
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        ["bash", str(out / "submit.sh")], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "neva-model 100",
        "neva-a 101",
        "neva-a-merge 102",
        "neva-b 103",
        "neva-b-merge 104",
    ]
    assert sbatch_log.read_text().splitlines() == [
        f"--parsable {out}/model.sbatch",
        f"--parsable {out}/data-a.sbatch",
        f"--parsable --dependency=afterok:101 {out}/merge-a.sbatch",
        f"--parsable {out}/data-b.sbatch",
        f"--parsable --dependency=afterok:103 {out}/merge-b.sbatch",
    ]
    assert (work / "my logs").is_dir()  # sbatch does not create the --output directory; submit.sh does
