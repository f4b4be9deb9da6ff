"""`neva-prep launch submitit` / `submit_plan`: the sample plan as submitit Jobs on the real single-node Slurm
of the test suite (tests/slurm_cluster.py) and on submitit's local and debug executors, with the same
outputs as `launch local` (also a plan with `energon:` and `check:` blocks); a bad-input shard fails once
and stops its merge; a re-submit skips what is complete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from submitit.core.utils import DelayedSubmission

from blocks_plan import block_outputs, write_blocks_plan
from conftest import neva
from neva_prep.errors import BadInput
from neva_prep.launch.local import tasks
from neva_prep.launch.plan import load_plan
from neva_prep.launch.slurm import job_states
from neva_prep.launch.submitit import Command, slurm_parameters, submit_plan, time_minutes
from neva_prep.sample import write_sample
from slurm_cluster import SlurmCluster

SLURM = {"cpus_per_task": 1, "time": "00:10:00"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample (tiny LLaMA, WebVid CSV with 3 shards, LLaVA JSON with 2); returns its plan."""
    return write_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def reference(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of `launch local` on the sample plan: what every submitit run must reproduce."""
    out = tmp_path_factory.mktemp("launch-local")
    plan = write_plan(sample, out)
    done = neva("launch", "local", str(plan))
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "output"


def write_plan(
    sample: Path,
    tmp: Path,
    *,
    model: bool = True,
    datasets: list[dict[str, Any]] | None = None,
    slurm: dict[str, Any] | None = None,
) -> Path:
    """The sample plan writing to `tmp/output`, optionally cut down or with other Slurm options."""
    plan = yaml.safe_load(sample.read_text())
    plan["output"] = str(tmp / "output")
    if not model:
        del plan["model"]
    if datasets is not None:
        plan["datasets"] = datasets
    plan["slurm"] = slurm or SLURM
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def dataset(plan: Path, name: str, **changes: Any) -> dict[str, Any]:
    (ds,) = [d for d in yaml.safe_load(plan.read_text())["datasets"] if d["name"] == name]
    return {**ds, **changes}


def outputs(root: Path) -> dict[str, bytes]:
    """What must be byte-identical to `launch local`: merged JSON, rejects, .nemo, tokenizer."""
    files = [*root.glob("datasets/*/*.json"), *root.glob("datasets/*/rejects.jsonl")]
    files = [f for f in files if f.name != "stats.json"]
    files += [*root.glob("checkpoints/*"), *root.glob("tokenizers/*")]
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(files)}


def ends(stdout: str) -> dict[str, tuple[str, str]]:
    """`[LABEL] job ID: VERDICT` progress lines -> {LABEL: (ID, VERDICT)}."""
    found = re.findall(r"^\[(.+?)\] job (\S+): (.*)$", stdout, re.M)
    return {label: (job, verdict) for label, job, verdict in found}


# --- the mapping (pure) ------------------------------------------------------------------------------------


def test_slurm_time_limits_become_minutes() -> None:
    cases = {"30": 30, "30:01": 31, "04:00:00": 240, "1-00:00:00": 1440, "2-12": 3600, "0-1:30": 90}
    assert {value: time_minutes(value) for value in cases} == cases
    for bad in ("UNLIMITED", "4h", "1:2:3:4", "-5", ""):
        with pytest.raises(BadInput, match=r"slurm\.time"):
            time_minutes(bad)


def test_plan_slurm_options_map_onto_submitit_parameters(sample: Path, tmp_path: Path) -> None:
    options = {
        "partition": "gpu",
        "account": "proj",
        "time": "1-00:00:00",
        "cpus_per_task": 8,
        "mem": "64G",
        "container_image": "nvcr.io#org/neva-prep:0.1",
        "container_mounts": "/data:/data",
        "setup": ["module load cuda"],
        "extra_sbatch": ["#SBATCH --qos=high", "--exclusive", "--comment 'two words'"],
    }
    plan = load_plan(str(write_plan(sample, tmp_path, slurm=options)))
    assert slurm_parameters(plan, "neva-sample-model", gpus=2) == {
        "job_name": "neva-sample-model",
        "time": 1440,
        "cpus_per_task": 8,
        "setup": ["module load cuda"],
        "additional_parameters": {"qos": "high", "exclusive": True, "comment": "two words"},
        "partition": "gpu",
        "account": "proj",
        "mem": "64G",
        "gres": "gpu:2",
        "srun_args": ["--container-image=nvcr.io#org/neva-prep:0.1", "--container-mounts=/data:/data"],
    }
    for bad, match in (
        ({"extra_sbatch": ["-q high"]}, "long options"),
        ({"partition": "a\nrm -rf /"}, "single line"),
    ):
        plan = load_plan(str(write_plan(sample, tmp_path, slurm={**SLURM, **bad})))
        with pytest.raises(BadInput, match=match):
            slurm_parameters(plan, "x")


# --- on the test Slurm -------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_sample_plan_on_slurm_equals_launch_local(
    slurm: SlurmCluster, sample: Path, reference: Path, tmp_path: Path
) -> None:
    options = {
        **SLURM,
        "partition": "debug",
        "mem": "512M",
        "array_parallelism": 2,
        "extra_sbatch": ["#SBATCH --comment=neva-prep"],
    }
    plan = write_plan(sample, tmp_path, slurm=options)
    folder = tmp_path / "submitit"
    done = neva("launch", "submitit", str(plan), "--folder", str(folder), "--cluster", "slurm", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + slurm.logs()
    jobs = ends(done.stdout)
    labels = "model,webvid 1/3,webvid 2/3,webvid 3/3,webvid merge,llava 1/2,llava 2/2,llava merge"
    assert {label: verdict for label, (_, verdict) in jobs.items()} == dict.fromkeys(labels.split(","), "ok")
    assert outputs(tmp_path / "output") == outputs(reference)

    # One array per dataset, at most 2 tasks at once; each merge waits for all of its array (afterok).
    array = jobs["webvid 1/3"][0].split("_")[0]
    assert [jobs[f"webvid {i}/3"][0] for i in (1, 2, 3)] == [f"{array}_{i}" for i in range(3)]
    script = (folder / f"{array}_submission.sh").read_text()
    for line in ("--array=0-2%2", "--partition=debug", "--mem=512M", "--comment=neva-prep", "--time=10"):
        assert f"#SBATCH {line}\n" in script
    merge = (folder / f"{jobs['webvid merge'][0]}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{array}\n" in merge
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in merge

    # Nothing is pickled but the command: the plan's argv for that shard.
    pickled = DelayedSubmission.load(folder / f"{array}_1_submitted.pkl")
    first, _ = tasks(load_plan(str(plan)))
    (shard,) = [t for t in first if t.label == "webvid 2/3"]
    assert pickled.function == Command(tuple(shard.argv))
    assert shard.argv[:3] == ["neva-prep", "data", "convert"] and shard.argv[-2:] == ["--shard-index", "1"]


@pytest.mark.slurm
def test_bad_input_shard_on_slurm_fails_once_and_cancels_its_merge(
    slurm: SlurmCluster, sample: Path, tmp_path: Path
) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("not,the,webvid,columns\n1,2,3,4\n")
    plan = write_plan(
        sample, tmp_path, model=False, datasets=[dataset(sample, "webvid", source=str(bad_csv), shards=2)]
    )
    done = neva("launch", "submitit", str(plan), "--folder", str(tmp_path / "submitit"), "--wait")
    assert done.returncode == 2, done.stdout + done.stderr
    jobs = ends(done.stdout)
    for i in (1, 2):
        verdict = jobs[f"webvid {i}/2"][1]
        assert verdict.startswith("FAILED (exit 2) bad input, not retried: ") and str(bad_csv) in verdict
    assert jobs["webvid merge"][1].startswith("FAILED (exit 1): no result: CANCELLED")
    array = jobs["webvid 1/2"][0].split("_")[0]
    tasks_ = job_states(array)
    assert [t.job_id for t in tasks_] == [f"{array}_0", f"{array}_1"]
    assert all(t.state == "FAILED" and t.restarts == 0 for t in tasks_)  # no requeue, no retry
    assert not (tmp_path / "output" / "datasets" / "webvid" / "webvid.json").exists()


@pytest.mark.slurm
def test_resubmit_on_slurm_skips_what_is_complete(
    slurm: SlurmCluster, sample: Path, reference: Path, tmp_path: Path
) -> None:
    stamp = tmp_path / "failed-once"
    # Shard 2 of 3 dies the first time, before its job's Python starts (a node problem, say).
    fail_once = f'if [ "${{SLURM_ARRAY_TASK_ID:-}}" = 1 ] && mkdir {stamp} 2>/dev/null; then exit 1; fi'
    plan = write_plan(
        sample, tmp_path, datasets=[dataset(sample, "webvid")], slurm={**SLURM, "setup": [fail_once]}
    )
    argv = ("launch", "submitit", str(plan), "--folder", str(tmp_path / "submitit"), "--wait")
    first = neva(*argv)
    assert first.returncode == 1, first.stdout + first.stderr
    jobs = ends(first.stdout)
    assert jobs["model"][1] == jobs["webvid 1/3"][1] == jobs["webvid 3/3"][1] == "ok"
    assert jobs["webvid 2/3"][1].startswith("FAILED (exit 1): no result: FAILED")
    assert jobs["webvid merge"][1].startswith("FAILED (exit 1): no result: CANCELLED")

    again = neva(*argv)
    assert again.returncode == 0, again.stdout + again.stderr
    jobs = ends(again.stdout)
    assert set(verdict for _, verdict in jobs.values()) == {"ok"}
    log = {
        label: Path(tmp_path / "submitit" / f"{job}_0_log.out").read_text()
        for label, (job, _) in jobs.items()
    }
    assert "already complete" in log["model"]
    assert "skipped" in log["webvid 1/3"] and "skipped" in log["webvid 3/3"]
    assert "skipped" not in log["webvid 2/3"]
    got = outputs(tmp_path / "output")
    want = outputs(reference)
    assert got == {k: v for k, v in want.items() if "llava" not in k}


# --- submitit's local and debug executors ------------------------------------------------------------------


def test_local_from_python_equals_launch_local(sample: Path, reference: Path, tmp_path: Path) -> None:
    plan = write_plan(sample, tmp_path)
    jobs = submit_plan(str(plan), str(tmp_path / "submitit"), cluster="local", wait=True)
    results = [job.result() for job in jobs]  # each command's stdout; raises if one failed
    assert len(jobs) == 8
    assert sum("merged" in r for r in results) == 2
    assert outputs(tmp_path / "output") == outputs(reference)


def test_bad_input_shard_on_local_holds_back_its_merge(sample: Path, tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("not,the,webvid,columns\n1,2,3,4\n")
    ds = dataset(sample, "webvid", source=str(bad_csv), shards=2)
    plan = write_plan(sample, tmp_path, model=False, datasets=[ds])
    folder = str(tmp_path / "submitit")
    done = neva("launch", "submitit", str(plan), "--folder", folder, "--cluster", "local", "--wait")
    assert done.returncode == 2, done.stdout + done.stderr
    jobs = ends(done.stdout)
    assert sorted(jobs) == ["webvid 1/2", "webvid 2/2"]
    assert all(v.startswith("FAILED (exit 2) bad input, not retried: ") for _, v in jobs.values())
    assert "skipped: webvid merge (a shard failed)" in done.stdout.splitlines()


def test_debug_runs_the_plan_in_this_process(sample: Path, reference: Path, tmp_path: Path) -> None:
    plan = write_plan(sample, tmp_path, model=False, datasets=[dataset(sample, "llava")])
    folder = str(tmp_path / "submitit")
    done = neva("launch", "submitit", str(plan), "--folder", folder, "--cluster", "debug")  # no --wait
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(ends(done.stdout)) == ["llava 1/2", "llava 2/2", "llava merge"]
    want = {k: v for k, v in outputs(reference).items() if "llava" in k}
    assert outputs(tmp_path / "output") == want


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_the_energon_and_check_blocks_run_after_the_merge(
    cluster: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every launcher runs a dataset's `energon:` and `check:`: submitit's local cluster in order, Slurm's
    groups with afterok; the outputs are `launch local`'s."""
    if cluster == "slurm":
        request.getfixturevalue("slurm")
    reference = tmp_path / "ref"
    reference.mkdir()
    plan = write_blocks_plan(reference)
    done = neva("launch", "local", str(plan), "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    data = yaml.safe_load(plan.read_text())
    data["output"] = str(tmp_path / "submitit-output")
    data["slurm"] = SLURM
    plan.write_text(yaml.safe_dump(data))
    folder = tmp_path / "submitit"
    run = neva("launch", "submitit", str(plan), "--folder", str(folder), "--cluster", cluster, "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = ends(run.stdout)
    assert sorted(jobs) == [
        "caps 1/2", "caps 2/2", "caps check 1/2", "caps check 2/2", "caps check merge", "caps energon 1/2",
        "caps energon 2/2", "caps energon index", "caps merge",
    ]  # fmt: skip
    assert {verdict for _, verdict in jobs.values()} == {"ok"}
    assert block_outputs(tmp_path / "submitit-output") == block_outputs(reference / "output")
    if cluster == "slurm":  # each group after the one it reads; an array's id covers its tasks
        job = {label: job_id.split("_")[0] for label, (job_id, _) in jobs.items()}
        for label, after in (
            ("caps merge", "caps 1/2"),
            ("caps energon 1/2", "caps merge"),
            ("caps energon index", "caps energon 2/2"),
            ("caps check 2/2", "caps merge"),
            ("caps check merge", "caps check 1/2"),
        ):
            script = (folder / f"{job[label]}_submission.sh").read_text()
            assert f"#SBATCH --dependency=afterok:{job[after]}\n" in script, label
