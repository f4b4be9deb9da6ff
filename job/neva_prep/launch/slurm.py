"""Slurm launcher: one plan -> sbatch scripts (model job, one array per dataset, its merge, and after the
merge the dataset's Energon export array + finalize and its data check) + `submit.sh`.

The scripts only run the argv lists `plan.py` builds, so a Slurm task runs exactly the command a user
would type; the data CLI reads `SLURM_ARRAY_TASK_ID` itself. Semantics worth knowing:
- each merge waits with `--dependency=afterok:<array>` (all tasks of the array succeeded) and is cancelled
  by `--kill-on-invalid-dep=yes` when one failed, rather than pending forever; the export and the check
  wait for the merge, the finalize for the export array, the check's --merge for the check array alike;
- nothing here requeues: Slurm only requeues on node failure or preemption, never on an exit code, so a
  task that exits 2 (bad input) fails once and stays failed;
- a killed or failed task is re-run by running `submit.sh` again (or `scontrol requeue`): finished shards
  find their completion marker and are skipped, so re-running is always safe.

`--submit` runs the rendered `submit.sh` (plain `sbatch --parsable`, not submitit) so that what Python
submits is byte for byte what a user submits by hand, with no pickles or shared Python environment needed.
Every plan value that reaches a script is shell-quoted; values with line breaks are refused.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from neva_prep import storage
from neva_prep.errors import BadInput, StepFailed
from neva_prep.launch.plan import (
    DatasetSpec,
    Plan,
    Target,
    check_argv,
    check_job_name,
    energon_argv,
    energon_job_name,
    load_plan,
    merge_argv,
    merge_job_name,
    model_argv,
    model_job_name,
    resolve,
    shard_argv,
    shards_job_name,
)

SUBMIT = "submit.sh"
MODEL_SCRIPT = "model.sbatch"
# Job states after which a job (or array task) will not run again by itself.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
# Pending reasons that waiting cannot resolve: the request exceeds what the partition, account or QOS
# allows, or a dependency failed. A job pending for one of these would wait for ever.
NEVER_STARTS = frozenset(
    {
        "AssocMaxCpuPerJobLimit",
        "AssocMaxMemPerJob",
        "AssocMaxNodesPerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
    }
)
# sbatch refusals that no retry changes (the plan asks what no node or partition offers)
_REFUSED = (
    "Requested node configuration is not available",
    "can not be satisfied",
    "Invalid account",
    "Invalid partition",
    "Invalid qos",
    "Requested time limit is invalid",
)


@dataclass(frozen=True)
class SlurmJob:
    """One rendered sbatch script; `after` names the script whose job must succeed first (afterok)."""

    name: str
    script: str
    kind: str  # "model" | "shards" | "merge" | "energon" | "energon-index" | "check" | "check-merge"
    text: str
    after: str | None = None


def shards_script(ds: DatasetSpec) -> str:
    return f"data-{ds.name}.sbatch"


def merge_script(ds: DatasetSpec) -> str:
    return f"merge-{ds.name}.sbatch"


def step_script(kind: str, ds: DatasetSpec) -> str:
    """The script of a step after the merge: `energon-NAME.sbatch`, `check-merge-NAME.sbatch`, ..."""
    return f"{kind}-{ds.name}.sbatch"


# --- rendering (pure) ------------------------------------------------------------------------------------


def _one_line(value: str, what: str) -> str:
    """Refuse line breaks: inside a `#SBATCH` comment a newline would turn the rest into shell code."""
    if any(c in value for c in "\n\r\0"):
        raise BadInput(f"{what}: {value!r} must be a single line to go into an sbatch script")
    return value


def _q(value: str, what: str) -> str:
    return shlex.quote(_one_line(value, what))


def _command(plan: Plan, argv: list[str], what: str) -> str:
    s = plan.slurm
    # Explicit: from Slurm 22.05 to 23.02 srun does not inherit the job's --cpus-per-task.
    prefix = ["srun", "--ntasks=1", f"--cpus-per-task={s.cpus_per_task}"]
    if s.container_image:
        prefix.append("--container-image=" + _q(s.container_image, "slurm.container_image"))
        if s.container_mounts:
            prefix.append("--container-mounts=" + _q(s.container_mounts, "slurm.container_mounts"))
    return " ".join(prefix + [_q(a, what) for a in argv])


def _script(plan: Plan, *, title: str, job_name: str, log: str, options: list[str], command: str) -> str:
    """The common shape of every script: header, #SBATCH options, strict shell, setup lines, one srun."""
    s = plan.slurm
    opts = [
        f"--job-name={_q(job_name, 'name')}",
        f"--output={_q(f'{s.log_dir}/{log}', 'slurm.log_dir')}",
        "--open-mode=append",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={s.cpus_per_task}",
        f"--time={_q(s.time, 'slurm.time')}",
    ]
    if s.partition:
        opts.append(f"--partition={_q(s.partition, 'slurm.partition')}")
    if s.account:
        opts.append(f"--account={_q(s.account, 'slurm.account')}")
    if s.mem:
        opts.append(f"--mem={_q(s.mem, 'slurm.mem')}")
    lines = [
        "#!/bin/bash",
        f"# {title}",
        "# Rendered by `neva-prep launch slurm` from plan "
        + _q(plan.name, "name")
        + "; submit with submit.sh.",
    ]
    lines += [f"#SBATCH {o}" for o in opts + options]
    for i, extra in enumerate(s.extra_sbatch):
        extra = _one_line(extra.strip(), f"slurm.extra_sbatch[{i}]")
        lines.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    lines += ["", "set -euo pipefail"]
    lines += [_one_line(line, f"slurm.setup[{i}]") for i, line in enumerate(s.setup)]
    lines.append(command)
    return "\n".join(lines) + "\n"


