"""Run a plan on this machine: the same `neva-prep` commands the schedulers run, as subprocesses.

Shards run in a pool of K worker processes (a thread per worker waits on its subprocess), the model step
alongside them; a dataset's merge starts once all its shards succeeded. Like the schedulers, the exit code
says whether a retry can help: 2 when any command reported bad input, else 1 when any failed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from neva_prep import storage
from neva_prep.cpus import usable_cpus
from neva_prep.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_FAILED, EXIT_OK
from neva_prep.launch.plan import (
    DatasetSpec,
    Plan,
    Target,
    check_argv,
    dataset_output,
    energon_argv,
    merge_argv,
    model_argv,
    resolve,
    shard_argv,
)
from neva_prep.progress import INTERVAL_ENV

NEVA_PREP = [sys.executable, "-m", "neva_prep.cli"]


@dataclass(frozen=True)
class Task:
    """One command of the plan: `label` is what the progress lines call it."""

    label: str
    argv: list[str]
    dataset: str | None = None  # the dataset this shard or merge belongs to
    merge: bool = False


@dataclass(frozen=True)
class Outcome:
    task: Task
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == EXIT_OK

    def line(self) -> str:
        """Progress: the command's own summary (indented) when it worked, its error line otherwise."""
        if self.ok:
            said = [f"    {line.strip()}" for line in self.stdout.splitlines() if line.strip()]
            return "\n".join([f"[{self.task.label}] ok in {self.seconds:.1f}s", *said])
        # the last line that says something (usage errors come framed in box-drawing characters)
        err = [line.strip("│╭╮╰╯─ ") for line in self.stderr.splitlines()]
        err = [line for line in err if any(c.isalnum() for c in line)]
        why = err[-1] if err else "(no message)"
        return f"[{self.task.label}] FAILED (exit {self.returncode}) in {self.seconds:.1f}s: {why}"


@dataclass
class LocalRun:
    """What `launch local` did: every command's outcome, and what landed in the output."""

    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        codes = [o.returncode for o in self.outcomes]
        if EXIT_BAD_INPUT in codes:
            return EXIT_BAD_INPUT
        if EXIT_CHECK_FAILED in codes and set(codes) <= {EXIT_OK, EXIT_CHECK_FAILED} and not self.skipped:
            return EXIT_CHECK_FAILED  # everything ran; a data check found problems (see its report)
        if any(c != EXIT_OK for c in codes) or self.skipped:
            return EXIT_FAILED
        return EXIT_OK

    def summary(self) -> str:
        """The final table: per dataset input rows / converted / rejected, then the model outputs."""
        rows = [("dataset", "input rows", "converted", "rejected", "output")]
        for ds in self.plan.datasets:
            rows.append((ds.name, *_dataset_counts(self.plan, ds)))
        width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, width, strict=True)).rstrip() for r in rows]
        if self.plan.model is not None:
            lines.append("")
            lines += [f"model: {line}" for line in _model_outputs(self.plan)]
        failed = [o for o in self.outcomes if not o.ok]
        verdict = "ok" if self.exit_code == EXIT_OK else f"FAILED ({len(failed)} command(s) failed)"
        if self.exit_code == EXIT_CHECK_FAILED:
            verdict = "a data check found problems (see its report.html)"
        lines.append("")
        lines += [f"skipped: {s}" for s in self.skipped]
        lines.append(f"{len(self.outcomes)} command(s) run, {verdict}")
        return "\n".join(lines)


def _dataset_counts(plan: Plan, ds: DatasetSpec) -> tuple[str, str, str, str]:
    out = dataset_output(plan, ds)
    stats_url = storage.join(out, "stats.json")
    result = storage.join(out, f"{ds.name}.json")
    if not storage.exists(stats_url) or not storage.exists(result):
        return ("-", "-", "-", "(not merged)")
    stats = json.loads(storage.read_text(stats_url))

    def count(key: str) -> str:
        value = stats.get(key)
        return f"{value:,}" if isinstance(value, int) else "?"

    return (
        count("input_rows"),
        count("converted"),
        count("rejected"),
        storage.redact(result),
    )


def _model_outputs(plan: Plan) -> list[str]:
    assert plan.model is not None
    found = []
    for url in (
        storage.join(plan.output, "checkpoints", f"{plan.model.name}.nemo"),
        storage.join(plan.output, "tokenizers", "tokenizer_neva.model"),
    ):
        if storage.exists(url):
            found.append(f"{storage.redact(url)} ({storage.size(url):,} bytes)")
        else:
            found.append(f"{storage.redact(url)} (missing)")
    return found


def tasks(plan: Plan) -> tuple[list[Task], dict[str, Task]]:
    """The commands to start at once (model step, every shard) and each dataset's merge, run after."""
    first: list[Task] = []
    if plan.model is not None:
        first.append(Task("model", model_argv(plan)))
    merges: dict[str, Task] = {}
    for ds in plan.datasets:
        base = shard_argv(plan, ds)
        for i in range(ds.num_shards):
            argv = [*base, "--shard-index", str(i)]
            first.append(Task(f"{ds.name} {i + 1}/{ds.num_shards}", argv, ds.name))
        merges[ds.name] = Task(f"{ds.name} merge", merge_argv(plan, ds), ds.name, merge=True)
    return first, merges


