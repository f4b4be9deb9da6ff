"""`data wait`: block until every shard of a run finished, for a merge no scheduler can order after them.

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
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.convert import ShardResult, convert_shard
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput, StepFailed

FAILED_SUFFIX = ".FAILED"
_STATE = re.compile(
    rf"(?:^|/)(\d{{5,}})-of-(\d{{5,}})(/{re.escape(shards.DONE)}|{re.escape(FAILED_SUFFIX)})$"
)


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
    """What one listing of `DST/shards/` showed for a run of `num_shards` shards."""

    num_shards: int
    done: frozenset[int]
    failed: frozenset[int]  # a failure record and no completion marker

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.num_shards) if i not in self.done]


def shard_states(destination: str, num_shards: int) -> ShardStates:
    """One recursive listing of `DST/shards/`: which shards of `num_shards` finished, which failed."""
    url = storage.join(destination, shards.SHARDS_DIR)
    fs = storage.filesystem(url)
    try:
        # exists() first: a folder that cannot be read is bad input (exit 2), not shards still to come
        paths = (
            fs.find(storage.local_path(url) if storage.is_local(url) else url) if storage.exists(url) else []
        )
    except FileNotFoundError:
        paths = []
    done: set[int] = set()
    failed: set[int] = set()
    for path in paths:
        m = _STATE.search(str(path))
        if m and int(m.group(2)) == num_shards and int(m.group(1)) < num_shards:
            (done if m.group(3) == "/" + shards.DONE else failed).add(int(m.group(1)))
    return ShardStates(num_shards, frozenset(done), frozenset(failed - done))


@dataclass(frozen=True)
class WaitResult:
    destination: str
    num_shards: int
    polls: int
    seconds: float

    def summary(self) -> str:
        return (
            f"all {self.num_shards} shard(s) finished under {storage.redact(self.destination)}"
            f" ({self.polls} poll(s), {self.seconds:.0f}s)"
        )


def _shard_list(indexes: list[int], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in indexes[:limit])
    return text + (f" and {len(indexes) - limit} more" if len(indexes) > limit else "")


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
    """Poll until every shard of `num_shards` finished (returns), one failed with bad input (`BadInput`,
    exit 2), or `timeout` seconds passed (`StepFailed`, exit 1). A listing that fails (a storage hiccup) is
    reported and tried again at the next poll: only the timeout ends the wait for reasons of that kind."""
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if interval <= 0:
        raise BadInput(f"--interval must be positive, got {interval:g}")
    if timeout is not None and timeout < 0:
        raise BadInput(f"--timeout must not be negative, got {timeout:g}")
    where = storage.redact(destination)
    start = clock()
    polls = 0
    last_done = -1
    last_error = ""
    while True:
        polls += 1
        try:
            states: ShardStates | None = shard_states(destination, num_shards)
        except BadInput:
            raise
        except Exception as exc:  # reported and retried: the timeout bounds it
            states = None
            last_error = f"{type(exc).__name__}: {storage.redact(str(exc))}"
            echo(f"listing {where} failed ({last_error}); trying again")
        if states is not None:
            last_error = ""
            if states.failed:
                index = min(states.failed)
                record = failure_record(destination, index, num_shards)
                try:
                    reason = storage.read_text(record).strip() or "(no reason recorded)"
                except Exception:  # the record's presence is the verdict
                    reason = "(its failure record is unreadable)"
                raise BadInput(f"{where}: shard {index} of {num_shards} failed with bad input: {reason}")
            if not states.missing:
                return WaitResult(destination, num_shards, polls, clock() - start)
            if len(states.done) != last_done:
                last_done = len(states.done)
                waiting = _shard_list(states.missing)
                echo(f"{last_done} of {num_shards} shard(s) finished; waiting for {waiting}")
        elapsed = clock() - start
        if timeout is not None and elapsed >= timeout:
            missing = "?" if states is None else _shard_list(states.missing)
            why = f"; last listing error: {last_error}" if last_error else ""
            raise StepFailed(
                f"{where}: shards still not finished after {timeout:g}s (waiting for {missing}){why}; "
                "a shard that failed other than with bad input leaves no record: check its pods, then "
                "re-run the wait"
            )
        sleep(interval if timeout is None else max(0.0, min(interval, timeout - elapsed)))
