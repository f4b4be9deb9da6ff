"""`launch local` and the built-in sample: what `make run` does, end to end, through the real steps."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from conftest import REPO, neva
from neva_prep.launch.local import tasks
from neva_prep.launch.plan import load_plan, merge_argv, parse_plan, shard_argv


def _outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_run_sample_end_to_end(tmp_path: Path) -> None:
    made = neva("sample", str(tmp_path / "sample"))
    assert made.returncode == 0, made.stderr
    plan_path = Path(made.stdout.strip())
    assert plan_path == tmp_path / "sample" / "plan.yaml"
    plan = load_plan(str(plan_path))
    assert plan.model is not None and plan.model.gpus == 0
    assert [(d.name, d.from_, d.media, d.shards) for d in plan.datasets] == [
        ("webvid", "webvid", "video", 3),
        ("llava", "llava", "image", 2),
    ]

    run = neva("launch", "local", str(plan_path), "--workers", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "sample" / "output"
    assert (out / "checkpoints" / "llama-tiny.nemo").stat().st_size > 0
    assert (out / "tokenizers" / "tokenizer_neva.model").stat().st_size > 0
    for ds, rows in (("webvid", 20), ("llava", 10)):
        stats = json.loads((out / "datasets" / ds / "stats.json").read_text())
        records = json.loads((out / "datasets" / ds / f"{ds}.json").read_text())
        # the sample holds exactly one bad row per dataset: the rejects show up, counts add up
        assert (stats["input_rows"], stats["converted"], stats["rejected"]) == (rows, rows - 1, 1)
        assert len(records) == rows - 1
        line = next(ln for ln in run.stdout.splitlines() if ln.startswith(f"{ds} "))
        assert line.split()[1:4] == [str(rows), str(rows - 1), "1"]  # the final table
        rejects = (out / "datasets" / ds / "rejects.jsonl").read_text().splitlines()
        assert len(rejects) == 1 and ".." in rejects[0]
    assert "8 command(s) run, ok" in run.stdout
    assert "[webvid 2/3] ok" in run.stdout and "[llava merge] ok" in run.stdout

    # the same output as running the data step by hand, in one shard, without a launcher
    by_hand = tmp_path / "by-hand"
    manual = parse_plan({**yaml.safe_load(plan_path.read_text()), "output": str(by_hand), "model": None}, "m")
    single = dataclasses.replace(manual.dataset("webvid"), shards=1)
    assert neva(*shard_argv(manual, single)[1:]).returncode == 0
    assert neva(*merge_argv(manual, single)[1:]).returncode == 0
    name = "datasets/webvid/webvid.json"
    assert (by_hand / name).read_bytes() == (out / name).read_bytes()

    # re-running is safe: finished shards and the model are skipped, the outputs stay byte-identical
    before = _outputs(out)
    again = neva("launch", "local", str(plan_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert _outputs(out) == before


def test_bad_input_exits_2_and_skips_only_that_merge(tmp_path: Path) -> None:
    data = {
        "output": str(tmp_path / "out"),
        "datasets": [
            {"name": "good", "source": str(REPO / "job/neva_prep/sample/llava.json"), "from": "llava"}
            | {"media": "image", "shards": 2},
            {"name": "missing", "source": str(tmp_path / "nope.csv"), "from": "webvid", "media": "video"}
            | {"shards": 1},
        ],
    }
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data))
    r = neva("launch", "local", str(plan), "--workers", "2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "[missing 1/1] FAILED (exit 2)" in r.stdout and "no such file" in r.stdout
    assert "skipped: missing merge (a shard failed)" in r.stdout
    assert (tmp_path / "out/datasets/good/good.json").exists()  # the other dataset still finished
    assert not (tmp_path / "out/datasets/missing/missing.json").exists()
    assert "missing  -" in r.stdout  # the table says it was not merged


def test_bad_plan_exits_2_before_running_anything(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("output: x\ndatasets: [{name: a, source: s, from: csv, media: image}]\n")
    r = neva("launch", "local", str(plan))
    assert r.returncode == 2
    assert r.stderr.strip() == f"neva-prep: error: {plan}, field 'datasets[0].from': expected one of " + (
        "webvid, captions, llava, got 'csv'"
    )
    assert r.stdout == ""


def test_local_tasks_are_the_plan_argv_plus_the_shard_index() -> None:
    data = {
        "output": "/o",
        "model": {"source": "/hf", "name": "m", "gpus": 0},
        "datasets": [{"name": "w", "source": "/w.csv", "from": "webvid", "media": "video", "shards": 3}],
    }
    plan = parse_plan(data, "p")
    first, merges = tasks(plan)
    assert [t.label for t in first] == ["model", "w 1/3", "w 2/3", "w 3/3"]
    ds = plan.datasets[0]
    for i, t in enumerate(first[1:]):
        assert t.argv == [*shard_argv(plan, ds), "--shard-index", str(i)]
    assert merges["w"].argv == merge_argv(plan, ds) and merges["w"].merge


def test_auto_shards_spread_a_dataset_over_the_cpus_and_write_the_same_bytes(tmp_path: Path) -> None:
    """The sample's datasets without `shards:`: `launch local` splits each over the usable CPUs, says so,
    and writes what one shard writes."""
    sample = Path(neva("sample", str(tmp_path / "sample")).stdout.strip())
    data = yaml.safe_load(sample.read_text())
    data.pop("model")
    for ds in data["datasets"]:
        del ds["shards"]
    auto = tmp_path / "auto.yaml"
    auto.write_text(yaml.safe_dump({**data, "output": str(tmp_path / "auto")}))
    for ds in data["datasets"]:
        ds["shards"] = 1
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({**data, "output": str(tmp_path / "one")}))

    run = neva("launch", "local", str(auto))
    assert run.returncode == 0, run.stdout + run.stderr
    n = len(os.sched_getaffinity(0))  # what the child may use: it inherits this mask
    many = "s" if n > 1 else ""
    assert run.stdout.splitlines()[:3] == [
        f"webvid: {n} shard{many} (auto: {n} usable CPU{many})",
        f"llava: {n} shard{many} (auto: {n} usable CPU{many})",
        f"running {2 * n + 2} command(s) with {n} worker(s)",
    ]
    assert f"[webvid {n}/{n}] ok" in run.stdout and f"merged {n} shard(s)" in run.stdout

    single = neva("launch", "local", str(one))
    assert single.returncode == 0, single.stdout + single.stderr
    assert "(auto:" not in single.stdout and "[webvid 1/1] ok" in single.stdout
    for name in ("webvid/webvid.json", "webvid/rejects.jsonl", "llava/llava.json", "llava/rejects.jsonl"):
        assert (tmp_path / "auto/datasets" / name).read_bytes() == (
            tmp_path / "one/datasets" / name
        ).read_bytes()


def test_sample_never_deletes_files_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "input").mkdir(parents=True)
    (mine / "input" / "thesis.tex").write_text("years of work")
    (mine / "plan.yaml").write_text("my: plan\n")
    r = neva("sample", str(mine))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and str(mine) in r.stderr and "--force" in r.stderr
    assert (mine / "input" / "thesis.tex").read_text() == "years of work"
    assert (mine / "plan.yaml").read_text() == "my: plan\n"
    assert sorted(p.name for p in mine.iterdir()) == ["input", "plan.yaml"]

    # a previous sample is re-made in place (what `make run` does on every run)
    sample = tmp_path / "sample"
    assert neva("sample", str(sample)).returncode == 0
    (sample / "output").mkdir()  # what `launch local` left there stays
    again = neva("sample", str(sample))
    assert again.returncode == 0, again.stderr
    assert (sample / "output").is_dir() and (sample / "input" / "llama-tiny" / "config.json").is_file()

    # a sample made before the marker existed is recognised by its plan's header
    (sample / ".neva-prep-sample").unlink()
    assert neva("sample", str(sample)).returncode == 0

    # --force: the user says so
    forced = neva("sample", str(mine), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (mine / "input" / "llama-tiny" / "config.json").is_file()