def energon_tasks(plan: Plan) -> tuple[dict[str, list[Task]], dict[str, Task]]:
    """Per dataset with `energon:`, the export shards to start once its merge succeeded, and (under the
    group name `NAME energon`) the finalize step to run once they all succeeded, as a merge follows shards."""
    exports: dict[str, list[Task]] = {}
    finalize: dict[str, Task] = {}
    for ds in plan.datasets:
        if ds.energon is None:
            continue
        group, base, n = f"{ds.name} energon", energon_argv(plan, ds), ds.energon.shards
        exports[ds.name] = [
            Task(f"{group} {i + 1}/{n}", [*base, "--shard-index", str(i)], group) for i in range(n)
        ]
        finalize[group] = Task(f"{group} index", energon_argv(plan, ds, finalize=True), group, merge=True)
    return exports, finalize


def check_tasks(plan: Plan) -> tuple[dict[str, list[Task]], dict[str, Task]]:
    """Per dataset with `check:`, what starts once its merge succeeded: the whole check (a task that ends its
    group) or its shards, whose `--merge` runs (under the group name `NAME check`) once they all succeeded."""
    starts: dict[str, list[Task]] = {}
    merges: dict[str, Task] = {}
    for ds in plan.datasets:
        if ds.check is None:
            continue
        group, n = f"{ds.name} check", ds.check.shards
        if n == 1:
            starts[ds.name] = [Task(group, check_argv(plan, ds), group, merge=True)]
            continue
        base = check_argv(plan, ds)
        starts[ds.name] = [
            Task(f"{group} {i + 1}/{n}", [*base, "--shard-index", str(i)], group) for i in range(n)
        ]
        merges[group] = Task(f"{group} merge", check_argv(plan, ds, merge=True), group, merge=True)
    return starts, merges


LIVE_INTERVAL_S = "10"
"""Progress lines of the commands `launch local` runs come this often (unless $NEVA_PREP_PROGRESS_S says)."""


def _execute(task: Task, echo: Callable[[str], None]) -> Outcome:
    """Run one command; its stderr (progress lines, errors) is shown live, prefixed with the task's label."""
    argv = NEVA_PREP + task.argv[1:] if task.argv[:1] == ["neva-prep"] else task.argv
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")}
    env.setdefault(INTERVAL_ENV, LIVE_INTERVAL_S)
    start = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        out, err = proc.stdout, proc.stderr
        assert out is not None and err is not None
        stdout: list[str] = []
        reader = threading.Thread(target=lambda: stdout.append(out.read()), daemon=True)
        reader.start()
        stderr: list[str] = []
        for line in err:
            stderr.append(line)
            if line.strip():
                echo(f"  [{task.label}] {line.rstrip()}")
        reader.join()
        returncode = proc.wait()
    return Outcome(task, returncode, time.monotonic() - start, "".join(stdout), "".join(stderr))


def run_local(plan: Plan, workers: int | None = None, echo: Callable[[str], None] = print) -> LocalRun:
    """Run every command of `plan` here, K at a time (default: the usable CPUs), a `shards: auto` dataset in
    as many shards (`plan.resolve`); returns their outcomes (raises only for an output that cannot be
    written, before anything runs: one line, rather than the same error from every command)."""
    storage.ensure_writable(plan.output)
    workers = max(1, workers or usable_cpus())
    plan = resolve(plan, Target.LOCAL, workers=workers)
    for line in plan.auto_shards:
        echo(line)
    first, merges = tasks(plan)
    exports, finalize = energon_tasks(plan)
    merges.update(finalize)
    checks, check_merges = check_tasks(plan)
    merges.update(check_merges)
    remaining = {ds.name: ds.num_shards for ds in plan.datasets}
    remaining.update({t[0].dataset: len(t) for t in exports.values() if t[0].dataset})
    remaining.update({t[0].dataset: len(t) for t in checks.values() if t[0].dataset and not t[0].merge})
    failed: set[str] = set()
    result = LocalRun(plan)
    total = len(first) + len(merges) + sum(map(len, exports.values())) + sum(map(len, checks.values()))
    echo(f"running {total} command(s) with {workers} worker(s)")
    lock = threading.Lock()

    def live(line: str) -> None:  # from the worker threads: a running command's stderr, as it comes
        with lock:
            echo(line)

    def execute(task: Task) -> Outcome:
        return _execute(task, live)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[Outcome]] = {pool.submit(execute, t) for t in first}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: f.result().task.label):
                outcome = future.result()
                result.outcomes.append(outcome)
                echo(outcome.line())
                if not outcome.ok:
                    echo(f"    command: {storage.redact(shlex.join(outcome.task.argv))}")
                name = outcome.task.dataset
                if name is None:
                    continue
                if outcome.task.merge:
                    if outcome.ok and name in exports:  # the dataset's Energon export follows its merge
                        pending |= {pool.submit(execute, t) for t in exports[name]}
                    if outcome.ok and name in checks:  # and its data check
                        pending |= {pool.submit(execute, t) for t in checks[name]}
                    continue
                remaining[name] -= 1
                if not outcome.ok:
                    failed.add(name)
                if remaining[name] == 0:
                    if name in failed:
                        result.skipped.append(f"{name} merge (a shard failed)")
                    else:
                        pending.add(pool.submit(execute, merges[name]))
    return result
