"""`launch k8s`: manifests valid against the official schemas (strict), the retry / index / gating / volume
semantics on the rendered objects, the committed `k8s/` folder in step with the renderer, and `--apply` /
`--wait` through the real Kubernetes client against a recording API stub on 127.0.0.1 (no cluster can run
here). `test_k8s_replay.py` runs the rendered pods' commands end to end."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kube_validate

from conftest import REPO, neva
from neva_prep.errors import BadInput
from neva_prep.launch import k8s
from neva_prep.launch.plan import (
    Plan,
    check_argv,
    energon_argv,
    example_plan,
    merge_argv,
    model_argv,
    parse_plan,
    shard_argv,
    wait_argv,
)

SCHEMA_VERSIONS = ("1.29.0", kube_validate.latest_version())  # 1.29: the oldest we support
SECRET_VALUE = "wJalrXUtnFEMI-never-in-a-manifest"


def _example() -> Plan:
    return parse_plan(yaml.safe_load(example_plan()), "example")


def _gpu_plan() -> Plan:
    data = yaml.safe_load(example_plan())
    data["kubernetes"] |= {
        "namespace": "ml-data",
        "gpu_resource": "nvidia.com/gpu",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "service_account": "neva-prep",
        "cpu_limit": "4",
    }
    data["model"]["gpus"] = 2
    return parse_plan(data, "gpu")


VOLUMES = {
    "pvc": {"name": "data", "mount_path": "/data", "persistent_volume_claim": "neva-prep-data"},
    "nfs": {"name": "data", "mount_path": "/data", "nfs": {"server": "10.0.0.2", "path": "/exports/neva"}},
    "host_path": {"name": "data", "mount_path": "/data", "host_path": "/mnt/neva"},
}


def _volume_plan(kind: str) -> Plan:
    """The example with its data on a volume: a local output, llava read from a second, read-only volume."""
    data = yaml.safe_load(example_plan())
    data["output"] = "/data/neva-prep"
    data["datasets"][1]["source"] = "/datasets/llava/blip_laion_cc_sbu_558k.json"
    data["data_image"] = "nvcr.io/my-org/neva-prep-data:0.1.0"
    data["kubernetes"]["volumes"] = [
        VOLUMES[kind],
        {
            "name": "datasets",
            "mount_path": "/datasets",
            "persistent_volume_claim": "llava",
            "read_only": True,
        },
    ]
    return parse_plan(data, "volumes.yaml")


def _pvc_plan() -> Plan:
    return _volume_plan("pvc")


def _nfs_plan() -> Plan:
    return _volume_plan("nfs")


def _host_path_plan() -> Plan:
    return _volume_plan("host_path")


def _manifests(plan: Plan) -> dict[str, dict[str, Any]]:
    return {k8s.job_name(job): k8s.to_dict(job) for job in k8s.jobs(plan)}


@pytest.mark.parametrize("make_plan", [_example, _gpu_plan, _pvc_plan, _nfs_plan, _host_path_plan])
def test_every_manifest_validates_strictly(make_plan: Any) -> None:
    for text in k8s.render(make_plan()).values():
        doc = yaml.safe_load(text)
        if doc["kind"] == "Kustomization":
            assert doc["resources"] and all(r.endswith(".yaml") for r in doc["resources"])
            continue
        for version in SCHEMA_VERSIONS:
            try:
                kube_validate.validate(doc, version, strict=True)
            except kube_validate.ValidationError as exc:  # the message is the whole schema: show the gist
                pytest.fail(f"{doc['metadata']['name']} invalid for {version}: {str(exc).splitlines()[0]}")


def test_strict_validation_catches_a_typo() -> None:
    """The check above can fail: a misspelled field is rejected by the strict schema."""
    doc = next(iter(_manifests(_example()).values()))
    doc["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kube_validate.ValidationError):
        kube_validate.validate(doc, SCHEMA_VERSIONS[0], strict=True)


def test_indexed_shards_fail_an_index_on_bad_input_and_ignore_disruptions() -> None:
    plan = _example()
    jobs = _manifests(plan)
    for ds in plan.datasets:
        spec = jobs[f"{plan.name}-{ds.name}"]["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == ds.shards
        assert spec["parallelism"] == ds.max_parallel
        assert spec["backoffLimitPerIndex"] == plan.kubernetes.backoff_limit_per_index
        assert "backoffLimit" not in spec  # per-index limits only
        assert spec["podReplacementPolicy"] == "Failed"
        assert spec["podFailurePolicy"]["rules"] == [
            {
                "action": "FailIndex",
                "onExitCodes": {"containerName": "neva-prep", "operator": "In", "values": [2]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "neva-prep"
        assert [container["command"][0], *container["args"]] == shard_argv(plan, ds, record_failure=True)
        assert "--shard-index" not in container["args"]  # the index comes from the Job
        assert "--record-failure" in container["args"]  # exit 2 leaves the record the merge's wait reads
        index_env = {e["name"]: e for e in container["env"]}["JOB_COMPLETION_INDEX"]
        assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
    assert jobs["neva-prep-webvid"]["spec"]["parallelism"] == 8  # the plan's parallelism
    assert jobs["neva-prep-llava-pretrain"]["spec"]["parallelism"] == 4  # default: all shards


def test_merge_waits_in_an_init_container_and_fails_at_once_when_the_wait_fails() -> None:
    plan = _example()
    jobs = _manifests(plan)
    for ds in plan.datasets:
        merge = jobs[f"{plan.name}-{ds.name}-merge"]
        spec = merge["spec"]
        pod = spec["template"]["spec"]
        (init,) = pod["initContainers"]
        (container,) = pod["containers"]
        assert [init["command"][0], *init["args"]] == wait_argv(plan, ds)
        assert [container["command"][0], *container["args"]] == merge_argv(plan, ds)
        # it waits for exactly the shard count of its Indexed Job, and at most the plan's timeout
        for args in (init["args"], container["args"]):
            shards = jobs[f"{plan.name}-{ds.name}"]["spec"]["completions"]
            assert int(args[args.index("--num-shards") + 1]) == shards
        assert init["args"][init["args"].index("--timeout") + 1] == "86400"
        # no retries to gate with: the merge is retried like any step, a failed wait fails the Job
        assert spec["backoffLimit"] == plan.kubernetes.backoff_limit_per_index
        assert spec["podFailurePolicy"]["rules"][:2] == [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "neva-prep", "operator": "In", "values": [2]},
            },
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "wait-for-shards", "operator": "In", "values": [1, 2]},
            },
        ]
        # the wait sees what the merge sees: same image, credentials, volumes
        assert {k: v for k, v in init.items() if k not in ("name", "args")} == {
            k: v for k, v in container.items() if k not in ("name", "args")
        }
        assert "gating" in json.dumps(merge["metadata"]["annotations"])
    # nothing waits for the model step: no other step reads its output
    assert "initContainers" not in jobs["neva-prep-model"]["spec"]["template"]["spec"]
    assert "initContainers" not in jobs["neva-prep-webvid"]["spec"]["template"]["spec"]


def test_export_and_check_wait_for_the_merge_then_finalize_and_combine_wait_for_their_shards() -> None:
    """Every launcher runs a dataset's `energon:` and `check:` blocks after its merge: here as gated Jobs."""
    plan = _example()
    ds = plan.dataset("llava-pretrain")
    assert ds.energon is not None and ds.check is not None and ds.check.shards == 4
    jobs = _manifests(plan)
    expected = {  # job -> (its argv, its init container's argv, Indexed completions or None)
        "neva-prep-llava-pretrain-energon": (energon_argv(plan, ds), wait_argv(plan, ds, "merge"), 4),
        "neva-prep-llava-pretrain-energon-index": (
            energon_argv(plan, ds, finalize=True),
            wait_argv(plan, ds, "energon"),
            None,
        ),
        "neva-prep-llava-pretrain-check": (check_argv(plan, ds), wait_argv(plan, ds, "merge"), 4),
        "neva-prep-llava-pretrain-check-merge": (
            check_argv(plan, ds, merge=True),
            wait_argv(plan, ds, "check"),
            None,
        ),
    }
    assert not any(n.startswith("neva-prep-webvid-") and n != "neva-prep-webvid-merge" for n in jobs)
    out = "s3://my-bucket/neva-prep/datasets/llava-pretrain"
    assert wait_argv(plan, ds, "merge")[3:] == [
        out,
        "--num-shards",
        "4",
        "--for",
        "merge",
        "--timeout",
        "86400",
    ]
    assert wait_argv(plan, ds, "check")[3:6] == [f"{out}/report", "--num-shards", "4"]
    for name, (argv, wait, completions) in expected.items():
        spec = jobs[name]["spec"]
        pod = spec["template"]["spec"]
        (init,), (container,) = pod["initContainers"], pod["containers"]
        assert [init["command"][0], *init["args"]] == wait, name
        assert [container["command"][0], *container["args"]] == argv, name
        assert container["image"] == init["image"] == plan.shards_image
        assert spec.get("completionMode") == ("Indexed" if completions else None), name
        assert spec["completions"] == (completions or 1)
        rules = spec["podFailurePolicy"]["rules"]
        final = [2, 3] if "check" in name and (name.endswith("-merge") or not completions) else [2]
        assert rules[0] == {
            "action": "FailIndex" if completions else "FailJob",
            "onExitCodes": {"containerName": "neva-prep", "operator": "In", "values": final},
        }, name
        assert rules[1] == {
            "action": "FailJob",
            "onExitCodes": {"containerName": init["name"], "operator": "In", "values": [1, 2]},
        }, name
        assert "data wait --for" in jobs[name]["metadata"]["annotations"]["neva-prep/gating"]
    data = yaml.safe_load(example_plan())
    data["datasets"][1]["check"]["shards"] = 1  # one check Job: it waits for the merge, exit 3 is final
    one = _manifests(parse_plan(data, "p"))
    assert "neva-prep-llava-pretrain-check-merge" not in one
    check = one["neva-prep-llava-pretrain-check"]["spec"]
    assert "completionMode" not in check and check["podFailurePolicy"]["rules"][0]["onExitCodes"][
        "values"
    ] == [2, 3]