def array_parallelism(plan: Plan, ds: DatasetSpec) -> int:
    """How many tasks of a dataset's array run at once: both the dataset's `parallelism` and the plan's
    `slurm.array_parallelism` are caps, so the smaller one wins (default: every shard at once)."""
    caps = [ds.num_shards, ds.parallelism, plan.slurm.array_parallelism]
    return min(c for c in caps if c is not None)


def render(plan: Plan) -> tuple[SlurmJob, ...]:
    """The sbatch scripts of a plan, in submission order (model, then per dataset: array, merge)."""
    plan = resolve(plan, Target.SLURM)
    jobs: list[SlurmJob] = []
    if plan.model is not None:
        gpus = plan.model.gpus
        name = model_job_name(plan)
        text = _script(
            plan,
            title="Model step: HF LLaMA -> .nemo checkpoint + patched tokenizer.",
            job_name=name,
            log="%x-%j.out",
            options=[f"--gres=gpu:{gpus}"] if gpus > 0 else [],
            command=_command(plan, model_argv(plan), "model"),
        )
        jobs.append(SlurmJob(name, MODEL_SCRIPT, "model", text))
    for i, ds in enumerate(plan.datasets):
        what = f"datasets[{i}]"
        parallel = array_parallelism(plan, ds)
        name = shards_job_name(plan, ds)
        text = _script(
            plan,
            title=f"Dataset {ds.name}: {ds.num_shards} shards, one per array task (the CLI reads "
            "SLURM_ARRAY_TASK_ID).",
            job_name=name,
            log="%x-%A_%a.out",
            options=[f"--array=0-{ds.num_shards - 1}%{parallel}"],
            command=_command(plan, shard_argv(plan, ds), what),
        )
        jobs.append(SlurmJob(name, shards_script(ds), "shards", text))
        name = merge_job_name(plan, ds)
        text = _script(
            plan,
            title=f"Dataset {ds.name}: merge the shards once all succeeded (submit.sh adds afterok).",
            job_name=name,
            log="%x-%j.out",
            options=["--kill-on-invalid-dep=yes"],
            command=_command(plan, merge_argv(plan, ds), what),
        )
        jobs.append(SlurmJob(name, merge_script(ds), "merge", text, after=shards_script(ds)))
        jobs += _after_merge(plan, ds, what)
    return tuple(jobs)


