"""submitit launcher: a plan run from Python (a notebook, a script) or `neva-prep launch submitit`.

HPC users drive Slurm from Python with submitit; this gives them the plan as submitit Jobs. What each job
runs is a `Command`: the argv `plan.py` builds, so a task runs exactly the command the other launchers run
and the pickle holds nothing but that argv. The job's Python must import submitit and neva_prep (the
submitting virtualenv by default, or `python` inside the plan's container).

- Slurm: the model job, one array per dataset (`submit_array`, at most `array_parallelism` tasks at once)
  and each merge with `--dependency=afterok:<array>` and `--kill-on-invalid-dep=yes`, all submitted at once;
  after the merge, alike, the dataset's Energon export (array, then finalize) and data check (one job, or
  array then --merge).
- local / debug: submitit knows no dependencies there, so `submit_plan` keeps the order itself: each
  dataset's shards K at a time, its merge once they all succeeded, then its export and check the same way;
  the model step runs alongside.
- Exit codes: submitit's worker exits 1 whatever failed, so the command's own code (2 = bad input) travels
  in the job's result as `CommandFailed` and `exit_code` reads it back.
- Retries: submitit requeues a job only when Slurm preempts it (a signal before the time limit); failures
  and time-outs are final, so a bad-input task fails once. A requeued or re-submitted command skips what
  is complete (shard `DONE` markers, the model manifest), so submitting the plan again is always safe.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import submitit

from neva_prep import storage
from neva_prep.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, StepFailed
from neva_prep.launch.local import Task, check_tasks, energon_tasks, tasks
from neva_prep.launch.plan import (
    Plan,
    Target,
    check_job_name,
    energon_job_name,
    load_plan,
    merge_job_name,
    model_job_name,
    resolve,
    shards_job_name,
)
from neva_prep.launch.slurm import array_parallelism
from neva_prep.launch.slurm import wait as wait_slurm

CLUSTERS = ("slurm", "local", "debug")
_EXIT = re.compile(r"CommandFailed: exit (\d+): (.*)")


class CommandFailed(Exception):
    """A plan command exited non-zero; `returncode` keeps 2 (bad input) apart from 1 (a retry may help)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message, returncode)
        self.message, self.returncode = message, returncode

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Command:
    """One `neva-prep ...` argv, run by the job's own Python (`python -m neva_prep.cli`), as `launch local`
    does; stdout and stderr go to the job's logs as they come, stdout is also the job's result."""

    argv: tuple[str, ...]

    def __call__(self) -> str:
        argv = [sys.executable, "-m", "neva_prep.cli", *self.argv[1:]]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said: list[str] = []
        relay = threading.Thread(target=_relay, args=(proc.stderr, said), daemon=True)
        try:
            relay.start()
            out = []
            for line in proc.stdout or ():
                sys.stdout.write(line)
                sys.stdout.flush()
                out.append(line)
            code = proc.wait()
            relay.join()
        finally:  # time-out or preemption: stop the command with the job
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        if code != EXIT_OK:
            reason = said[-1] if said else "(no message)"
            raise CommandFailed(f"exit {code}: {reason}", code)
        return "".join(out)


def _relay(stream: Iterable[str] | None, said: list[str]) -> None:
    """Copy the command's stderr through; remember the last line that says something (the error)."""
    for line in stream or ():
        sys.stderr.write(line)
        sys.stderr.flush()
        text = line.strip("│╭╮╰╯─ \n")
        if any(c.isalnum() for c in text):
            said.append(text)


# --- the plan's Slurm options as submitit parameters -----------------------------------------------------