def test_wait_timeout_zero_waits_for_ever() -> None:
    data = yaml.safe_load(example_plan())
    data["kubernetes"]["wait_timeout_seconds"] = 0
    plan = parse_plan(data, "p")
    (init,) = _manifests(plan)["neva-prep-webvid-merge"]["spec"]["template"]["spec"]["initContainers"]
    assert "--timeout" not in init["args"]


@pytest.mark.parametrize("kind", sorted(VOLUMES))
def test_every_pod_mounts_the_plans_volumes(kind: str) -> None:
    plan = _volume_plan(kind)
    expected_volume = {
        "pvc": {"name": "data", "persistentVolumeClaim": {"claimName": "neva-prep-data"}},
        "nfs": {"name": "data", "nfs": {"server": "10.0.0.2", "path": "/exports/neva"}},
        "host_path": {"name": "data", "hostPath": {"path": "/mnt/neva", "type": "Directory"}},
    }[kind]
    for name, job in _manifests(plan).items():
        pod = job["spec"]["template"]["spec"]
        assert pod["volumes"] == [
            {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
            expected_volume,
            {"name": "datasets", "persistentVolumeClaim": {"claimName": "llava", "readOnly": True}},
        ], name
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["volumeMounts"] == [
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "data", "mountPath": "/data"},
                {"name": "datasets", "mountPath": "/datasets", "readOnly": True},
            ], name
            # data steps run the slim image; only the model step needs NeMo
            image = plan.image if name.endswith("-model") else "nvcr.io/my-org/neva-prep-data:0.1.0"
            assert c["image"] == image, name


