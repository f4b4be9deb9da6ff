"""The rendered Kubernetes Jobs, run: no cluster can run here, so each pod's containers are replayed as the
kubelet would start them (command + args, the rendered env with `JOB_COMPLETION_INDEX` resolved from its
fieldRef, a fresh working directory, every volume's mount path mapped to a folder on this machine), in the
order Kubernetes runs them: every pod of every Job at once, a gated pod's main container once its init
container (`data wait`) succeeded. The outputs must be byte for byte those of `launch local` on the same
inputs, no container may fail, and no wait may end before the step it waits for.

The waits keep the rendered 10 s poll (the plan has no option for it), so a chain of gated steps takes a
few polls: the plan with both blocks (merge -> export/check -> finalize/check --merge) runs in about 40 s."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blocks_plan import block_outputs, write_blocks_plan
from conftest import neva

MOUNT = "/data"  # where the plan says the PVC is mounted in every pod
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
COMPONENT, DATASET = "app.kubernetes.io/component", "neva-prep/dataset"
TIMEOUT = 300


class Pod:
    """One pod of a rendered Job: its volumes mapped to folders here, its containers runnable."""

    def __init__(self, job: dict[str, Any], volumes: dict[str, Path], scratch: Path, index: int | None):
        self.job = job
        self.spec = job["spec"]["template"]["spec"]
        self.index = index
        self.name = f"{job['metadata']['name']}-{'x' if index is None else index}"
        self.logs = scratch / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.paths: dict[str, Path] = {}  # mount path -> folder here
        by_name = {v["name"]: v for v in self.spec["volumes"]}
        for c in self.spec["containers"] + self.spec.get("initContainers", []):
            for m in c["volumeMounts"]:
                volume = by_name[m["name"]]
                if "emptyDir" in volume:  # a fresh emptyDir per pod
                    folder = scratch / f"{self.name}-{m['name']}"
                    folder.mkdir(parents=True, exist_ok=True)
                else:
                    folder = volumes[volume["persistentVolumeClaim"]["claimName"]]
                assert self.paths.setdefault(m["mountPath"], folder) == folder
        self.workdir = scratch / f"workdir-{self.name}"  # the image's WORKDIR stand-in
        self.workdir.mkdir(parents=True)

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.job["metadata"]["labels"]
        return labels

    def map(self, value: str) -> str:
        """A path inside the pod -> the folder here that its volume is mapped to."""
        for mount, folder in self.paths.items():
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount) :]
        return value

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"]}  # nothing else from this machine's environment
        assert "envFrom" not in container  # the plan names no Secret
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = self.map(e["value"])
            else:
                assert e["valueFrom"] == {"fieldRef": {"fieldPath": INDEX_FIELD}}
                assert self.index is not None, "only Indexed Jobs have a completion index"
                env[e["name"]] = str(self.index)
        return env

    def start(self, container: dict[str, Any]) -> Container:
        """Start `container` as the kubelet would; its stdout and stderr go to files under scratch/logs."""
        assert container["command"] == ["neva-prep"]
        argv = [sys.executable, "-m", "neva_prep.cli", *(self.map(a) for a in container["args"])]
        cwd = self.map(container["workingDir"]) if "workingDir" in container else self.workdir
        out, err = (self.logs / f"{self.name}-{container['name']}.{s}" for s in ("out", "err"))
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(argv, env=self.env(container), cwd=cwd, stdout=stdout, stderr=stderr)
        return Container(self, container, proc, out, err)

    def run(self, container: dict[str, Any]) -> str:
        ran = self.start(container)
        ran.proc.wait(timeout=TIMEOUT)
        assert ran.proc.returncode == 0, ran.failure()
        return ran.stdout()


@dataclass
class Container:
    """A started container: its process and log files; `ended` is the replay loop's pass that saw it end."""

    pod: Pod
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ended: int | None = None

    def stdout(self) -> str:
        return self.out.read_text()

    def failure(self) -> str:
        return f"{self.pod.name} {self.spec['name']} {self.spec['args']} exit {self.proc.returncode}: " + (
            self.err.read_text()
        )


@dataclass
class Replay:
    """Every container the replay ran, per pod: `init` (the `data wait`, gated pods only) and `main`."""

    init: dict[str, Container] = field(default_factory=dict)
    main: dict[str, Container] = field(default_factory=dict)

    def mains(self, job: str) -> list[Container]:
        return [c for c in self.main.values() if c.pod.job["metadata"]["name"] == job]


