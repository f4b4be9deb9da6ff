"""`data wait`: block until a step's shards (or its merge) finished, where no scheduler orders what follows.

Kubernetes has no dependencies between Jobs, so the merge pod starts with the shards and its init container
runs `data wait`; the merge container starts once, when the shards are done, and no pod fails while waiting.
Each poll is ONE recursive listing of `DST/shards/` (one LIST request on an object store, never one per
shard): a shard is finished when its completion marker (`IIIII-of-NNNNN/DONE`) is listed, and failed for
good when, instead, its failure record (`IIIII-of-NNNNN.FAILED`) is.

The failure record is the one thing a shard leaves under DST when it exits 2 (bad input), and only when
asked to (`data convert --record-failure`, which the Kubernetes shards pass): without it a waiting merge
could not tell a shard that will never finish from a slow one. It lies in `DST/shards/`, the shards' working
area that the merge never reads as output, holds the one-line reason, and is removed when the shard runs
again. A shard that fails for other reasons (exit 1, retried by the scheduler until its retries run out)
leaves no record: the wait's timeout bounds that case.

The same poll serves every step that follows another (`--for`, a `Stage`): `shards` (the merge waits for
`data convert`), `merge` (an Energon export or a data check waits for the merge: every shard finished and,
written last, `DST/stats.json` no older than their markers, so a merged file of an earlier run never
counts), `energon` (the finalize step waits for `DST/energon/parts/*/DONE`) and `check` (the check's
`--merge` waits for `REPORT/shards/*/part.json`). Only `data convert` leaves failure records; the other
steps' failures are bounded by the timeout.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.convert import ShardResult, convert_shard
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput, StepFailed

FAILED_SUFFIX = ".FAILED"
MERGE_MARKER = "stats.json"  # what `data merge` writes last
ENERGON_PARTS = "energon/parts"  # `data export energon` shards: DST/energon/parts/IIIII-of-NNNNN/DONE
CHECK_PARTS, CHECK_MARKER = (
    "shards",
    "part.json",
)  # `data check` shards: REPORT/shards/IIIII-of-NNNNN/part.json


class Stage(str, Enum):
    """What `data wait` waits for (`--for`); DST is the folder that step writes."""

    SHARDS = "shards"  # `data convert` shards under DST/shards/
    MERGE = "merge"  # `data merge` of DST (its shards first)
    ENERGON = "energon"  # `data export energon` shards under DST/energon/parts/
    CHECK = "check"  # `data check` shards under DST/shards/, DST being the check's --report folder


def _state_pattern(marker: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|/)(\d{{5,}})-of-(\d{{5,}})(/{re.escape(marker)}|{re.escape(FAILED_SUFFIX)})$")


_STATE = _state_pattern(shards.DONE)


def failure_record(destination: str, shard_index: int, num_shards: int) -> str:
    """`DST/shards/IIIII-of-NNNNN.FAILED`: beside the shard's folder, never inside the merge's inputs."""
    name = shards.shard_name(shard_index, num_shards) + FAILED_SUFFIX
    return storage.join(destination, shards.SHARDS_DIR, name)


def convert_shard_recording_failure(
    source: str,
    destination: str,
    *,
    options: ConvertOptions,
    num_shards: int = 1,
    shard_index: int = 0,
    media_root: str | None = None,
    force: bool = False,
    record_failure: bool = False,
) -> ShardResult:
    """`convert_shard`, withdrawing an earlier failure record first; with `record_failure` a shard that
    fails with bad input writes one (its one-line reason) before the error goes on to exit 2."""
    valid = num_shards >= 1 and 0 <= shard_index < num_shards  # else convert_shard says what is wrong
    record = failure_record(destination, shard_index, num_shards) if valid else None
    if record is not None:
        storage.remove(record)
    try:
        return convert_shard(
            source,
            destination,
            options=options,
            num_shards=num_shards,
            shard_index=shard_index,
            media_root=media_root,
            force=force,
        )
    except BadInput as exc:
        if record_failure and record is not None:
            # best effort: an unwritable destination is the error itself; the wait's timeout covers it
            with contextlib.suppress(Exception):
                storage.write_text(record, " ".join(storage.redact(str(exc)).split()) + "\n")
        raise


@dataclass(frozen=True)
class ShardStates:
    """What one listing of a shards folder showed for a run of `num_shards` shards."""

    num_shards: int
    done: frozenset[int]
    failed: frozenset[int]  # a failure record and no completion marker
    newest: float | None = None  # the latest completion marker's modification time, where the store says

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.num_shards) if i not in self.done]


def modified(info: Mapping[str, Any]) -> float | None:
    """A listing entry's modification time (local `mtime`, S3 `LastModified`, GCS `updated`), else None."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def marker_states(
    folder: str, num_shards: int, marker: str = shards.DONE, pattern: re.Pattern[str] = _STATE
) -> ShardStates:
    """One recursive listing of `folder`: which of `num_shards` shards wrote `marker` (IIIII-of-NNNNN/marker),
    which left a failure record (IIIII-of-NNNNN.FAILED) instead."""
    if marker != shards.DONE and pattern is _STATE:
        pattern = _state_pattern(marker)
    fs = storage.filesystem(folder)
    try:
        # exists() first: a folder that cannot be read is bad input (exit 2), not shards still to come
        found: Mapping[str, Any] = (
            fs.find(storage.local_path(folder) if storage.is_local(folder) else folder, detail=True)
            if storage.exists(folder)
            else {}
        )
    except FileNotFoundError:
        found = {}
    done: set[int] = set()
    failed: set[int] = set()
    times: list[float] = []
    for path, info in found.items():
        m = pattern.search(str(path))
        if m and int(m.group(2)) == num_shards and int(m.group(1)) < num_shards:
            if m.group(3) == "/" + marker:
                done.add(int(m.group(1)))
                when = modified(info) if isinstance(info, Mapping) else None
                if when is not None:
                    times.append(when)
            else:
                failed.add(int(m.group(1)))
    return ShardStates(num_shards, frozenset(done), frozenset(failed - done), max(times, default=None))


