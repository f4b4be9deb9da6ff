"""The plan: `plan init` writes a plan that `plan check` accepts; bad plans are one-line exit-2 errors; the
argv mapping every launcher uses says exactly what the step CLIs accept."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import neva
from neva_prep.cpus import usable_cpus
from neva_prep.errors import BadInput
from neva_prep.launch import k8s, slurm, submitit
from neva_prep.launch.plan import (
    Target,
    check_for,
    dataset_output,
    describe,
    example_plan,
    load_plan,
    merge_argv,
    model_argv,
    parse_plan,
    resolve,
    shard_argv,
    wait_argv,
)


def _minimal() -> dict[str, Any]:
    return {
        "output": "s3://b/out",
        "model": {"source": "s3://b/hf", "name": "m"},
        "datasets": [
            {"name": "web", "source": "s3://b/w.csv", "from": "webvid", "media": "video", "shards": 4}
        ],
    }


def test_plan_init_prints_a_plan_that_checks(tmp_path: Path) -> None:
    init = neva("plan", "init")
    assert init.returncode == 0, init.stderr
    assert init.stdout == example_plan()
    assert "#" in init.stdout  # commented, for people to edit
    path = tmp_path / "plan.yaml"
    path.write_text(init.stdout)
    check = neva("plan", "check", str(path))
    assert check.returncode == 0, check.stderr
    plan = load_plan(str(path))
    assert plan.model is not None and plan.model.gpus == 1
    assert [ds.name for ds in plan.datasets] == ["webvid", "llava-pretrain"]
    # plan check prints the commands every launcher runs
    assert " ".join(shard_argv(plan, plan.datasets[0])) in check.stdout
    assert " ".join(merge_argv(plan, plan.datasets[1])) in check.stdout


def test_commented_examples_of_plan_init_are_valid_too() -> None:
    """Uncommenting an example block of `plan init` gives a plan that loads (its values are real)."""
    lines = example_plan().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - name: cc3m"))
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append("  " + line[len("  # ") :])
    text = "\n".join([*lines[:start], *block, *lines[start + len(block) :]])
    plan = resolve(parse_plan(yaml.safe_load(text), "p.yaml"), Target.SLURM)
    cc3m = plan.datasets[-1]
    assert (cc3m.name, cc3m.from_, cc3m.prompts) == ("cc3m", "captions", "image_brief")
    assert "--prompts image_brief" in " ".join(shard_argv(plan, cc3m))


def test_the_commented_volumes_of_plan_init_are_valid_too() -> None:
    lines = example_plan().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # volumes:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  #   "))
    block = ["  volumes:", *("  " + line[len("  # ") :] for line in lines[start + 1 : end])]
    kept = [line for line in lines[:start] if not line.startswith("  volumes: []")]
    plan = parse_plan(yaml.safe_load("\n".join([*kept, *block, *lines[end:]])), "p.yaml")
    kinds = [
        (v.name, v.persistent_volume_claim, v.nfs is not None, v.host_path) for v in plan.kubernetes.volumes
    ]
    assert kinds == [
        ("data", "neva-prep-data", False, None),
        ("datasets", None, True, None),
        ("node-models", None, False, "/mnt/models"),
    ]


def test_defaults_and_argv_mapping() -> None:
    plan = parse_plan(_minimal(), "p.yaml")
    assert plan.name == "neva-prep" and plan.image == "neva-prep:latest"
    assert plan.data_image is None and plan.shards_image == "neva-prep:latest"
    assert plan.kubernetes.namespace is None and plan.slurm.time == "04:00:00"
    assert plan.kubernetes.volumes == () and plan.kubernetes.wait_timeout_seconds == 86400
    ds = plan.datasets[0]
    assert ds.from_ == "webvid" and ds.parallelism is None and ds.max_parallel == 4
    assert model_argv(plan) == [
        "neva-prep", "model", "s3://b/hf", "s3://b/out",
        "--name", "m", "--precision", "16", "--layout", "mcore",
    ]  # fmt: skip
    assert dataset_output(plan, ds) == "s3://b/out/datasets/web"
    assert shard_argv(plan, ds) == [
        "neva-prep", "data", "convert", "s3://b/w.csv", "s3://b/out/datasets/web",
        "--from", "webvid", "--media", "video", "--num-shards", "4",
    ]  # fmt: skip
    assert merge_argv(plan, ds) == [
        "neva-prep", "data", "merge", "s3://b/out/datasets/web", "--name", "web", "--num-shards", "4",
    ]  # fmt: skip
    assert shard_argv(plan, ds, record_failure=True)[-1] == "--record-failure"
    assert wait_argv(plan, ds) == [
        "neva-prep", "data", "wait", "s3://b/out/datasets/web", "--num-shards", "4", "--timeout", "86400",
    ]  # fmt: skip


def test_every_option_reaches_the_command_line() -> None:
    data = _minimal()
    data["model"] |= {"precision": "bf16", "tokens": ["<a>", "<b>"], "device": "cpu", "gpus": 0}
    data["datasets"][0] = {
        "name": "cc",
        "source": "gs://b/*.parquet",
        "from": "captions",
        "media": "image",
        "shards": 2,
        "parallelism": 5,
        "media_column": "key",
        "caption_column": "caption",
        "id_column": "key",
        "prompts": "image_brief",
        "media_root": "gs://b/images",
    }
    plan = parse_plan(data, "p.yaml")
    argv = model_argv(plan)
    assert argv[argv.index("--precision") + 1] == "bf16"
    assert argv[-6:] == ["--token", "<a>", "--token", "<b>", "--device", "cpu"]
    ds = plan.datasets[0]
    assert ds.max_parallel == 2  # never more at once than there are shards
    tail = shard_argv(plan, ds)[-10:]
    assert tail == [
        "--media-column", "key", "--caption-column", "caption", "--id-column", "key",
        "--prompts", "image_brief", "--media-root", "gs://b/images",
    ]  # fmt: skip


def test_volumes_of_every_kind_and_the_data_image() -> None:
    data = _minimal()
    data["data_image"] = "neva-prep-data:1"
    data["kubernetes"] = {
        "namespace": "ml-data",
        "volumes": [
            {"name": "data", "mount_path": "/data", "persistent_volume_claim": "neva-data"},
            {
                "name": "sets",
                "mount_path": "/datasets",
                "nfs": {"server": "nfs.example.com", "path": "/exports/sets"},
                "read_only": True,
            },
            {"name": "models", "mount_path": "/models", "host_path": "/mnt/models"},
        ],
    }
    plan = parse_plan(data, "p.yaml")
    assert plan.shards_image == "neva-prep-data:1" and plan.image == "neva-prep:latest"
    assert plan.kubernetes.namespace == "ml-data"
    pvc, nfs, host = plan.kubernetes.volumes
    assert (pvc.persistent_volume_claim, pvc.read_only) == ("neva-data", False)
    assert nfs.nfs is not None and (nfs.nfs.server, nfs.nfs.path, nfs.read_only) == (
        "nfs.example.com",
        "/exports/sets",
        True,
    )
    assert host.host_path == "/mnt/models"
    assert pvc.holds("/data") and pvc.holds("/data/x/y") and not pvc.holds("/database")
    text = describe(plan)
    assert "data image neva-prep-data:1" in text.splitlines()[0]
    assert "kubernetes volume sets: NFS nfs.example.com:/exports/sets (read-only) at /datasets" in text


def test_check_for_kubernetes_only(tmp_path: Path) -> None:
    """Local paths on a volume pass `--for k8s`; the k8s description shows what the pods run."""
    data = _minimal()
    data["output"] = "/data/out"
    data["datasets"][0]["source"] = "/datasets/w/*.csv"
    data["kubernetes"] = {
        "volumes": [
            {"name": "data", "mount_path": "/data", "persistent_volume_claim": "neva-data"},
            {"name": "sets", "mount_path": "/datasets", "host_path": "/mnt/sets", "read_only": True},
        ]
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    r = neva("plan", "check", str(path), "--for", "k8s")
    assert r.returncode == 0, r.stderr
    plan = load_plan(str(path))
    ds = plan.datasets[0]
    assert f"neva-prep-web (x4): {shlex.join(shard_argv(plan, ds, record_failure=True))}" in r.stdout
    assert f"neva-prep-web-merge (init): {shlex.join(wait_argv(plan, ds))}" in r.stdout
    assert "--record-failure" not in neva("plan", "check", str(path)).stdout  # what every launcher runs

    data["kubernetes"]["volumes"].pop()  # the source is on no volume now
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        BadInput, match=re.escape("field 'datasets[0].source': local path /datasets/w/*.csv is on no")
    ):
        check_for(load_plan(str(path)), "k8s")
    for target in ("local", "slurm"):
        check_for(load_plan(str(path)), target)
    r = neva("plan", "check", str(path), "--for", "kubernetes")
    assert r.returncode == 2 and "--for" in r.stderr


def test_precision_written_as_a_number_is_accepted() -> None:
    data = _minimal()
    data["model"]["precision"] = 32
    plan = parse_plan(data, "p.yaml")
    assert plan.model is not None and plan.model.precision == "32"


def _volume(data: dict[str, Any], _twice: dict[str, Any] | None = None, **changes: Any) -> None:
    """Give the plan one PVC volume at /data, with `changes` (None removes a key); `_twice`: and a second
    volume like it, with those changes."""
    volume = {"name": "data", "mount_path": "/data", "persistent_volume_claim": "claim"}
    volume |= changes
    volumes = [{k: v for k, v in volume.items() if v is not None}]
    if _twice is not None:
        volumes.append({**volumes[0], **_twice})
    data.setdefault("kubernetes", {})["volumes"] = volumes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(outptu="x"), "field 'outptu': unknown key"),
        (lambda d: d.pop("output"), "field 'output': missing"),
        (lambda d: d["model"].pop("name"), "field 'model.name': missing"),
        (lambda d: d["model"].update(gpus="two"), "field 'model.gpus': expected an integer"),
        (lambda d: d["model"].update(gpus=True), "field 'model.gpus': expected an integer"),
        (
            lambda d: d["model"].update(precision="fp8"),
            "field 'model.precision': expected one of 16, bf16, 32",
        ),
        (lambda d: d["model"].update(tokens=[]), "field 'model.tokens'"),
        (lambda d: d["datasets"][0].pop("name"), "field 'datasets[0].name': missing"),
        (lambda d: d["datasets"][0].update(name="Web_Vid"), "must be a DNS-1123 label"),
        (lambda d: d["datasets"][0].update(name="w" * 60), "must be a DNS-1123 label"),
        (
            lambda d: d["datasets"][0].update(shards=0),
            "field 'datasets[0].shards': must be >= 1 or auto, got 0",
        ),
        (
            lambda d: d["datasets"][0].update(shards=-1),
            "field 'datasets[0].shards': must be >= 1 or auto, got -1",
        ),
        (
            lambda d: d["datasets"][0].update(shards="two"),
            "field 'datasets[0].shards': expected a positive integer or auto, got str 'two'",
        ),
        (
            lambda d: d["datasets"][0].update(shards=True),
            "field 'datasets[0].shards': expected a positive integer or auto, got a boolean (True)",
        ),
        (lambda d: d["datasets"][0].update(media="audio"), "expected one of image, video"),
        (lambda d: d["datasets"][0].update(form="webvid"), "field 'datasets[0].form': unknown key"),
        (lambda d: d["datasets"].append(dict(d["datasets"][0])), "duplicate dataset name 'web'"),
        (lambda d: d.update(datasets={"web": {}}), "field 'datasets': expected a list"),
        (lambda d: d.update(kubernetes={"secrets": "s"}), "field 'kubernetes.secrets': unknown key"),
        (lambda d: d.update(kubernetes={"node_selector": ["a"]}), "expected a mapping of strings"),
        (lambda d: d.update(kubernetes={"tolerations": [{"kee": "x"}]}), "tolerations[0].kee': unknown key"),
        (lambda d: d.update(slurm={"time": 14400}), "quote it"),
        (lambda d: d.update(slurm={"extra_sbatch": "#SBATCH -q x"}), "expected a list of strings"),
        (lambda d: d.update(name="Neva Prep"), "field 'name'"),
        (lambda d: (d.pop("model"), d.update(datasets=[])), "nothing to do"),
        (lambda d: d.update(kubernetes={"namespace": "ML"}), "field 'kubernetes.namespace'"),
        (lambda d: d.update(kubernetes={"volumes": {}}), "field 'kubernetes.volumes': expected a list"),
        (lambda d: _volume(d, mount_path=None), "field 'kubernetes.volumes[0].mount_path': missing"),
        (lambda d: _volume(d, mount_path="data"), "volumes[0].mount_path': 'data' must be an absolute"),
        (lambda d: _volume(d, mount_path="/data/"), "must be an absolute, normalised path"),
        (lambda d: _volume(d, mount_path="/"), "must be an absolute, normalised path other than /"),
        (lambda d: _volume(d, mount_path="/tmp"), "volumes[0].mount_path': /tmp overlaps /tmp"),
        (lambda d: _volume(d, mount_path="/tmp/x"), "/tmp/x overlaps /tmp"),
        (lambda d: _volume(d, host_path="/mnt"), "volumes[0]': give exactly one of persistent_volume_claim"),
        (lambda d: _volume(d, persistent_volume_claim=None), "give exactly one of"),
        (lambda d: _volume(d, persistent_volume_claim="My_Claim"), "'My_Claim' is not a PVC name"),
        (lambda d: _volume(d, name="scratch"), "volumes[0].name': 'scratch' must be a DNS-1123 label other"),
        (lambda d: _volume(d, read_only="yes"), "volumes[0].read_only': expected true or false"),
        (lambda d: _volume(d, claim="c"), "volumes[0].claim': unknown key"),
        (
            lambda d: _volume(d, persistent_volume_claim=None, nfs={"server": "nfs"}),
            "volumes[0].nfs.path': missing",
        ),
        (
            lambda d: _volume(d, persistent_volume_claim=None, nfs={"server": "n", "path": "exports"}),
            "volumes[0].nfs.path': 'exports' must be an absolute",
        ),
        (
            lambda d: _volume(d, _twice={"mount_path": "/data/sub"}),
            "volumes[1].mount_path': /data/sub overlaps",
        ),
        (lambda d: _volume(d, _twice={"mount_path": "/other"}), "volumes[1].name': duplicate volume name"),
        (lambda d: d.update(kubernetes={"wait_timeout_seconds": -1}), "wait_timeout_seconds': must be >= 0"),
        (lambda d: d.update(data_image=""), "field 'data_image': must not be empty"),
        (
            lambda d: d["datasets"][0].update(prompts="llava-brief"),
            "field 'datasets[0].prompts': no such built-in prompt list 'llava-brief' (have: image_brief,",
        ),
        # data convert's own option rules (records.check_options), at plan load
        (
            lambda d: d["datasets"][0].update({"from": "llava", "media": "image", "prompts": "image_brief"}),
            "field 'datasets[0].prompts': --prompts is for --from captions and webvid; --from llava keeps",
        ),
        (
            lambda d: d["datasets"][0].update(caption_column="name"),
            "field 'datasets[0].caption_column': --caption-column is for --from captions; --from webvid",
        ),
        (
            lambda d: d["datasets"][0].update(media="image"),
            "field 'datasets[0].from': --from webvid makes video records: use --media video",
        ),
        (
            lambda d: d["datasets"][0].update({"from": "captions", "media_column": "url"}),
            "field 'datasets[0].from': --from captions needs --media-column and --caption-column",
        ),
        (
            lambda d: d["datasets"][0].update(
                name="w" * 45, energon={"media_root": "s3://b/m"}
            ),  # neva-prep-www…-energon-index: 69 characters
            "field 'datasets[0].name': job name 'neva-prep-" + "w" * 45 + "-energon-index' is longer than 63",
        ),
    ],
)
def test_bad_plans_are_rejected_with_the_field(change: Any, message: str) -> None:
    data = _minimal()
    change(data)
    with pytest.raises(BadInput, match=None) as info:
        parse_plan(data, "p.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("p.yaml, field ")


def test_plan_check_reports_bad_plans_in_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text(
        yaml.safe_dump({**_minimal(), "datasets": [{"source": "x", "from": "llava", "media": "image"}]})
    )
    r = neva("plan", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"neva-prep: error: {bad}, field 'datasets[0].name': missing"]
    assert r.stdout == ""

    broken = tmp_path / "broken.yaml"
    broken.write_text("output: x\nmodel: [unclosed\n")
    r = neva("plan", "check", str(broken))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = neva("plan", "check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "plan.yaml"
    evil.write_text("output: !!python/object/apply:os.system ['echo pwned']\n")
    r = neva("plan", "check", str(evil))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    assert "pwned" not in r.stdout


def test_local_paths_of_the_check_and_energon_blocks_must_be_on_a_volume() -> None:
    """Pods read the check's tokenizer and media and the export's media: each must be on a mounted volume."""
    data = _minimal()
    data["output"] = "/data/out"
    data["kubernetes"] = {
        "volumes": [{"name": "data", "mount_path": "/data", "persistent_volume_claim": "neva-data"}]
    }
    data["datasets"][0]["energon"] = {"media_root": "/data/videos"}
    data["datasets"][0]["check"] = {
        "template": "plain", "tokenizer": "/data/out/tokenizers/tokenizer_neva.model", "seq_length": 8,
        "num_frames": 2, "media_root": "/data/videos",
    }  # fmt: skip
    check_for(parse_plan(data, "p.yaml"), "k8s")
    for block, key, value in (
        ("energon", "media_root", "/videos"),
        ("check", "tokenizer", "/models/tokenizer_neva.model"),
        ("check", "media_root", "/videos"),
    ):
        changed = _minimal() | {"output": data["output"], "kubernetes": data["kubernetes"]}
        changed["datasets"][0] |= {b: dict(data["datasets"][0][b]) for b in ("energon", "check")}
        changed["datasets"][0][block][key] = value
        with pytest.raises(
            BadInput, match=re.escape(f"field 'datasets[0].{block}.{key}': local path {value}")
        ):
            check_for(parse_plan(changed, "p.yaml"), "k8s")


def _auto_plan(shards: object = "auto") -> dict[str, Any]:
    """`_minimal` with a second dataset whose `shards` is `shards` (`None`: the key left out)."""
    data = _minimal()
    second = {"name": "llava", "source": "s3://b/l.json", "from": "llava", "media": "image", "shards": shards}
    data["datasets"].append({k: v for k, v in second.items() if v is not None})
    return data


@pytest.mark.parametrize("shards", ["auto", None])
def test_shards_auto_is_the_default_and_each_launcher_resolves_it(shards: object) -> None:
    plan = parse_plan(_auto_plan(shards), "p.yaml")
    web, llava = plan.datasets
    assert (web.shards, llava.shards) == (4, None)  # None: auto, not a count yet
    with pytest.raises(ValueError, match="unresolved"):
        shard_argv(plan, llava)  # no argv is built before a launcher resolved the plan

    cpus = usable_cpus()
    assert cpus == len(os.sched_getaffinity(0))
    here = resolve(plan, Target.LOCAL)
    assert [ds.shards for ds in here.datasets] == [4, cpus]  # a count written in the plan stays
    assert here.auto_shards == (
        f"llava: {cpus} shard{'s' * (cpus > 1)} (auto: {cpus} usable CPU{'s' * (cpus > 1)})",
    )
    assert shard_argv(here, here.datasets[1])[-2:] == ["--num-shards", str(cpus)]
    assert resolve(here, Target.K8S) is here  # resolved once: nothing left to choose

    one = resolve(plan, Target.LOCAL, workers=1)  # never more shards than commands run at once
    assert one.datasets[1].shards == 1
    assert one.auto_shards == (
        f"llava: 1 shard (auto: {cpus} usable CPU{'s' * (cpus > 1)}{', --workers 1' * (cpus > 1)})",
    )
    for target in (Target.K8S, Target.SLURM):
        cluster = resolve(plan, target)
        assert [ds.shards for ds in cluster.datasets] == [4, 1]
        assert cluster.auto_shards == ("llava: 1 shard (auto: 1 on a cluster; write shards: N to spread it)",)
    assert resolve(plan, Target.LOCAL) == resolve(plan, Target.LOCAL)  # a pure function of the plan and CPUs


def test_clusters_render_auto_as_one_shard(tmp_path: Path) -> None:
    """Kubernetes, Slurm and submitit keep today's count for `auto` (1): a cluster user says how wide."""
    plan = parse_plan(_auto_plan(), "p.yaml")
    manifests = {k8s.job_name(j): k8s.to_dict(j) for j in k8s.jobs(plan)}
    spec = manifests["neva-prep-llava"]["spec"]
    assert (spec["completions"], spec["parallelism"]) == (1, 1)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--num-shards") + 1] == "1"
    assert manifests["neva-prep-web"]["spec"]["completions"] == 4

    scripts = {job.script: job.text for job in slurm.render(plan)}
    llava = next(text for name, text in scripts.items() if "llava" in name and "merge" not in name)
    assert "#SBATCH --array=0-0%1\n" in llava and "--num-shards 1" in llava

    groups = {g.key: g for g in submitit._groups(plan)}
    assert [t.label for t in groups["llava"].tasks] == ["llava 1/1"]

    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_auto_plan()))
    for target in ("slurm", "k8s"):
        r = neva("plan", "check", str(path), "--for", target)
        assert r.returncode == 0, r.stderr
        assert "--from llava --media image --num-shards 1" in r.stdout
        assert "  llava: 1 shard (auto: 1 on a cluster; write shards: N to spread it)" in r.stdout
    r = neva("plan", "check", str(path))  # no launcher: a cluster's count, and what launch local would do
    assert r.returncode == 0 and "--from llava --media image --num-shards 1" in r.stdout
    assert "  under launch local here: llava: " in r.stdout


@pytest.mark.parametrize("ncpus", [1, 2])
def test_auto_under_launch_local_follows_the_cpus_this_process_may_use(ncpus: int, tmp_path: Path) -> None:
    """taskset / a cpuset narrows the affinity mask: `auto` counts the CPUs left, not the machine's."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < ncpus:
        pytest.skip(f"needs {ncpus} usable CPUs, have {len(cpus)}")
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_auto_plan(None)))
    r = subprocess.run(
        [sys.executable, "-m", "neva_prep.cli", "plan", "check", str(path), "--for", "local"],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus[:ncpus]),
    )
    assert r.returncode == 0, r.stderr
    many = "s" if ncpus > 1 else ""
    assert f"  llava: {ncpus} shard{many} (auto: {ncpus} usable CPU{many})" in r.stdout
    assert f"--from llava --media image --num-shards {ncpus}" in r.stdout