def first_line(ran: Container, deadline: float) -> str:
    """The first line a container printed (the wait's first poll), waiting for it."""
    while "\n" not in (text := ran.stdout()):
        assert ran.proc.poll() is None, ran.failure()
        assert time.monotonic() < deadline, f"{ran.pod.name}: no first poll"
        time.sleep(0.05)
    return text.splitlines()[0]


def replay(jobs: dict[str, dict[str, Any]], volumes: dict[str, Path], scratch: Path) -> Replay:
    """Run every pod of every Job at once, as Kubernetes would: an Indexed Job's pods, each with its
    completion index, and a gated pod's main container once its init container exited 0. The init
    containers start first and poll once before anything else starts (one of the orders Kubernetes may
    take), so each of them shows it waited. A failed container fails the replay."""
    done = Replay()
    pods = []
    for job in jobs.values():
        spec = job["spec"]
        if spec.get("completionMode") == "Indexed":
            assert spec["parallelism"] == spec["completions"]  # all at once, as replayed
            pods += [Pod(job, volumes, scratch, i) for i in range(spec["completions"])]
        else:
            assert spec["completions"] == spec["parallelism"] == 1
            pods.append(Pod(job, volumes, scratch, None))
    deadline = time.monotonic() + TIMEOUT
    for pod in pods:
        if "initContainers" in pod.spec:
            (init,) = pod.spec["initContainers"]
            assert init["args"][:2] == ["data", "wait"]
            done.init[pod.name] = pod.start(init)
    for ran in done.init.values():
        assert first_line(ran, deadline).startswith("0 of "), ran.stdout()  # it waits: nothing finished yet
    for pod in pods:
        if "initContainers" not in pod.spec:
            (main,) = pod.spec["containers"]
            done.main[pod.name] = pod.start(main)
    passes = 0
    while any(c.ended is None for c in [*done.init.values(), *done.main.values()]):
        passes += 1
        assert time.monotonic() < deadline, "the replay did not finish"
        for name, ran in [*done.init.items(), *done.main.items()]:
            if ran.ended is not None or ran.proc.poll() is None:
                continue
            ran.ended = passes
            assert ran.proc.returncode == 0, ran.failure()
            if name in done.init and name not in done.main:
                (main,) = ran.pod.spec["containers"]
                done.main[name] = ran.pod.start(main)
        time.sleep(0.2)
    return done


def assert_waits_ended_after_their_steps(jobs: dict[str, dict[str, Any]], ran: Replay) -> None:
    """No init container ended before every pod of the step it waits for (same dataset, `--for`) ended."""
    for wait in ran.init.values():
        args = wait.spec["args"]
        stage = args[args.index("--for") + 1] if "--for" in args else "shards"
        dataset = wait.pod.labels[DATASET]
        (awaited,) = [
            name
            for name, job in jobs.items()
            if job["metadata"]["labels"].get(DATASET) == dataset
            and job["metadata"]["labels"][COMPONENT] == stage  # `--for X` waits for the Job of component X
        ]
        steps = ran.mains(awaited)
        assert steps and wait.ended is not None
        assert all(s.ended is not None and s.ended <= wait.ended for s in steps), (
            f"{wait.pod.name} ended early"
        )


def render(plan: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """`launch k8s --out` for `plan`: the rendered Jobs by name."""
    plan_file = tmp_path / "k8s-plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    rendered = tmp_path / "manifests"
    r = neva("launch", "k8s", str(plan_file), "--out", str(rendered))
    assert r.returncode == 0, r.stderr
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(rendered.glob("*.yaml"))}


def k8s_plan(plan_file: Path, root: Path) -> dict[str, Any]:
    """The plan with its files on the PVC (mounted at /data) and its output there too."""
    text = plan_file.read_text(encoding="utf-8").replace(str(root), MOUNT)
    plan: dict[str, Any] = yaml.safe_load(text)
    plan["output"] = f"{MOUNT}/k8s-output"
    plan["data_image"] = "neva-prep-data:test"
    plan["kubernetes"] = {
        "volumes": [{"name": "data", "mount_path": MOUNT, "persistent_volume_claim": "neva-data"}],
        "wait_timeout_seconds": 600,
    }
    return plan