def test_manifests_name_no_namespace_unless_the_plan_does() -> None:
    for job in _manifests(_example()).values():
        assert "namespace" not in job["metadata"]  # kubectl's current namespace
    for job in _manifests(_gpu_plan()).values():
        assert job["metadata"]["namespace"] == "ml-data"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            lambda d: d.update(output="/home/me/out"),
            "output",
            "local path /home/me/out is on no mounted volume",
        ),
        (lambda d: d.update(output="out"), "output", "relative local path 'out'"),
        (lambda d: d.update(output="/datasets/out"), "output", "mounted read-only"),
        (lambda d: d["model"].update(source="/models/hf"), "model.source", "is on no mounted volume"),
        (
            lambda d: d["datasets"][0].update(media_root="file:///srv/videos"),
            "datasets[0].media_root",
            "/srv",
        ),
        (lambda d: d["datasets"][0].update(prompts="/etc/p.txt"), "datasets[0].prompts", "/etc/p.txt"),
        (lambda d: d["datasets"][0].update(source="/data-old/w.csv"), "datasets[0].source", "/data-old"),
    ],
)
def test_a_local_path_no_pod_can_see_is_refused(change: Any, field: str, message: str) -> None:
    data = yaml.safe_load(example_plan())
    data["kubernetes"]["volumes"] = [
        VOLUMES["pvc"],
        {
            "name": "datasets",
            "mount_path": "/datasets",
            "persistent_volume_claim": "llava",
            "read_only": True,
        },
    ]
    change(data)
    plan = parse_plan(data, "p.yaml")
    with pytest.raises(BadInput) as info:
        k8s.jobs(plan)
    assert str(info.value).startswith(f"p.yaml, field {field!r}: ")
    assert message in str(info.value)