def _after_merge(plan: Plan, ds: DatasetSpec, what: str) -> list[SlurmJob]:
    """The dataset's Energon export (array, then finalize) and data check (one job, or array then --merge),
    each after what it reads (submit.sh adds afterok)."""
    jobs: list[SlurmJob] = []

    def add(kind: str, name: str, title: str, argv: list[str], after: str, array: int | None = None) -> None:
        options = ["--kill-on-invalid-dep=yes"]
        if array is not None:
            options.insert(0, f"--array=0-{array - 1}%{min(array, plan.slurm.array_parallelism or array)}")
        text = _script(
            plan,
            title=f"Dataset {ds.name}: {title}",
            job_name=name,
            log="%x-%A_%a.out" if array is not None else "%x-%j.out",
            options=options,
            command=_command(plan, argv, what),
        )
        jobs.append(SlurmJob(name, step_script(kind, ds), kind, text, after=after))

    if ds.energon is not None:
        n = ds.energon.shards
        title = f"Energon export, {n} shard(s), one per array task, after the merge."
        add("energon", energon_job_name(plan, ds), title, energon_argv(plan, ds), merge_script(ds), n)
        title = "Energon export's finalize (index, stats) once every export shard succeeded."
        argv = energon_argv(plan, ds, finalize=True)
        add(
            "energon-index",
            energon_job_name(plan, ds, finalize=True),
            title,
            argv,
            step_script("energon", ds),
        )
    if ds.check is not None:
        n = ds.check.shards
        name, argv = check_job_name(plan, ds), check_argv(plan, ds)
        if n == 1:
            add("check", name, "data check after the merge (exit 3: problems found).", argv, merge_script(ds))
        else:
            title = f"data check, {n} shard(s), one per array task, after the merge."
            add("check", name, title, argv, merge_script(ds), n)
            title = (
                "data check --merge, the report, once every check shard succeeded (exit 3: problems found)."
            )
            argv = check_argv(plan, ds, merge=True)
            add("check-merge", check_job_name(plan, ds, merge=True), title, argv, step_script("check", ds))
    return jobs


def render_submit(plan: Plan, jobs: tuple[SlurmJob, ...]) -> str:
    """`submit.sh`: sbatch every script in order, wiring each merge to its array; prints `NAME JOBID`."""
    lines = [
        "#!/usr/bin/env bash",
        "# Submit plan " + _q(plan.name, "name") + " to Slurm: the model job and every dataset's shard",
        "# array start at once; each merge waits for all tasks of its array (afterok) and is cancelled",
        "# if one fails; a dataset's export and check wait for its merge, their finalize / --merge for",
        "# their array. Run it from the directory the logs should go under. Re-running is safe:",
        "# finished shards are skipped. Prints one `JOBNAME JOBID` line per job.",
        "set -euo pipefail",
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        "mkdir -p -- " + _q(plan.slurm.log_dir, "slurm.log_dir"),
        "",
        "submit() {  # submit JOBNAME SCRIPT [SBATCH-OPTION...]: sets $job to the job id",
        "  local name=$1 script=$2",
        "  shift 2",
        '  job=$(sbatch --parsable "$@" "$here/$script")',
        "  job=${job%%;*}",
        '  echo "$name $job"',
        "}",
        "",
    ]
    var: dict[str, str] = {}
    for n, job in enumerate(jobs):
        deps = f" --dependency=afterok:${var[job.after]}" if job.after else ""
        lines.append(f"submit {_q(job.name, 'name')} {_q(job.script, 'name')}{deps}")
        if any(other.after == job.script for other in jobs):
            var[job.script] = f"job_{n}"
            lines[-1] += f"; job_{n}=$job"
    return "\n".join(lines) + "\n"


def render_files(plan: Plan) -> dict[str, str]:
    """File name -> content for the whole rendering (the scripts and `submit.sh`)."""
    jobs = render(plan)
    files = {job.script: job.text for job in jobs}
    files[SUBMIT] = render_submit(plan, jobs)
    return files


# --- writing, submitting, following ---------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    name: str
    job_id: str


@dataclass(frozen=True)
class TaskState:
    """One job or array task as `scontrol show job` reports it."""

    job_id: str  # "123" or "123_4" for an array task
    name: str
    state: str
    exit_code: int
    signal: int
    restarts: int
    reason: str
    request: str = ""  # what the job asks, as Slurm's TRES: "cpu=999,mem=24105M,node=1"

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    @property
    def never_starts(self) -> bool:
        """Pending for a reason that waiting cannot resolve."""
        return self.state == "PENDING" and self.reason in NEVER_STARTS

    def line(self) -> str:
        """Progress: `NAME ID: STATE`, with the reason while it pends."""
        why = f" ({self.reason})" if self.state == "PENDING" and self.reason not in ("", "None") else ""
        return f"{self.name} {self.job_id}: {self.state}{why}"