def test_replayed_pods_write_what_launch_local_writes(tmp_path: Path) -> None:
    pvc = tmp_path / "pvc"  # what the PersistentVolumeClaim holds
    sample_plan = Path(neva("sample", str(pvc)).stdout.strip())
    local = neva("launch", "local", str(sample_plan), "--workers", "2")
    assert local.returncode == 0, local.stdout + local.stderr

    jobs = render(k8s_plan(sample_plan, pvc), tmp_path)
    assert sorted(jobs) == [
        "neva-sample-llava",
        "neva-sample-llava-merge",
        "neva-sample-model",
        "neva-sample-webvid",
        "neva-sample-webvid-merge",
    ]
    for name in ("neva-sample-webvid", "neva-sample-llava"):
        assert jobs[name]["spec"]["completionMode"] == "Indexed"
        (container,) = jobs[name]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "neva-prep-data:test"
        assert "--shard-index" not in container["args"]  # the index comes from JOB_COMPLETION_INDEX
    scratch = tmp_path / "node"
    ran = replay(jobs, {"neva-data": pvc}, scratch)
    assert sorted(ran.init) == ["neva-sample-llava-merge-x", "neva-sample-webvid-merge-x"]
    assert_waits_ended_after_their_steps(jobs, ran)
    for name in ("neva-sample-webvid", "neva-sample-llava"):
        n = jobs[name]["spec"]["completions"]
        assert sorted(c.pod.index for c in ran.mains(name)) == list(range(n))  # type: ignore[type-var]
        assert all(f"shard {c.pod.index} of {n}" in c.stdout() for c in ran.mains(name))
    for wait in ran.init.values():
        assert f"shard(s) finished under {pvc}/k8s-output/datasets/" in wait.stdout()

    # byte for byte what `launch local` wrote from the same files
    local_out, k8s_out = pvc / "output", pvc / "k8s-output"
    for rel in (
        "checkpoints/llama-tiny.nemo",
        "tokenizers/tokenizer_neva.model",
        "datasets/webvid/webvid.json",
        "datasets/llava/llava.json",
    ):
        assert (k8s_out / rel).read_bytes() == (local_out / rel).read_bytes(), rel
    for ds in ("webvid", "llava"):  # rejects name their source file: as the pod saw it
        rejects = (k8s_out / f"datasets/{ds}/rejects.jsonl").read_text()
        assert (
            rejects.replace(f'"{MOUNT}/', f'"{pvc}/')
            == (local_out / f"datasets/{ds}/rejects.jsonl").read_text()
        )
        assert rejects.count("\n") == 1
    # nothing was written outside the volume but the pods' scratch folders
    assert all(not any(p.iterdir()) for p in scratch.glob("workdir-*"))


def test_replayed_energon_and_check_pods_write_what_launch_local_writes(tmp_path: Path) -> None:
    """A dataset with both blocks: its export and check pods wait for the merge, the export's finalize for
    the export shards, the check's --merge for the check shards; the results are `launch local`'s."""
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    plan_file = write_blocks_plan(pvc)
    local = neva("launch", "local", str(plan_file), "--workers", "2")
    assert local.returncode == 0, local.stdout + local.stderr

    jobs = render(k8s_plan(plan_file, pvc), tmp_path)
    gated = {
        "neva-blocks-caps-merge": "shards",
        "neva-blocks-caps-energon": "merge",
        "neva-blocks-caps-energon-index": "energon",
        "neva-blocks-caps-check": "merge",
        "neva-blocks-caps-check-merge": "check",
    }
    assert sorted(jobs) == sorted([*gated, "neva-blocks-caps"])
    for name, stage in gated.items():
        (init,) = jobs[name]["spec"]["template"]["spec"]["initContainers"]
        args = init["args"]
        assert (args[args.index("--for") + 1] if "--for" in args else "shards") == stage
        assert args[-2:] == ["--timeout", "600"]
    scratch = tmp_path / "node"
    started = time.monotonic()
    ran = replay(jobs, {"neva-data": pvc}, scratch)
    seconds = time.monotonic() - started
    assert len(ran.init) == 7 and len(ran.main) == 9  # 2 shards, merge, 2+1 export, 2+1 check
    assert_waits_ended_after_their_steps(jobs, ran)
    assert seconds < 120, f"the replay took {seconds:.0f}s"
    for name in ("neva-blocks-caps-energon", "neva-blocks-caps-check"):
        assert sorted(f"shard {c.pod.index} of 2" in c.stdout() for c in ran.mains(name)) == [True, True]
    (check_merge,) = ran.mains("neva-blocks-caps-check-merge")
    assert "ready to train: 5 records, 0 with findings" in check_merge.stdout()

    # byte for byte `launch local`'s (the report's summary names its input: in either output folder)
    assert block_outputs(pvc / "k8s-output") == block_outputs(pvc / "output")
    assert all(not any(p.iterdir()) for p in scratch.glob("workdir-*"))