def test_urls_and_paths_on_volumes_are_accepted() -> None:
    data = yaml.safe_load(example_plan())
    data["kubernetes"]["volumes"] = [VOLUMES["nfs"]]
    data["output"] = "file:///data/out"
    data["datasets"][0] |= {"source": "/data/webvid/*.csv", "media_root": "/data", "prompts": "video_brief"}
    data["datasets"][1]["source"] = "gs://bucket/llava.json"
    assert len(k8s.jobs(parse_plan(data, "p.yaml"))) == 9


def test_launch_and_plan_check_refuse_a_bare_local_path(tmp_path: Path) -> None:
    """The sample plan (local paths, no volume) runs locally, but no pod could see its files."""
    plan = Path(neva("sample", str(tmp_path / "sample")).stdout.strip())
    r = neva("launch", "k8s", str(plan), "--out", str(tmp_path / "k8s"))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"neva-prep: error: {plan}, field 'model.source': local path {tmp_path}")
    assert "use a URL (s3://, gs://) or a path on a volume listed in kubernetes.volumes" in line
    assert "(and 3 more local path(s))" in line
    assert not (tmp_path / "k8s").exists()  # nothing rendered
    check = neva("plan", "check", str(plan), "--for", "k8s")
    assert check.returncode == 2 and check.stderr == r.stderr and check.stdout == ""
    for target in ("local", "slurm"):
        assert neva("plan", "check", str(plan), "--for", target).returncode == 0
    assert neva("plan", "check", str(plan)).returncode == 0