class NeverStarts(BadInput):
    """A job pends for a reason waiting cannot resolve; `wait` cancelled it."""

    def __init__(self, task: TaskState) -> None:
        self.task = task
        super().__init__(
            f"Slurm job {task.name} {task.job_id} can never start: pending with reason {task.reason}"
            f" (it asks {task.request or 'what the plan says'}); cancelled it. Lower the plan's"
            " slurm: cpus_per_task / mem / time, or pick another partition"
        )


@dataclass
class SlurmLaunch:
    """What `neva-prep launch slurm` did: the files it wrote and, with --submit, the jobs and their ends."""

    out: str
    files: list[str]
    submitted: list[Submitted] = field(default_factory=list)
    final: list[TaskState] = field(default_factory=list)
    never_starts: NeverStarts | None = None

    @property
    def failed(self) -> list[TaskState]:
        return [t for t in self.final if not t.ok]

    @property
    def exit_code(self) -> int:
        """0, or what a followed run failed with: 2 when a task exited 2 (bad input) or can never start,
        else 1."""
        if self.never_starts is not None:
            return 2
        if not self.failed:
            return 0
        if any(t.exit_code == 2 for t in self.failed):
            return 2
        return 3 if all(t.exit_code == 3 for t in self.failed) else 1

    def error(self) -> str:
        """One line naming the failed tasks (empty when none failed)."""
        if self.never_starts is not None:
            return str(self.never_starts)
        if not self.failed:
            return ""
        report = "; ".join(_describe(t) for t in self.failed)
        hint = "" if self.exit_code == 2 else " (re-run submit.sh: finished shards are skipped)"
        return f"Slurm tasks failed: {report}{hint}"

    def summary(self) -> str:
        lines = [f"wrote {len(self.files)} files to {storage.redact(self.out)}: {', '.join(self.files)}"]
        if not self.submitted:
            lines.append(f"submit with: bash {shlex.quote(storage.join(self.out, SUBMIT))}")
        for job in self.submitted:
            lines.append(f"submitted {job.name}: job {job.job_id}")
        if self.submitted and not self.final and self.never_starts is None:
            ids = ",".join(j.job_id for j in self.submitted)
            lines.append(f"follow with: squeue -j {ids}")
        lines += [_describe(t) for t in self.final]
        return "\n".join(lines)


def _describe(t: TaskState) -> str:
    text = f"{t.name} {t.job_id}: {t.state}"
    if not t.ok:
        text += f" (exit {t.exit_code}" + (f", signal {t.signal}" if t.signal else "") + ")"
        if t.exit_code == 2:
            text += " bad input, not retried"
        if t.reason and t.reason != "None":
            text += f" reason {t.reason}"
    if t.restarts:
        text += f", restarted {t.restarts}x"
    return text


def write_scripts(plan: Plan, out: str) -> list[str]:
    """Render the plan into directory `out`; `submit.sh` and the scripts are executable when local."""
    files = render_files(plan)
    storage.makedirs(out)
    for name, text in files.items():
        url = storage.join(out, name)
        storage.write_text(url, text)
        if storage.is_local(url):
            os.chmod(url.removeprefix("file://"), 0o755)
    return list(files)


def _slurm_cmd(argv: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}, timeout=120
        )
    except FileNotFoundError:
        raise StepFailed(f"{argv[0]} not found: run this on a Slurm login node") from None