def shard_states(destination: str, num_shards: int) -> ShardStates:
    """One recursive listing of `DST/shards/`: which shards of `num_shards` finished, which failed."""
    return marker_states(storage.join(destination, shards.SHARDS_DIR), num_shards)


@dataclass(frozen=True)
class Progress:
    """One poll's verdict: finished, failed for good (`failure`, bad input), or still `waiting` (the line
    printed when it changes; `left` names what is missing, for the timeout message)."""

    finished: bool = False
    waiting: str = ""
    left: str = ""
    failure: str | None = None


def _shards_progress(destination: str, num_shards: int, what: str = "shard(s)") -> Progress:
    states = shard_states(destination, num_shards)
    return _progress(states, destination, what)


def _progress(states: ShardStates, destination: str, what: str) -> Progress:
    if states.failed:
        index = min(states.failed)
        record = failure_record(destination, index, states.num_shards)
        try:
            reason = storage.read_text(record).strip() or "(no reason recorded)"
        except Exception:  # the record's presence is the verdict
            reason = "(its failure record is unreadable)"
        return Progress(
            failure=f"{storage.redact(destination)}: shard {index} of {states.num_shards} failed with bad"
            f" input: {reason}"
        )
    missing = _shard_list(states.missing)
    if not states.missing:
        return Progress(finished=True)
    return Progress(
        waiting=f"{len(states.done)} of {states.num_shards} {what} finished; waiting for {missing}",
        left=missing,
    )


def _merge_progress(destination: str, num_shards: int) -> Progress:
    """The shards, then `DST/stats.json` (the merge's last write) no older than the newest shard marker."""
    states = shard_states(destination, num_shards)
    if states.missing or states.failed:
        return _progress(states, destination, "shard(s)")
    info = storage.entries(destination).get(MERGE_MARKER)
    written = None if info is None else modified(info)
    current = info is not None and (written is None or states.newest is None or written >= states.newest)
    if current:
        return Progress(finished=True)
    return Progress(
        waiting=f"all {num_shards} shard(s) finished; waiting for the merge ({MERGE_MARKER})",
        left=f"the merge's {MERGE_MARKER}",
    )


def _parts_progress(folder: str, marker: str, num_shards: int, what: str) -> Progress:
    """Export or check shards: only `data convert` leaves failure records, so none are looked for here."""
    states = marker_states(folder, num_shards, marker)
    return _progress(ShardStates(num_shards, states.done, frozenset()), folder, what)


def stage_probe(stage: Stage | str, destination: str, num_shards: int) -> Callable[[], Progress]:
    """The one-listing check `wait_for` repeats for `stage` (see `Stage`)."""
    stage = Stage(stage)
    if stage is Stage.SHARDS:
        return lambda: _shards_progress(destination, num_shards)
    if stage is Stage.MERGE:
        return lambda: _merge_progress(destination, num_shards)
    if stage is Stage.ENERGON:
        folder = storage.join(destination, *ENERGON_PARTS.split("/"))
        return lambda: _parts_progress(folder, shards.DONE, num_shards, "export shard(s)")
    folder = storage.join(destination, CHECK_PARTS)
    return lambda: _parts_progress(folder, CHECK_MARKER, num_shards, "check shard(s)")


