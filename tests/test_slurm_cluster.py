"""`neva-prep launch slurm --submit` on a real single-node Slurm cluster (tests/slurm_cluster.py).

The sample plan runs as Slurm jobs and gives the same outputs as running the steps by hand; a plan with
`energon:` and `check:` blocks gives `launch local`'s outputs; a shard that exits 2 fails once and is
reported; a shard killed while it runs is re-run by submitting again, and the merge result is unchanged."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from blocks_plan import block_outputs, write_blocks_plan
from conftest import neva
from neva_prep.launch.slurm import job_states, wait
from neva_prep.sample import write_sample
from slurm_cluster import SlurmCluster, start

pytestmark = pytest.mark.slurm
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample (tiny LLaMA, WebVid CSV, LLaVA JSON); its plan is rewritten per test."""
    root = tmp_path_factory.mktemp("sample")
    write_sample(root)
    return root


def slurm_plan(
    sample: Path, tmp: Path, *, model: bool, dataset: dict[str, Any], setup: tuple[str, ...] = ()
) -> Path:
    """The sample plan cut down to the model step (gpus: 0) and one dataset, run from the test's venv."""
    plan = yaml.safe_load((sample / "plan.yaml").read_text())
    plan["output"] = str(tmp / "output")
    if not model:
        del plan["model"]
    plan["datasets"] = [dataset]
    plan["slurm"] = {
        "cpus_per_task": 1,
        "time": "00:10:00",
        "log_dir": str(tmp / "logs"),
        "setup": [f"export PATH={VENV_BIN}:$PATH", *setup],
    }
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def webvid(sample: Path, shards: int = 3, source: str | None = None) -> dict[str, Any]:
    source = source or str(sample / "input" / "data" / "webvid.csv")
    return {"name": "webvid", "source": source, "from": "webvid", "media": "video", "shards": shards}