def submit(out: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None) -> list[Submitted]:
    """Run `OUT/submit.sh` (from `cwd`: logs land there) and return the job ids it printed."""
    if not storage.is_local(out):
        raise BadInput(f"{storage.redact(out)}: --submit needs a local directory (sbatch reads local files)")
    done = subprocess.run(
        ["bash", str(Path(out.removeprefix("file://")) / SUBMIT)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    jobs = [Submitted(*line.split()) for line in done.stdout.splitlines() if len(line.split()) == 2]
    if done.returncode != 0:
        already = ", ".join(f"{j.name}={j.job_id}" for j in jobs) or "none"
        err = done.stderr.strip().splitlines()
        why = "; ".join(line.removeprefix("sbatch: error: ") for line in err[-2:]) or str(done.returncode)
        refused = any(r in done.stderr for r in _REFUSED)
        raise (BadInput if refused else StepFailed)(
            f"submit.sh failed: {why} (already submitted: {already})"
            + (
                "; fix the plan's slurm: section (cpus_per_task, mem, time, partition, account)"
                if refused
                else ""
            )
        )
    return jobs


_FIELD = re.compile(r"(\w+)=(\S*)")


def job_states(job_id: str, env: Mapping[str, str] | None = None) -> list[TaskState]:
    """Every task of a job (one for a plain job, one per array task) as `scontrol show job` sees it.

    Accounting (sacct) needs slurmdbd, which many clusters and our test cluster lack; scontrol keeps
    finished jobs for MinJobAge seconds (300 by default); `wait` stops asking about a job once it ended."""
    done = _slurm_cmd(["scontrol", "show", "job", "-o", job_id], env)
    if "Invalid job id" in done.stderr:
        return []  # unknown, or finished more than MinJobAge ago
    if done.returncode != 0:
        raise StepFailed(f"scontrol show job {job_id}: {done.stderr.strip() or done.returncode}")
    states = []
    for line in done.stdout.splitlines():
        f = dict(_FIELD.findall(line))
        if "JobId" not in f:
            continue
        task = f.get("ArrayTaskId")
        jid = f"{f['ArrayJobId']}_{task}" if task and task != "N/A" else f["JobId"]
        code, _, sig = f.get("ExitCode", "0:0").partition(":")
        states.append(
            TaskState(
                job_id=jid,
                name=f.get("JobName", ""),
                state=f.get("JobState", "UNKNOWN"),
                exit_code=int(code or 0),
                signal=int(sig or 0),
                restarts=int(f.get("Restarts", "0") or 0),
                reason=f.get("Reason", ""),
                request=f.get("ReqTRES") or f.get("TRES", ""),
            )
        )
    return sorted(states, key=_task_order)


def _task_order(t: TaskState) -> tuple[int, int]:
    """Array tasks in index order; a still-pending range ("12_3-9%2") after the tasks that started."""
    job, _, task = t.job_id.partition("_")
    index = int(task) if task.isdigit() else 1 << 30
    return int(job) if job.isdigit() else 0, index


def wait(
    job_ids: Iterable[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
    on_change: Callable[[TaskState], None] | None = None,
) -> list[TaskState]:
    """Poll until every task of `job_ids` reached a final state; return them all.

    `on_change` hears every new state, and every new reason a task pends for. A job pending for a reason
    that waiting cannot resolve (`NEVER_STARTS`: it asks more than any node or the partition offers) is
    cancelled and reported as BadInput (exit 2) naming the job, the reason and the request.
    A job whose tasks all ended is remembered and no longer asked about: scontrol forgets finished
    jobs after MinJobAge, while the rest of the plan may run for hours."""
    ids = list(job_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, tuple[str, str]] = {}
    ended: dict[str, list[TaskState]] = {}
    while True:
        for jid in ids:
            if jid in ended:
                continue
            tasks = job_states(jid, env)
            if not tasks:
                raise StepFailed(f"Slurm job {jid} is unknown to scontrol (cancelled or purged?)")
            for t in tasks:
                if on_change and seen.get(t.job_id) != (t.state, t.reason):
                    on_change(t)
                seen[t.job_id] = (t.state, t.reason)
            stuck = [t for t in tasks if t.never_starts]
            if stuck:
                _slurm_cmd(["scancel", jid], env)
                raise NeverStarts(stuck[0])
            if all(t.state in FINAL_STATES for t in tasks):
                ended[jid] = tasks
        if len(ended) == len(ids):
            return [t for jid in ids for t in ended[jid]]
        if deadline is not None and time.monotonic() > deadline:
            pending = [f"{k}={v[0]}" for k, v in seen.items() if v[0] not in FINAL_STATES]
            raise StepFailed(f"timed out waiting for Slurm jobs: {', '.join(pending)}")
        time.sleep(poll)


def launch_slurm(
    plan_url: str,
    out: str,
    *,
    submit_jobs: bool = False,
    follow: bool = False,
    on_change: Callable[[TaskState], None] | None = None,
) -> SlurmLaunch:
    """`neva-prep launch slurm`: render, optionally submit, optionally wait for the end.

    With `follow`, failed tasks are in the result (`exit_code`, `error()`), not raised: the summary of
    what ran matters most when something failed."""
    plan = load_plan(plan_url)
    result = SlurmLaunch(out=out, files=write_scripts(plan, out))
    if not (submit_jobs or follow):
        return result
    result.submitted = submit(out)
    if follow:
        try:
            result.final = wait([j.job_id for j in result.submitted], on_change=on_change)
        except NeverStarts as exc:
            result.never_starts = exc
    return result