_DONE_TEXT = {
    Stage.SHARDS: "all {n} shard(s) finished under {where}",
    Stage.MERGE: "the merge of {where} finished (its {n} shard(s), then {marker})",
    Stage.ENERGON: "all {n} energon export shard(s) finished under {where}",
    Stage.CHECK: "all {n} check shard(s) finished under {where}",
}


@dataclass(frozen=True)
class WaitResult:
    destination: str
    num_shards: int
    polls: int
    seconds: float
    stage: Stage = Stage.SHARDS

    def summary(self) -> str:
        done = _DONE_TEXT[self.stage].format(
            n=self.num_shards, where=storage.redact(self.destination), marker=MERGE_MARKER
        )
        return f"{done} ({self.polls} poll(s), {self.seconds:.0f}s)"


def _shard_list(indexes: list[int], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in indexes[:limit])
    return text + (f" and {len(indexes) - limit} more" if len(indexes) > limit else "")


def wait_for(
    probe: Callable[[], Progress],
    where: str,
    *,
    what: str = "shards",
    timeout: float | None = None,
    interval: float = 10.0,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, float]:
    """Repeat `probe` every `interval` seconds until it says finished (returns polls and seconds), failed
    (`BadInput`, exit 2), or `timeout` seconds passed (`StepFailed`, exit 1). A probe that fails otherwise (a
    storage hiccup) is reported and tried again at the next poll: only the timeout ends the wait for that."""
    if interval <= 0:
        raise BadInput(f"--interval must be positive, got {interval:g}")
    if timeout is not None and timeout < 0:
        raise BadInput(f"--timeout must not be negative, got {timeout:g}")
    start = clock()
    polls = 0
    last_said = ""
    last_error = ""
    left = "?"
    while True:
        polls += 1
        try:
            progress: Progress | None = probe()
        except BadInput:
            raise
        except Exception as exc:  # reported and retried: the timeout bounds it
            progress = None
            last_error = f"{type(exc).__name__}: {storage.redact(str(exc))}"
            echo(f"listing {where} failed ({last_error}); trying again")
        if progress is not None:
            last_error = ""
            if progress.failure is not None:
                raise BadInput(progress.failure)
            if progress.finished:
                return polls, clock() - start
            left = progress.left
            if progress.waiting != last_said:
                last_said = progress.waiting
                echo(progress.waiting)
        elapsed = clock() - start
        if timeout is not None and elapsed >= timeout:
            why = f"; last listing error: {last_error}" if last_error else ""
            raise StepFailed(
                f"{where}: {what} still not finished after {timeout:g}s (waiting for {left}){why}; "
                "a shard that failed other than with bad input leaves no record: check its pods, then "
                "re-run the wait"
            )
        sleep(interval if timeout is None else max(0.0, min(interval, timeout - elapsed)))


def wait_for_stage(
    destination: str,
    num_shards: int,
    stage: Stage | str = Stage.SHARDS,
    *,
    timeout: float | None = None,
    interval: float = 10.0,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> WaitResult:
    """`data wait DST --for STAGE`: poll until that step finished (see `Stage`); exit codes as `wait_for`."""
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    try:
        stage = Stage(stage)
    except ValueError:
        raise BadInput(f"--for must be one of {', '.join(s.value for s in Stage)}, got {stage!r}") from None
    what = {Stage.MERGE: "the merge", Stage.SHARDS: "shards"}.get(stage, f"{stage.value} shards")
    polls, seconds = wait_for(
        stage_probe(stage, destination, num_shards),
        storage.redact(destination),
        what=what,
        timeout=timeout,
        interval=interval,
        echo=echo,
        sleep=sleep,
        clock=clock,
    )
    return WaitResult(destination, num_shards, polls, seconds, stage)


def wait_for_shards(
    destination: str,
    num_shards: int,
    *,
    timeout: float | None = None,
    interval: float = 10.0,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> WaitResult:
    """Poll until every `data convert` shard of `num_shards` finished; see `wait_for_stage`."""
    return wait_for_stage(
        destination,
        num_shards,
        Stage.SHARDS,
        timeout=timeout,
        interval=interval,
        echo=echo,
        sleep=sleep,
        clock=clock,
    )