def time_minutes(value: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, as submitit wants."""
    days, dash, clock = value.strip().rpartition("-")
    d, numbers = 0, []
    try:
        d = int(days) if dash else 0
        numbers = [int(p) for p in clock.split(":")]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 3 or min(numbers) < 0 or d < 0:
        raise BadInput(f"slurm.time: {value!r} is not a Slurm time limit (e.g. '04:00:00' or '1-00:00:00')")
    if dash or len(numbers) == 3:
        h, m, s = [*numbers, 0, 0][:3]
    else:
        h, (m, s) = 0, [*numbers, 0][:2]
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    return max(1, -(-seconds // 60))


def _single_line(value: str, what: str) -> str:
    """A line break inside a `#SBATCH` value would turn the rest into shell code."""
    if any(c in value for c in "\n\r\0"):
        raise BadInput(f"{what}: {value!r} must be a single line to go into an sbatch script")
    return value


def _extra_sbatch(lines: Iterable[str]) -> dict[str, str | bool]:
    """`slurm.extra_sbatch` lines ("#SBATCH --qos=normal", "--exclusive") as submitit's
    `additional_parameters`; long options only, since submitit writes every key as `--key`."""
    options: dict[str, str | bool] = {}
    for i, line in enumerate(lines):
        what = f"slurm.extra_sbatch[{i}]"
        words = shlex.split(_single_line(line, what).strip().removeprefix("#SBATCH"))
        while words:
            word = words.pop(0)
            if not word.startswith("--") or len(word) < 3:
                raise BadInput(f"{what}: {line!r}: use long options (--qos=normal) with submitit")
            key, eq, value = word[2:].partition("=")
            if not eq and words and not words[0].startswith("-"):
                value, eq = words.pop(0), "="
            options[key] = value if eq else True
    return options


def slurm_parameters(plan: Plan, job_name: str, *, gpus: int = 0) -> dict[str, Any]:
    """The plan's `slurm:` section as `SlurmExecutor.update_parameters(...)` arguments for one job."""
    s = plan.slurm
    params: dict[str, Any] = {
        "job_name": _single_line(job_name, "name"),
        "time": time_minutes(s.time),
        "cpus_per_task": s.cpus_per_task,
        "setup": [_single_line(line, f"slurm.setup[{i}]") for i, line in enumerate(s.setup)],
        "additional_parameters": _extra_sbatch(s.extra_sbatch),
    }
    for key, value in (("partition", s.partition), ("account", s.account), ("mem", s.mem)):
        if value:
            params[key] = _single_line(value, f"slurm.{key}")
    if gpus > 0:
        params["gres"] = f"gpu:{gpus}"
    if s.container_image:  # pyxis / enroot: the srun that starts the job's Python runs in the container
        params["srun_args"] = [
            f"--container-image={_single_line(s.container_image, 'slurm.container_image')}"
        ]
        if s.container_mounts:
            mounts = _single_line(s.container_mounts, "slurm.container_mounts")
            params["srun_args"].append(f"--container-mounts={mounts}")
    return params


# --- submission ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A submitted command: `label` as `launch local` names it ("model", "webvid 2/3", "webvid merge")."""

    label: str
    job: submitit.Job[Any]
    dataset: str | None = None


@dataclass(frozen=True)
class StepEnd:
    step: Step
    exit_code: int
    reason: str = ""

    def line(self) -> str:
        head = f"[{self.step.label}] job {self.step.job.job_id}"
        if self.exit_code == EXIT_OK:
            return f"{head}: ok"
        why = " bad input, not retried" if self.exit_code == EXIT_BAD_INPUT else ""
        return f"{head}: FAILED (exit {self.exit_code}){why}: {self.reason}"


@dataclass
class SubmititLaunch:
    """What `launch submitit` did: the jobs, the merges it held back (local), and, when followed, the ends."""

    cluster: str
    folder: str
    steps: list[Step] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ends: list[StepEnd] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        codes = [e.exit_code for e in self.ends]
        if EXIT_BAD_INPUT in codes:
            return EXIT_BAD_INPUT
        return EXIT_FAILED if self.skipped or any(codes) else EXIT_OK

    def summary(self) -> str:
        lines = [f"submitit ({self.cluster}): {len(self.steps)} job(s), logs and results in {self.folder}"]
        if not self.ends:
            lines += [f"  {s.label}: job {s.job.job_id}" for s in self.steps]
        lines += [e.line() for e in self.ends if e.exit_code != EXIT_OK]  # ok ones went by as progress
        lines += [f"skipped: {s}" for s in self.skipped]
        if self.ends or self.skipped:
            failed = sum(e.exit_code != EXIT_OK for e in self.ends)
            verdict = "ok" if self.exit_code == EXIT_OK else f"FAILED ({failed} job(s) failed)"
            lines.append(f"{len(self.ends)} job(s) ended, {verdict}")
        return "\n".join(lines)


def default_cluster() -> str:
    """Slurm when `srun` is on PATH, else local (submitit's AutoExecutor decides the same way)."""
    return "slurm" if shutil.which("srun") else "local"


def _executor(cluster: str, folder: str, python: str | None) -> submitit.Executor:
    if cluster == "debug":
        return submitit.DebugExecutor(folder)
    if cluster == "local":
        return submitit.LocalExecutor(folder, python=python)
    try:
        return submitit.SlurmExecutor(folder, python=python)
    except RuntimeError:
        raise StepFailed("srun not found: run this on a Slurm login node, or use --cluster local") from None


def _job_python(plan: Plan, cluster: str, python: str | None) -> str | None:
    """None: submitit's default, this interpreter; in the plan's container, the image's `python`."""
    if python is None and cluster == "slurm" and plan.slurm.container_image:
        return "python"
    return python


@dataclass
class _Group:
    """Commands submitted together (one Slurm job or array) once the group `after` succeeded."""

    key: str
    job_name: str
    tasks: list[Task]
    limit: int = 1  # at once (an array's %K)
    after: str | None = None
    array: bool = False
    gpus: int = 0
    blocked: str = "a step before it failed"  # why it is skipped when `after` failed


def _groups(plan: Plan) -> list[_Group]:
    """The plan's steps in submission order, each naming the group it follows: the model; per dataset its
    shards, merge, then (after the merge) its Energon export and finalize, its check (and its --merge).
    `shards: auto` is a cluster's 1 on every submitit cluster, local included (`plan.resolve`)."""
    plan = resolve(plan, Target.SLURM)
    first, merges = tasks(plan)
    exports, finalize = energon_tasks(plan)
    checks, check_merges = check_tasks(plan)
    out = []
    if plan.model is not None:
        model = [t for t in first if t.dataset is None]
        out.append(_Group("model", model_job_name(plan), model, gpus=plan.model.gpus))
    for ds in plan.datasets:
        shards = [t for t in first if t.dataset == ds.name]
        out.append(
            _Group(ds.name, shards_job_name(plan, ds), shards, array_parallelism(plan, ds), array=True)
        )
        merge = f"{ds.name} merge"
        out.append(
            _Group(
                merge, merge_job_name(plan, ds), [merges[ds.name]], after=ds.name, blocked="a shard failed"
            )
        )
        if ds.name in exports:
            group = f"{ds.name} energon"
            limit = min(len(exports[ds.name]), plan.slurm.array_parallelism or len(exports[ds.name]))
            out.append(
                _Group(
                    group,
                    energon_job_name(plan, ds),
                    exports[ds.name],
                    limit,
                    merge,
                    True,
                    blocked="the merge failed",
                )
            )
            out.append(
                _Group(
                    f"{group} index",
                    energon_job_name(plan, ds, finalize=True),
                    [finalize[group]],
                    after=group,
                    blocked="an export shard failed",
                )
            )
        if ds.name in checks:
            group, started = f"{ds.name} check", checks[ds.name]
            sharded = group in check_merges
            limit = min(len(started), plan.slurm.array_parallelism or len(started))
            out.append(
                _Group(
                    group,
                    check_job_name(plan, ds),
                    started,
                    limit,
                    merge,
                    sharded,
                    blocked="the merge failed",
                )
            )
            if sharded:
                out.append(
                    _Group(
                        f"{group} merge",
                        check_job_name(plan, ds, merge=True),
                        [check_merges[group]],
                        after=group,
                        blocked="a check shard failed",
                    )
                )
    return out


def _submit_slurm(plan: Plan, folder: str, python: str | None) -> list[Step]:
    steps: list[Step] = []
    job_ids: dict[str, str] = {}  # group -> the id its followers depend on (an array's id covers its tasks)

    def executor(job_name: str, gpus: int = 0, **extra: Any) -> submitit.Executor:
        ex = _executor("slurm", folder, python)  # one per job: parameters accumulate in an executor
        params = slurm_parameters(plan, job_name, gpus=gpus)
        params["additional_parameters"].update(extra.pop("additional_parameters", {}))
        ex.update_parameters(**params, **extra)
        return ex

    for group in _groups(plan):
        extra: dict[str, Any] = {}
        if group.after is not None:
            extra["dependency"] = f"afterok:{job_ids[group.after]}"
            extra["additional_parameters"] = {
                "kill-on-invalid-dep": "yes"
            }  # cancelled, never pending forever
        if group.array:
            extra["array_parallelism"] = group.limit
        ex = executor(group.job_name, gpus=group.gpus, **extra)
        commands = [Command(tuple(t.argv)) for t in group.tasks]
        jobs = ex.submit_array(commands) if group.array else [ex.submit(commands[0])]
        dataset = None if group.key == "model" else group.tasks[0].dataset
        steps += [Step(t.label, j, dataset) for t, j in zip(group.tasks, jobs, strict=True)]
        job_ids[group.key] = jobs[0].job_id.split("_")[0]
    return steps


def _submit_in_order(
    plan: Plan,
    folder: str,
    cluster: str,
    python: str | None,
    on_end: Callable[[StepEnd], None],
    poll: float,
) -> tuple[list[Step], list[StepEnd], list[str]]:
    """local / debug: each group once the group it follows succeeded, at most its limit at a time. Returns
    once every group is submitted: a group nothing follows is not waited for here (`_follow` does that)."""
    minutes = time_minutes(plan.slurm.time)

    def submit(task: Task, gpus: int = 0) -> Step:
        ex = _executor(cluster, folder, python)
        if cluster == "local":  # submitit's local default time limit is 2 minutes
            ex.update_parameters(timeout_min=minutes, gpus_per_node=gpus)
        return Step(task.label, ex.submit(Command(tuple(task.argv))), task.dataset)

    groups = {g.key: g for g in _groups(plan)}
    queued = {key: deque(g.tasks) for key, g in groups.items()}
    running: dict[str, list[Step]] = {key: [] for key in groups}
    state: dict[str, str] = {}  # group -> "ok" / "failed" once all its tasks ended, "skipped", "submitted"
    failed: set[str] = set()
    followed = {g.after for g in groups.values() if g.after}
    steps: list[Step] = []
    ends: list[StepEnd] = []
    skipped: list[str] = []
    while len(state) < len(groups):
        for key, group in groups.items():
            if key in state:
                continue
            before = state.get(group.after) if group.after else "ok"
            if before is None:
                continue  # what it follows is still running
            if before != "ok":
                state[key] = "skipped"
                skipped.append(f"{key} ({group.blocked})")
                continue
            for step in list(running[key]):
                end = _ended(step)
                if end is None:
                    continue
                running[key].remove(step)
                ends.append(end)
                on_end(end)
                if end.exit_code != EXIT_OK:
                    failed.add(key)
            while queued[key] and len(running[key]) < group.limit:
                running[key].append(step := submit(queued[key].popleft(), group.gpus))
                steps.append(step)
            if not queued[key] and key not in followed:
                state[key] = "submitted"
            elif not queued[key] and not running[key]:
                state[key] = "failed" if key in failed else "ok"
        if len(state) < len(groups):
            time.sleep(poll)
    return steps, ends, skipped


def _ended(step: Step) -> StepEnd | None:
    """How the step ended, or None while it runs. A debug job runs when asked (`exception()` runs it
    without submitit's post-mortem debugger) and would run again if asked twice: ask once."""
    if not isinstance(step.job, submitit.DebugJob) and not step.job.done():
        return None
    return _end(step)


def _end(step: Step) -> StepEnd:
    """How a finished job ended: its command's exit code, read back from the job's result."""
    error = step.job.exception()
    if error is None:
        return StepEnd(step, EXIT_OK)
    if isinstance(error, CommandFailed):
        return StepEnd(step, error.returncode, error.message)
    found = _EXIT.findall(str(error))
    if found:
        code, reason = found[-1]
        return StepEnd(step, int(code), reason.strip())
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return StepEnd(step, EXIT_FAILED, lines[1] if len(lines) > 1 else (lines[0] if lines else "no result"))


def _follow_slurm(steps: list[Step], on_end: Callable[[StepEnd], None]) -> list[StepEnd]:
    """Wait with scontrol (submitit asks sacct, which clusters without accounting lack), then read each
    job's result; a job that left none (cancelled, killed) ends with its Slurm state."""
    ids = list(dict.fromkeys(s.job.job_id.split("_")[0] for s in steps))
    states = {t.job_id: t for t in wait_slurm(ids)}
    ends = []
    for step in steps:
        if step.job.paths.result_pickle.exists():
            end = _end(step)
        else:
            t = states.get(step.job.job_id)
            state = f"{t.state} (exit {t.exit_code})" if t else "unknown to scontrol"
            end = StepEnd(step, EXIT_FAILED, f"no result: {state}, see {step.job.paths.stderr}")
        ends.append(end)
        on_end(end)
    return ends


def _follow(steps: Iterable[Step], on_end: Callable[[StepEnd], None], poll: float) -> list[StepEnd]:
    pending = list(steps)
    ends = []
    while pending:
        for step in list(pending):
            end = _ended(step)
            if end is not None:
                pending.remove(step)
                ends.append(end)
                on_end(end)
        if pending:
            time.sleep(poll)
    return ends


def launch_submitit(
    plan: Plan | str,
    folder: str,
    *,
    cluster: str | None = None,
    wait: bool = False,
    python: str | None = None,
    on_end: Callable[[StepEnd], None] | None = None,
    poll: float = 1.0,
) -> SubmititLaunch:
    """Submit every command of `plan` with submitit; with `wait`, follow them to the end.

    Failures are in the result (`ends`, `exit_code`), never raised: what ran matters most when
    something failed. `python` is the command that starts the job's Python (default: this one)."""
    plan = load_plan(plan) if isinstance(plan, str) else plan
    cluster = cluster or default_cluster()
    if cluster not in CLUSTERS:
        raise BadInput(f"--cluster: expected one of {', '.join(CLUSTERS)}, got {cluster!r}")
    if not storage.is_local(folder):
        raise BadInput(f"{storage.redact(folder)}: the submitit folder must be a local (shared) directory")
    folder = folder.removeprefix("file://")
    storage.ensure_writable(folder)  # one line, exit 2, before any job is made
    storage.ensure_writable(plan.output)
    python = _job_python(plan, cluster, python)
    report = on_end or (lambda end: None)
    result = SubmititLaunch(cluster, folder)
    if cluster == "slurm":
        result.steps = _submit_slurm(plan, folder, python)
        if wait:
            result.ends = _follow_slurm(result.steps, report)
        return result
    result.steps, result.ends, result.skipped = _submit_in_order(plan, folder, cluster, python, report, poll)
    if wait or cluster == "debug":  # a debug job runs only when someone waits for it
        ended = {id(e.step) for e in result.ends}
        result.ends += _follow([s for s in result.steps if id(s) not in ended], report, poll)
    return result


def submit_plan(
    plan: Plan | str, folder: str, cluster: str | None = None, wait: bool = False, **options: Any
) -> list[submitit.Job[Any]]:
    """The plan as submitit Jobs (model, every shard, every merge), e.g. from a notebook:

        jobs = submit_plan("plan.yaml", "submitit-logs", cluster="slurm")
        [job.result() for job in jobs]      # each command's stdout; raises if a command failed

    On local and debug the merges are submitted after their shards ended, so this returns once the
    shards ran; a merge whose shards failed is not submitted. `options`: see `launch_submitit`."""
    return [s.job for s in launch_submitit(plan, folder, cluster=cluster, wait=wait, **options).steps]