def by_hand(dataset: dict[str, Any], out: Path) -> bytes:
    """Run the dataset's shards and merge as a user would without a scheduler; return the merged JSON."""
    dst: Path = out / "datasets" / dataset["name"]
    for i in range(dataset["shards"]):
        done = neva(
            "data", "convert", dataset["source"], str(dst), "--from", dataset["from"], "--media",
            dataset["media"], "--num-shards", str(dataset["shards"]), "--shard-index", str(i),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    done = neva("data", "merge", str(dst), "--name", dataset["name"])
    assert done.returncode == 0, done.stderr
    return (dst / f"{dataset['name']}.json").read_bytes()


@pytest.fixture(scope="module")
def webvid_by_hand(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The sample WebVid dataset (3 shards) converted and merged by hand: the reference."""
    return by_hand(webvid(sample), tmp_path_factory.mktemp("by-hand"))


def job_ids(stdout: str) -> dict[str, str]:
    """`submitted NAME: job ID` lines of `launch slurm --submit` -> {NAME: ID}."""
    ids = {}
    for line in stdout.splitlines():
        if line.startswith("submitted "):
            name, _, rest = line[len("submitted ") :].partition(": job ")
            ids[name] = rest.strip()
    return ids


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_plan_on_slurm_equals_running_the_steps_by_hand(
    slurm: SlurmCluster, sample: Path, webvid_by_hand: bytes, tmp_path: Path
) -> None:
    dataset = webvid(sample)
    plan = slurm_plan(sample, tmp_path, model=True, dataset=dataset)
    done = neva("launch", "slurm", str(plan), "--out", str(tmp_path / "slurm"), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr + slurm.logs()
    ids = job_ids(done.stdout)
    assert set(ids) == {"neva-sample-model", "neva-sample-webvid", "neva-sample-webvid-merge"}
    lines = done.stdout.splitlines()
    for i in range(3):  # one array task per shard, each completed
        assert f"neva-sample-webvid {ids['neva-sample-webvid']}_{i}: COMPLETED" in lines
    assert f"neva-sample-webvid-merge {ids['neva-sample-webvid-merge']}: COMPLETED" in lines

    # The same steps by hand, into another output root: identical bytes.
    ref = tmp_path / "by-hand"
    assert (tmp_path / "output" / "datasets" / "webvid" / "webvid.json").read_bytes() == webvid_by_hand
    m = yaml.safe_load(plan.read_text())["model"]
    hand = neva("model", m["source"], str(ref), "--name", m["name"], "--precision", "16", "--layout", "mcore")
    assert hand.returncode == 0, hand.stderr
    for sub in ("checkpoints", "tokenizers"):
        assert files_under(tmp_path / "output" / sub) == files_under(ref / sub)
        assert files_under(ref / sub)


def test_plan_with_energon_and_check_blocks_on_slurm_equals_launch_local(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Each block's array waits for the merge, its finalize / --merge for the array (afterok): all complete,
    and the merge, the Energon export and the check report are byte for byte `launch local`'s."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    plan = write_blocks_plan(inputs)
    local = neva("launch", "local", str(plan), "--workers", "2")
    assert local.returncode == 0, local.stdout + local.stderr
    data = yaml.safe_load(plan.read_text())
    data["output"] = str(tmp_path / "output")
    data["slurm"] = {
        "cpus_per_task": 1,
        "time": "00:10:00",
        "log_dir": str(tmp_path / "logs"),
        "setup": [f"export PATH={VENV_BIN}:$PATH"],
    }
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    done = neva("launch", "slurm", str(plan), "--out", str(tmp_path / "slurm"), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr + slurm.logs()
    ids = job_ids(done.stdout)
    prefix = "neva-blocks-caps"
    steps = ("", "-merge", "-energon", "-energon-index", "-check", "-check-merge")
    assert set(ids) == {prefix + step for step in steps}
    lines = done.stdout.splitlines()
    for array in ("", "-energon", "-check"):  # 2 array tasks each, every one completed
        assert [f"{prefix}{array} {ids[prefix + array]}_{i}: COMPLETED" in lines for i in (0, 1)] == [
            True
        ] * 2
    for one in ("-merge", "-energon-index", "-check-merge"):
        assert f"{prefix}{one} {ids[prefix + one]}: COMPLETED" in lines
    merge_log = (tmp_path / "logs" / f"{prefix}-check-merge-{ids[prefix + '-check-merge']}.out").read_text()
    assert "ready to train: 5 records, 0 with findings" in merge_log
    assert block_outputs(tmp_path / "output") == block_outputs(inputs / "output")


def test_bad_input_shard_fails_once_and_is_reported(
    slurm: SlurmCluster, sample: Path, tmp_path: Path
) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("not,the,webvid,columns\n1,2,3,4\n")
    dataset = webvid(sample, shards=2, source=str(bad_csv))
    plan = slurm_plan(sample, tmp_path, model=False, dataset=dataset)
    done = neva("launch", "slurm", str(plan), "--out", str(tmp_path / "slurm"), "--wait", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and "bad input, not retried" in error[0]
    ids = job_ids(done.stdout)
    tasks = {t.job_id: t for t in job_states(ids["neva-sample-webvid"])}
    assert sorted(tasks) == [f"{ids['neva-sample-webvid']}_{i}" for i in range(2)]
    assert all(t.state == "FAILED" and t.exit_code == 2 and t.restarts == 0 for t in tasks.values())
    (merge,) = job_states(ids["neva-sample-webvid-merge"])
    assert merge.state == "CANCELLED"  # --kill-on-invalid-dep: never left pending
    assert not (tmp_path / "output" / "datasets" / "webvid" / "webvid.json").exists()
    log = (tmp_path / "logs" / f"neva-sample-webvid-{ids['neva-sample-webvid']}_0.out").read_text()
    assert "error" in log and str(bad_csv) in log  # the one-line reason is in the task's log


def test_a_job_that_can_never_start_fails_instead_of_waiting_for_ever(
    slurm: SlurmCluster, sample: Path, tmp_path: Path
) -> None:
    plan = slurm_plan(sample, tmp_path, model=False, dataset=webvid(sample, shards=2))
    data = yaml.safe_load(plan.read_text())
    data["slurm"]["cpus_per_task"] = 999  # more than any node has: pends with reason PartitionConfig
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    start = time.monotonic()
    done = neva(
        "launch", "slurm", str(plan), "--out", str(tmp_path / "slurm"), "--wait", cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - start < 60
    ids = job_ids(done.stdout)
    array = ids["neva-sample-webvid"]
    assert (
        f"neva-sample-webvid {array}_0-1%2: PENDING (PartitionConfig)" in done.stdout
    )  # reported as it waits
    (line,) = done.stderr.splitlines()
    assert f"neva-sample-webvid {array}" in line and "reason PartitionConfig" in line and "cpu=999" in line
    assert "Traceback" not in done.stderr
    # nothing is left pending for ever: the array is cancelled, its merge then by --kill-on-invalid-dep
    deadline = time.monotonic() + 60
    while True:
        jobs = [*job_states(array), *job_states(ids["neva-sample-webvid-merge"])]
        if all(t.state == "CANCELLED" for t in jobs):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.5)

    # memory no node has: sbatch itself refuses; also bad input, not "retry may help"
    data["slurm"] = {**data["slurm"], "cpus_per_task": 1, "mem": "100000000M"}
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    done = neva("launch", "slurm", str(plan), "--out", str(tmp_path / "slurm"), "--submit", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert "Requested node configuration is not available" in line and "slurm:" in line


def test_killed_shard_reruns_and_the_merge_is_unchanged(
    slurm: SlurmCluster, sample: Path, webvid_by_hand: bytes, tmp_path: Path
) -> None:
    dataset = webvid(sample)
    stamp = tmp_path / "slow-once"
    # Task 1 dawdles the first time it runs, so it can be killed while running.
    slow = f'if [ "${{SLURM_ARRAY_TASK_ID:-}}" = 1 ] && mkdir {stamp} 2>/dev/null; then sleep 120; fi'
    plan = slurm_plan(sample, tmp_path, model=False, dataset=dataset, setup=(slow,))
    out = tmp_path / "slurm"
    done = neva("launch", "slurm", str(plan), "--out", str(out), "--submit", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ids = job_ids(done.stdout)
    array = ids["neva-sample-webvid"]
    deadline = time.monotonic() + 60
    while not any(t.job_id == f"{array}_1" and t.state == "RUNNING" for t in job_states(array)):
        assert time.monotonic() < deadline, job_states(array)
        time.sleep(0.3)
    slurm.run("scancel", f"{array}_1")
    final = {t.job_id: t for t in wait([array, ids["neva-sample-webvid-merge"]], timeout=60, poll=0.5)}
    assert final[f"{array}_1"].state == "CANCELLED"
    assert final[ids["neva-sample-webvid-merge"]].state == "CANCELLED"
    assert not (tmp_path / "output" / "datasets" / "webvid" / "webvid.json").exists()

    # Submitting again re-runs what is missing: finished shards are skipped, the killed one runs.
    again = neva("launch", "slurm", str(plan), "--out", str(out), "--wait", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    new_array = job_ids(again.stdout)["neva-sample-webvid"]
    logs = {i: (tmp_path / "logs" / f"neva-sample-webvid-{new_array}_{i}.out").read_text() for i in range(3)}
    assert "skipped" in logs[0] and "skipped" in logs[2] and "skipped" not in logs[1]
    merged = (tmp_path / "output" / "datasets" / "webvid" / "webvid.json").read_bytes()
    assert merged == webvid_by_hand


def running(pid: str) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until init reaps it; it has no command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def test_daemons_left_by_a_dead_run_are_cleaned_up(slurm: SlurmCluster, tmp_path: Path) -> None:
    """A run killed before its teardown leaves daemons and state behind; the next start stops them by pid
    (leaving live runs, like this module's cluster, alone) and starts cleanly."""
    import subprocess

    dead_run = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import slurm_cluster as sc; "
        "c = sc.start(); print(c.root, *[p.pid for p in c.procs]); os._exit(0)"
    )
    tests_dir = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", dead_run, tests_dir], capture_output=True, text=True, check=True, timeout=120
    )
    root, *pids = out.stdout.split()
    assert all(running(pid) for pid in pids)  # orphaned daemons still running

    again = start()
    try:
        assert again.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split() == ["localhost", "idle"]
    finally:
        again.stop()
    assert not Path(root).exists()
    assert not any(running(pid) for pid in pids)
    assert slurm.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split() == ["localhost", "idle"]
