"""The rendered Kubernetes Jobs, run: no cluster can run here, so each pod's containers are replayed as the
kubelet would start them (command + args, the rendered env with `JOB_COMPLETION_INDEX` resolved from its
fieldRef, working directory, every volume's mount path mapped to a folder on this machine), in the order
Kubernetes runs them: all Jobs at once, each merge's init container waiting while the shards run. The
outputs must be byte for byte those of `launch local` on the same sample, and no container may fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from conftest import neva

MOUNT = "/data"  # where the plan says the PVC is mounted in every pod
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


class Pod:
    """One pod of a rendered Job: its volumes mapped to folders here, its containers runnable."""

    def __init__(self, job: dict[str, Any], volumes: dict[str, Path], scratch: Path, index: int | None):
        self.spec = job["spec"]["template"]["spec"]
        self.index = index
        self.paths: dict[str, Path] = {}  # mount path -> folder here
        by_name = {v["name"]: v for v in self.spec["volumes"]}
        for c in self.spec["containers"] + self.spec.get("initContainers", []):
            for m in c["volumeMounts"]:
                volume = by_name[m["name"]]
                if "emptyDir" in volume:  # a fresh emptyDir per pod
                    folder = scratch / f"{job['metadata']['name']}-{index}-{m['name']}"
                    folder.mkdir(parents=True, exist_ok=True)
                else:
                    folder = volumes[volume["persistentVolumeClaim"]["claimName"]]
                assert self.paths.setdefault(m["mountPath"], folder) == folder
        self.workdir = scratch / f"workdir-{job['metadata']['name']}-{index}"  # the image's WORKDIR stand-in
        self.workdir.mkdir(parents=True)

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

    def start(self, container: dict[str, Any]) -> subprocess.Popen[str]:
        assert container["command"] == ["neva-prep"]
        argv = [sys.executable, "-m", "neva_prep.cli", *(self.map(a) for a in container["args"])]
        cwd = self.map(container["workingDir"]) if "workingDir" in container else self.workdir
        return subprocess.Popen(
            argv, env=self.env(container), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, container: dict[str, Any]) -> str:
        proc = self.start(container)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{container['name']} {container['args']}: {err}"
        return out


def _k8s_plan(sample_plan: Path, root: Path) -> dict[str, Any]:
    """The sample plan with its files on the PVC (mounted at /data) and its output there too."""
    text = sample_plan.read_text(encoding="utf-8").replace(str(root), MOUNT)
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

    plan_file = tmp_path / "k8s-plan.yaml"
    plan_file.write_text(yaml.safe_dump(_k8s_plan(sample_plan, pvc)))
    rendered = tmp_path / "manifests"
    r = neva("launch", "k8s", str(plan_file), "--out", str(rendered))
    assert r.returncode == 0, r.stderr
    jobs = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(rendered.glob("*.yaml"))}
    assert sorted(jobs) == [
        "neva-sample-llava",
        "neva-sample-llava-merge",
        "neva-sample-model",
        "neva-sample-webvid",
        "neva-sample-webvid-merge",
    ]
    volumes = {"neva-data": pvc}
    scratch = tmp_path / "node"

    # Kubernetes starts every Job at once: the merges' init containers wait while the shards run
    merges = {name: Pod(job, volumes, scratch, None) for name, job in jobs.items() if name.endswith("-merge")}
    waits = {}
    for name, pod in merges.items():
        (init,) = pod.spec["initContainers"]
        assert init["args"][:2] == ["data", "wait"]
        waits[name] = pod.start(init)
    Pod(jobs["neva-sample-model"], volumes, scratch, None).run(
        jobs["neva-sample-model"]["spec"]["template"]["spec"]["containers"][0]
    )
    for name in ("neva-sample-webvid", "neva-sample-llava"):
        job = jobs[name]
        assert job["spec"]["completionMode"] == "Indexed"
        for index in range(job["spec"]["completions"]):
            assert all(w.poll() is None for w in waits.values()), "a wait ended before its shards"
            (container,) = job["spec"]["template"]["spec"]["containers"]
            assert container["image"] == "neva-prep-data:test"
            assert "--shard-index" not in container["args"]  # the index comes from JOB_COMPLETION_INDEX
            out = Pod(job, volumes, scratch, index).run(container)
            assert f"shard {index} of {job['spec']['completions']}" in out
    for name, proc in waits.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} init container: {err}"
        assert f"shard(s) finished under {pvc}/k8s-output/datasets/" in out
        assert "0 of " in out  # it did wait
        (merge,) = merges[name].spec["containers"]
        merges[name].run(merge)

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