def test_model_job_asks_for_gpus_only_when_the_plan_does() -> None:
    gpu = _manifests(_gpu_plan())["neva-prep-model"]
    (container,) = gpu["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "memory": "16Gi", "cpu": "4"}
    assert [container["command"][0], *container["args"]] == model_argv(_gpu_plan())
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "neva-prep"
    assert gpu["metadata"]["namespace"] == "ml-data"
    assert gpu["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"

    data = yaml.safe_load(example_plan())
    data["model"]["gpus"] = 0
    cpu = _manifests(parse_plan(data, "cpu"))["neva-prep-model"]
    (container,) = cpu["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_pods_are_locked_down_and_get_credentials_only_from_the_secret() -> None:
    for name, job in _manifests(_gpu_plan()).items():
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400, name
        assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "neva-prep"
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}]
        containers = pod["containers"] + pod.get("initContainers", [])
        ungated = ("neva-prep-model", "neva-prep-webvid", "neva-prep-llava-pretrain")  # the rest wait first
        assert len(containers) == (1 if name in ungated else 2), name
        for c in containers:
            _assert_locked_down(c)


def _assert_locked_down(c: dict[str, Any]) -> None:
    """What every container of every pod must keep, init containers included."""
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp"
    assert not any(k.startswith("AWS_") for k in env)  # credentials: the Secret only
    assert c["envFrom"] == [{"secretRef": {"name": "neva-prep-s3"}}]


def test_cli_renders_without_leaking_the_environment(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(example_plan())
    out = tmp_path / "k8s"
    env = {"AWS_SECRET_ACCESS_KEY": SECRET_VALUE, "AWS_ACCESS_KEY_ID": "AKIA-LEAK"}
    r = neva("launch", "k8s", str(plan), "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert "kubectl apply -f" in r.stdout
    files = {p.name: p.read_text() for p in out.iterdir()}
    assert files == k8s.render(_example())
    for text in files.values():
        assert SECRET_VALUE not in text and "AKIA-LEAK" not in text
    # rendering is deterministic: a second run writes the same bytes
    r2 = neva("launch", "k8s", str(plan), "--out", str(tmp_path / "again"))
    assert r2.returncode == 0
    assert {p.name: p.read_text() for p in (tmp_path / "again").iterdir()} == files


def test_rerendering_removes_jobs_the_plan_no_longer_has(tmp_path: Path) -> None:
    data = yaml.safe_load(example_plan())
    k8s.write_manifests(parse_plan(data, "p"), str(tmp_path))
    (tmp_path / "mine.yaml").write_text("kind: ConfigMap\n")  # not ours: left alone
    data["datasets"] = data["datasets"][:1]
    written = k8s.write_manifests(parse_plan(data, "p"), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*written, "mine.yaml"])
    assert "neva-prep-llava-pretrain.yaml" not in written


def test_the_image_matches_what_the_manifests_expect() -> None:
    """The Dockerfile's user and entrypoint are what the Jobs rely on (runAsUser, command)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG NEMO_IMAGE=nvcr.io/nvidia/nemo:24.05\nFROM ${NEMO_IMAGE}\n" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users[-1] == str(k8s.UID)
    assert 'ENTRYPOINT ["neva-prep"]' in dockerfile
    job = next(iter(_manifests(_example()).values()))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["neva-prep"]


def test_committed_k8s_folder_is_the_rendering_of_the_example_plan() -> None:
    """`k8s/` is what users edit and `kubectl apply -k`. When this fails, re-render it with
    `neva-prep plan init > /tmp/plan.yaml && neva-prep launch k8s /tmp/plan.yaml --out k8s`."""
    committed = {p.name: p.read_text() for p in (REPO / "k8s").iterdir() if p.is_file()}
    assert committed == k8s.render(_example())


# --- --apply / --wait against a recording API server -------------------------------------------------------


class _Api(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, Any] | None, str]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.fail: dict[str, str] = {}  # job name -> Failed condition reason
        self.messages: dict[str, str] = {}  # job name -> Failed condition message


class _Handler(BaseHTTPRequestHandler):
    server: _Api

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body, self.headers.get("Authorization", "")))
        name = body["metadata"]["name"]
        if name in self.server.jobs:
            self._send(409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409})
            return
        self.server.jobs[name] = body
        self._send(201, body)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None, self.headers.get("Authorization", "")))
        name = self.path.rstrip("/").split("/")[-2]
        job = self.server.jobs.get(name)
        if job is None:
            self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
            return
        polls = self.server.polls[name] = self.server.polls.get(name, 0) + 1
        done = job["spec"].get("completions", 1)
        if polls == 1:
            status: dict[str, Any] = {"active": 1, "succeeded": 0}
        elif name in self.server.fail:
            condition = {"type": "Failed", "status": "True", "reason": self.server.fail[name]}
            if name in self.server.messages:
                condition["message"] = self.server.messages[name]
            status = {"failed": 1, "conditions": [condition]}
        else:
            status = {"succeeded": done, "conditions": [{"type": "Complete", "status": "True"}]}
        self._send(200, {**job, "status": status})


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[_Api, dict[str, str]]]:
    server = _Api()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "stub", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "stub", "user": {"token": "stub-token"}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
                "current-context": "stub",
            }
        )
    )
    yield server, {"KUBECONFIG": str(kubeconfig)}
    server.shutdown()
    server.server_close()


def test_apply_creates_every_job_through_the_client(api: tuple[_Api, dict[str, str]], tmp_path: Path) -> None:
    server, env = api
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    r = neva("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", env=env)
    assert r.returncode == 0, r.stderr
    expected = _manifests(_example())
    posts = [(path, body, auth) for method, path, body, auth in server.requests if method == "POST"]
    assert [body["metadata"]["name"] for _, body, _ in posts] == list(expected)
    for path, body, auth in posts:
        assert path == "/apis/batch/v1/namespaces/default/jobs"
        assert auth == "Bearer stub-token"
        assert body == expected[body["metadata"]["name"]]  # exactly the rendered manifest
    assert "created 9 job(s)" in r.stdout

    again = neva("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", env=env)
    assert again.returncode == 0, again.stderr
    assert "already there" in again.stdout  # re-running is safe: existing Jobs are left alone


def test_wait_follows_jobs_to_the_end(api: tuple[_Api, dict[str, str]], tmp_path: Path) -> None:
    server, env = api
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    args = ("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", "--wait")
    r = neva(*args, "--interval", "0.05", env=env)
    assert r.returncode == 0, r.stderr
    assert "neva-prep-webvid: 0/16 succeeded, 1 running, 0 failed" in r.stdout
    assert "neva-prep-webvid: 16/16 succeeded" in r.stdout
    assert r.stdout.count(": Complete") >= 5
    gets = [path for method, path, _, _ in server.requests if method == "GET"]
    assert "/apis/batch/v1/namespaces/default/jobs/neva-prep-webvid-merge/status" in gets


def test_wait_reports_bad_input_with_exit_2(api: tuple[_Api, dict[str, str]], tmp_path: Path) -> None:
    server, env = api
    server.fail["neva-prep-llava-pretrain-merge"] = "PodFailurePolicy"
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    args = ("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", "--wait")
    r = neva(*args, "--interval", "0.05", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "neva-prep-llava-pretrain-merge: Failed (PodFailurePolicy)" in r.stdout


def test_wait_reports_a_timed_out_merge_wait_with_exit_1(
    api: tuple[_Api, dict[str, str]], tmp_path: Path
) -> None:
    """The wait's timeout (exit 1) also fails the Job through its podFailurePolicy: not bad input."""
    server, env = api
    server.fail["neva-prep-webvid-merge"] = "PodFailurePolicy"
    server.messages["neva-prep-webvid-merge"] = (
        "Container wait-for-shards for pod default/neva-prep-webvid-merge-x8k2p failed with exit code 1 "
        "matching FailJob rule at index 1"
    )
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    args = ("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", "--wait")
    r = neva(*args, "--interval", "0.05", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "neva-prep-webvid-merge: Failed (PodFailurePolicy: Container wait-for-shards" in r.stdout


def test_wait_reports_a_check_that_found_problems_with_exit_3(
    api: tuple[_Api, dict[str, str]], tmp_path: Path
) -> None:
    """Like `launch local`: everything ran, only a data check found problems (its exit-3 rule failed it)."""
    server, env = api
    server.fail["neva-prep-llava-pretrain-check-merge"] = "PodFailurePolicy"
    server.messages["neva-prep-llava-pretrain-check-merge"] = (
        "Container neva-prep for pod default/neva-prep-llava-pretrain-check-merge-x8k2p failed "
        "with exit code 3 matching FailJob rule at index 0"
    )
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    args = ("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", "--wait")
    r = neva(*args, "--interval", "0.05", env=env)
    assert r.returncode == 3, r.stdout + r.stderr


def test_jobs_go_to_the_current_namespace_when_the_plan_names_none(
    api: tuple[_Api, dict[str, str]], tmp_path: Path
) -> None:
    server, env = api
    kubeconfig = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
    kubeconfig["contexts"][0]["context"]["namespace"] = "team-a"
    Path(env["KUBECONFIG"]).write_text(yaml.safe_dump(kubeconfig))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    args = ("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", "--wait")
    r = neva(*args, "--interval", "0.05", env=env)
    assert r.returncode == 0, r.stderr
    paths = {path for _, path, _, _ in server.requests}
    assert "/apis/batch/v1/namespaces/team-a/jobs" in paths
    assert "/apis/batch/v1/namespaces/team-a/jobs/neva-prep-webvid-merge/status" in paths
    assert not any("/namespaces/default/" in p for p in paths)

    data = yaml.safe_load(example_plan())
    data["kubernetes"]["namespace"] = "ml-data"  # the plan's namespace wins
    plan_file.write_text(yaml.safe_dump(data))
    server.jobs.clear()
    server.requests.clear()
    assert neva(*args, "--interval", "0.05", env=env).returncode == 0
    assert {path.split("/")[5] for _, path, _, _ in server.requests} == {"ml-data"}


def test_apply_without_a_cluster_is_one_line_exit_2(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(example_plan())
    env = {"KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": ""}
    r = neva("launch", "k8s", str(plan_file), "--out", str(tmp_path / "out"), "--apply", env=env)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "no Kubernetes configuration" in r.stderr
