"""`data export energon`: a merged dataset (`DST/NAME.json`) -> a Megatron-Energon WebDataset, `DST/energon/`.

Layout::

    DST/energon/
        train/000000.tar ...      split `train`, <= --samples-per-shard samples each (+ Energon's .tar.idx)
        val/000000.tar ...        one folder per split of --split
        parts/00001-of-00004/     one export shard: rejects.jsonl, stats.json, DONE (written last)
        .nv-meta/                 dataset.yaml, sample_loader.py, crude.yaml; split.yaml, .info.json and the
                                  index written by Energon's own `prepare_dataset` (the finalize step)
        rejects.jsonl, stats.json the finalize step's merged rejects and counts (stats.json last)

Every shard streams all of NAME.json (records are small next to their media) and derives for each record its
key, its split (a hash of the key) and its tar (its rank within the split // samples-per-shard); it writes
only the tars it owns (round robin over tars). So a tar's bytes depend on the records alone, never on the
shard count, and no shard waits for another; the finalize step runs once after all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import os
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any

import orjson

from neva_prep import storage, tarball
from neva_prep.cpus import usable_cpus
from neva_prep.data import shards
from neva_prep.data.convert import CRASH_ENV
from neva_prep.data.records import media_paths
from neva_prep.data.stats import sorted_counts
from neva_prep.data.writers import media_type
from neva_prep.errors import BadInput, StepFailed
from neva_prep.progress import Reporter

LAYOUT_VERSION = 1
EXPORT_DIR = "energon"
PARTS_DIR = "parts"
META_DIR = ".nv-meta"
DEFAULT_SAMPLES_PER_SHARD = 10_000
STANDARD_SPLITS = ("train", "val", "test")
"""Always present in split.yaml (empty when unused): `energon lint` and `get_val_dataset` ask for them."""
PREFETCH = 16
"""Records whose media threads read ahead of the tar writer from an object store."""
LOCAL_AHEAD = 64
LOCAL_AHEAD_BYTES = 256 << 20
"""Local media asked of the kernel ahead of the tar writer: at most this many records and bytes."""
_JOIN_LIMIT = 1 << 20
"""A sample up to this size goes to its tar in one write."""

_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NOT_KEY = re.compile(r"[^A-Za-z0-9_-]+")
_ID_CHARS = 48

DATASET_YAML = """\
# Written by neva-prep (data export energon). Each sample: `json` = the NeVA record exactly as in NAME.json,
# plus its media bytes (`jpg`, `png`, `mp4`, ...; `0.jpg`, `1.png`, ... when a record has several).
# The sample loader maps it onto Energon's VQASample (what NeMo 2's NeVA task encoder encodes):
# context = the human turns, answers = the gpt turns. crude.yaml offers the same samples raw, for cookers.
sample_type:
  __module__: megatron.energon
  __class__: VQASample
sample_loader: sample_loader.py:sample_loader
part_filter: sample_loader.py:part_filter
"""

CRUDE_YAML = """\
# The same samples as crude (raw) samples, for a task encoder with cookers (Megatron-Bridge style):
# select it with dataset_config: crude.yaml in a metadataset. `__subflavors__` says what the media are.
__module__: megatron.energon
__class__: CrudeWebdataset
subflavors:
  source: neva-prep
  media: {media}
"""


@dataclass(frozen=True)
class ExportOptions:
    """What every export shard and the finalize step of one run share."""

    name: str
    media_root: str
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    split: tuple[tuple[str, float], ...] = (("train", 1.0),)

    def check(self) -> None:
        if self.samples_per_shard < 1:
            raise BadInput(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")


def parse_split(text: str | None) -> tuple[tuple[str, float], ...]:
    """`train=98,val=2` (weights, normalized) -> (("train", 0.98), ("val", 0.02)); None -> all train."""
    if text is None or not text.strip():
        return (("train", 1.0),)
    parts: list[tuple[str, float]] = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition("=")
        name = name.strip()
        try:
            value = float(weight) if sep else -1.0
        except ValueError:
            value = -1.0
        if not _SPLIT_NAME.match(name) or not value > 0 or value == float("inf"):
            raise BadInput(
                f"--split {text!r}: expected NAME=WEIGHT pairs like train=98,val=2"
                f" (lowercase names, positive weights), got {item.strip()!r}"
            )
        if any(name == n for n, _ in parts):
            raise BadInput(f"--split {text!r}: split {name!r} named twice")
        parts.append((name, value))
    total = sum(w for _, w in parts)
    return tuple((n, w / total) for n, w in parts)


def sample_key(position: int, record_id: Any) -> str:
    """A WebDataset key for the record at 1-based `position` of NAME.json: unique (the position), readable
    (the id, reduced to ASCII letters, digits, '_' and '-'), with no '.' (WebDataset splits the member name at
    the first dot) and no '__' (Energon skips members matching `__*__` as metadata)."""
    slug = _NOT_KEY.sub("_", str(record_id))
    slug = re.sub("_+", "_", slug)[:_ID_CHARS].strip("_")
    return f"{position:010d}-{slug}" if slug else f"{position:010d}"


def split_index(key: str, split: tuple[tuple[str, float], ...]) -> int:
    """Which split a key falls in: a hash of the key, so it holds whatever the shard count or order."""
    point = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    edge = 0.0
    for i, (_, weight) in enumerate(split):
        edge += weight
        if point < edge:
            return i
    return len(split) - 1


def tar_owner(split_ordinal: int, tar_index: int, num_splits: int, num_shards: int) -> int:
    """The shard that writes tar `tar_index` of split `split_ordinal` (round robin over all tars)."""
    return (tar_index * num_splits + split_ordinal) % num_shards


def tar_name(split: str, tar_index: int) -> str:
    return f"{split}/{tar_index:06d}.tar"


def export_root(destination: str) -> str:
    return storage.join(destination, EXPORT_DIR)


def part_dir(destination: str, shard_index: int, num_shards: int) -> str:
    return storage.join(export_root(destination), PARTS_DIR, shards.shard_name(shard_index, num_shards))


# --- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportShardResult:
    directory: str
    shard_index: int
    num_shards: int
    records: int
    exported: int
    rejected: int
    tars: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: bool = False

    def summary(self) -> str:
        head = f"energon export shard {self.shard_index} of {self.num_shards}"
        if self.skipped:
            head += " already done (skipped; --force to redo)"
        line = (
            f"{head}: {self.exported:,} exported, {self.rejected:,} rejected in {self.tars:,} tar(s)"
            f" (of {self.records:,} records) -> {storage.redact(self.directory)}"
        )
        if self.rejected_by_reason:
            line += "\n  rejected: " + ", ".join(f"{r}: {n:,}" for r, n in self.rejected_by_reason.items())
        return line

    @classmethod
    def from_stats(cls, directory: str, stats: dict[str, Any], *, skipped: bool) -> ExportShardResult:
        return cls(
            directory=directory,
            shard_index=stats["shard_index"],
            num_shards=stats["num_shards"],
            records=stats["records"],
            exported=stats["exported"],
            rejected=stats["rejected"],
            tars=len(stats["tars"]),
            rejected_by_reason=stats["rejected_by_reason"],
            skipped=skipped,
        )


@dataclass(frozen=True)
class EnergonResult:
    root: str
    records: int
    exported: int
    rejected: int
    tars: int
    split_samples: dict[str, int]
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        splits = ", ".join(f"{name}: {n}" for name, n in self.split_samples.items())
        line = (
            f"energon dataset: {self.records:,} records, {self.exported:,} exported,"
            f" {self.rejected:,} rejected, {self.tars:,} tar(s) ({splits}) -> {storage.redact(self.root)}"
        )
        if self.rejected_by_reason:
            line += "\n  rejected: " + ", ".join(f"{r}: {n:,}" for r, n in self.rejected_by_reason.items())
            line += f"\n  rejects: {storage.redact(storage.join(self.root, 'rejects.jsonl'))}"
        return line


# --- input: the merged dataset ------------------------------------------------------------------------------


def _merged(destination: str, name: str) -> tuple[str, dict[str, Any], bytes]:
    """(NAME.json URL, the merge's stats, their bytes): the merge must have finished (its stats come last)."""
    output = storage.join(destination, f"{name}.json")
    stats_url = storage.join(destination, "stats.json")
    if not storage.exists(destination):  # a wrong path, not a merge still to come: retrying cannot help
        raise BadInput(f"{storage.redact(destination)}: no such folder")
    if not storage.exists(stats_url) or not storage.exists(output):
        raise StepFailed(
            f"{storage.redact(output)}: no finished merge here; run `data merge {storage.redact(destination)}"
            f" --name {name}` first"
        )
    raw = storage.read_bytes(stats_url)
    try:
        stats = orjson.loads(raw)
        merged_name = stats["name"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise StepFailed(
            f"{storage.redact(stats_url)}: unreadable merge stats; re-run `data merge`"
        ) from None
    if merged_name != name:
        raise BadInput(
            f"--name {name!r}: {storage.redact(destination)} holds the merge of {merged_name!r}"
            f" ({merged_name}.json)"
        )
    return output, stats, raw


def _records(url: str) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(1-based position, the record's bytes as in the file, the record) of a `data merge` output.

    The merge writes one record a line (`[`, records joined by `,\\n`, `]`), so the file streams line by line
    and each record's bytes are copied into its sample unchanged.
    """
    position = 0
    with storage.open_read(url) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line in (b"[", b"]", b"[]", b""):
                continue
            if line.endswith(b","):
                line = line[:-1]
            try:
                record = orjson.loads(line)
                record_id = record["id"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise BadInput(
                    f"{storage.redact(url)}, line {number}: not one record a line as `data merge` writes it"
                    f" ({exc}); export a merged dataset"
                ) from None
            if isinstance(record_id, bool) or not isinstance(record_id, str | int):
                raise BadInput(f"{storage.redact(url)}, line {number}: field 'id' is not a string or integer")
            position += 1
            yield position, line, record


def fingerprint(options: ExportOptions, merge_stats: bytes, num_shards: int) -> str:
    """What every shard of one export shares: the merge it reads (its stats pin NAME.json), the options."""
    payload = {
        "version": LAYOUT_VERSION,
        "name": options.name,
        "merge": hashlib.sha256(merge_stats).hexdigest(),
        "media_root": storage.redact(options.media_root),
        "samples_per_shard": options.samples_per_shard,
        "split": [list(s) for s in options.split],
        "num_shards": num_shards,
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _check_shard(num_shards: int, shard_index: int) -> None:
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(
            f"--shard-index {shard_index} is out of range for --num-shards {num_shards} (0..{num_shards - 1})"
        )


# --- media --------------------------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _unusable(url: str, exc: OSError) -> _Rejected:
    if isinstance(exc, FileNotFoundError):
        return _Rejected("media missing", f"{storage.redact(url)} not found")
    return _Rejected("media unreadable", f"{storage.redact(url)}: {type(exc).__name__} {exc}")


def _read(url: str) -> bytes:
    """A medium from an object store (or any fsspec URL)."""
    try:
        return bytes(storage.filesystem(url).cat_file(url))
    except OSError as exc:
        raise _unusable(url, exc) from None


Media = list[tuple[str, bytes]]
"""(extension, bytes) of each medium of a record, in its order."""


def _media(record: dict[str, Any], media_root: str, read: Callable[[str], bytes] = _read) -> Media:
    """The record's media, each read by `read(url)`; `_Rejected` when one is unusable."""
    kind = media_type.IMAGE if media_type.IMAGE in record else media_type.VIDEO
    found = []
    for path in media_paths(record, kind):
        url = storage.join(media_root, path)
        data = read(url)
        if not data:
            raise _Rejected("media unreadable", f"{storage.redact(url)} is empty")
        sniffed = media_type.extension(data[: media_type.SNIFF_BYTES])
        if sniffed is None:
            raise _Rejected(
                "unknown media format", f"{storage.redact(url)}: not an image or video we recognize"
            )
        if sniffed[0] != kind:
            raise _Rejected(
                "wrong media kind", f"{storage.redact(url)} is a {sniffed[0]} ({sniffed[1]}), not {kind}"
            )
        found.append((sniffed[1], data))
    return found


def _read_ahead(
    items: Iterable[tuple[Any, dict[str, Any]]], media_root: str
) -> Iterator[tuple[Any, Media | _Rejected]]:
    """(item, media or the rejection) in input order, the media asked for ahead of their turn: local files
    by the kernel, object stores by threads."""
    if storage.is_local(media_root):
        return _local_read_ahead(items, media_root)
    return _threaded_read_ahead(items, media_root)


def _threaded_read_ahead(
    items: Iterable[tuple[Any, dict[str, Any]]], media_root: str
) -> Iterator[tuple[Any, Media | _Rejected]]:
    """Up to PREFETCH records' media read in advance by threads: object stores answer one GET at a time
    slowly."""

    def fetch(record: dict[str, Any]) -> Media | _Rejected:
        try:
            return _media(record, media_root)
        except _Rejected as exc:
            return exc

    with ThreadPoolExecutor(PREFETCH, thread_name_prefix="media") as pool:
        pending: deque[tuple[Any, Future[Media | _Rejected]]] = deque()
        for item, record in items:
            pending.append((item, pool.submit(fetch, record)))
            if len(pending) >= PREFETCH:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()


_Opened = list[tuple[str, "io.FileIO | OSError"]]


def _local_read_ahead(
    items: Iterable[tuple[Any, dict[str, Any]]], media_root: str
) -> Iterator[tuple[Any, Media | _Rejected]]:
    """Local media opened up to LOCAL_AHEAD records (or LOCAL_AHEAD_BYTES) ahead of their turn, with the
    kernel asked to read them (POSIX_FADV_WILLNEED): the disk sees a deep queue while this one thread reads
    what is already cached. Threads did the same slower here: their Python fought the writer for the GIL."""
    kind_of = media_type.IMAGE
    pending: deque[tuple[Any, dict[str, Any], _Opened, int]] = deque()
    ahead = 0

    def open_ahead(record: dict[str, Any]) -> tuple[_Opened, int]:
        kind = kind_of if kind_of in record else media_type.VIDEO
        opened: _Opened = []
        size = 0
        for path in media_paths(record, kind):
            url = storage.join(media_root, path)
            try:
                f = io.FileIO(storage.local_path(url), "r")
            except OSError as exc:
                opened.append((url, exc))
                continue
            try:
                length = os.fstat(f.fileno()).st_size
                os.posix_fadvise(f.fileno(), 0, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                length = 0  # the read says what is wrong
            size += length
            opened.append((url, f))
        return opened, size

    def finish(record: dict[str, Any], opened: _Opened) -> Media | _Rejected:
        files = iter(opened)

        def read(url: str) -> bytes:
            got_url, got = next(files)
            assert got_url == url
            if isinstance(got, OSError):
                raise _unusable(url, got)
            try:
                with got:
                    return got.readall()
            except OSError as exc:
                raise _unusable(url, exc) from None

        try:
            return _media(record, media_root, read)
        except _Rejected as exc:
            return exc
        finally:
            _close(opened)

    try:
        for item, record in items:
            opened, size = open_ahead(record)
            pending.append((item, record, opened, size))
            ahead += size
            while len(pending) > LOCAL_AHEAD or (len(pending) > 1 and ahead > LOCAL_AHEAD_BYTES):
                head, head_record, head_opened, head_size = pending.popleft()
                ahead -= head_size
                yield head, finish(head_record, head_opened)
        while pending:
            head, head_record, head_opened, _ = pending.popleft()
            yield head, finish(head_record, head_opened)
    finally:
        for _, _, opened, _ in pending:
            _close(opened)


def _close(opened: _Opened) -> None:
    for _, f in opened:
        if not isinstance(f, OSError):
            f.close()


# --- tar shards ---------------------------------------------------------------------------------------------


class _Tar:
    """One tar shard being written (atomically): members with fixed metadata, a sample's parts together."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._stack = ExitStack()
        self.f: IO[bytes] = self._stack.enter_context(storage.atomic_write(url))
        self.pos = self.samples = 0

    def add(self, key: str, parts: list[tuple[str, bytes]]) -> None:
        pieces: list[bytes] = []
        for part, data in parts:
            pieces += (tarball.header(f"{key}.{part}", len(data)), data, tarball.padding(len(data)))
        size = sum(map(len, pieces))
        if size <= _JOIN_LIMIT:  # small media: one write a sample (a copy is cheaper than six calls)
            self.f.write(b"".join(pieces))
        else:
            for piece in pieces:
                self.f.write(piece)
        self.pos += size
        self.samples += 1

    def close(self) -> dict[str, Any]:
        end = tarball.trailer(self.pos)
        self.f.write(end)
        self.pos += len(end)
        self._stack.close()
        return {"path": self.name, "samples": self.samples, "bytes": self.pos}

    def abort(self) -> None:
        self._stack.__exit__(StepFailed, StepFailed("aborted"), None)


def _sample_parts(line: bytes, media: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The members of one sample, in a fixed order: the record, then its media in the record's order."""
    if len(media) == 1:
        return [("json", line), media[0]]
    return [("json", line), *((f"{i}.{ext}", data) for i, (ext, data) in enumerate(media))]


def export_shard(
    destination: str,
    *,
    options: ExportOptions,
    num_shards: int = 1,
    shard_index: int = 0,
    force: bool = False,
) -> ExportShardResult:
    """Write the tars that shard `shard_index` of `num_shards` owns under `destination/energon/`."""
    _check_shard(num_shards, shard_index)
    options.check()
    source, _, merge_raw = _merged(destination, options.name)
    directory = part_dir(destination, shard_index, num_shards)
    marker = shards.Marker(
        fingerprint=fingerprint(options, merge_raw, num_shards),
        shard_index=shard_index,
        num_shards=num_shards,
        splits=[],  # the tars a shard wrote are listed in its stats.json
        inputs=[{"url": storage.redact(source), "merge_stats_sha256": hashlib.sha256(merge_raw).hexdigest()}],
    )
    if not force and shards.read_marker(directory) == marker:
        return ExportShardResult.from_stats(directory, shards.read_stats(directory), skipped=True)

    storage.remove(storage.join(directory, shards.DONE))
    storage.makedirs(directory)
    stats = _write_part(destination, source, directory, options, shard_index, num_shards)
    storage.write_bytes(storage.join(directory, shards.STATS), _json_file(stats))
    storage.write_bytes(storage.join(directory, shards.DONE), marker.to_bytes())
    return ExportShardResult.from_stats(directory, stats, skipped=False)


def _json_file(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _write_part(
    destination: str,
    source: str,
    directory: str,
    options: ExportOptions,
    shard_index: int,
    num_shards: int,
) -> dict[str, Any]:
    root = export_root(destination)
    split = options.split
    ranks = [0] * len(split)
    counted = {"records": 0}
    crash_after = int(os.environ.get(CRASH_ENV) or 0)

    def owned() -> Iterator[tuple[tuple[int, bytes, str, int, int, Any], dict[str, Any]]]:
        """Every record of NAME.json counted; those in this shard's tars handed on."""
        for position, line, record in _records(source):
            counted["records"] += 1
            key = sample_key(position, record["id"])
            s = split_index(key, split)
            tar_index, ranks[s] = ranks[s] // options.samples_per_shard, ranks[s] + 1
            if tar_owner(s, tar_index, len(split), num_shards) == shard_index:
                yield (position, line, key, s, tar_index, record["id"]), record

    reasons: Counter[str] = Counter()
    written: list[dict[str, Any]] = []
    current: dict[int, tuple[int, _Tar]] = {}
    exported = rejected = 0
    redacted = storage.redact(source)
    label = f"data export energon {shard_index}/{num_shards}"
    with (
        storage.atomic_write(storage.join(directory, shards.REJECTS)) as rejects,
        Reporter(label, None, unit="samples") as progress,
    ):
        try:
            for (position, line, key, s, tar_index, record_id), media in _read_ahead(
                owned(), options.media_root
            ):
                if isinstance(media, _Rejected):
                    rejected += 1
                    reasons[media.reason] += 1
                    reject = {
                        "source": redacted,
                        "row": position,
                        "id": record_id,
                        "reason": media.reason,
                        "detail": media.detail,
                        "input": line.decode("utf-8"),
                    }
                    rejects.write(orjson.dumps(reject) + b"\n")
                else:
                    open_tar = current.get(s)
                    if open_tar is None or open_tar[0] != tar_index:
                        if open_tar is not None:
                            written.append(open_tar[1].close())
                        name = tar_name(split[s][0], tar_index)
                        current[s] = (tar_index, _Tar(storage.join(root, name), name))
                    current[s][1].add(key, _sample_parts(line, media))
                    exported += 1
                progress.advance(1)
                if crash_after and exported + rejected >= crash_after:
                    os._exit(137)  # the resume tests' stand-in for a SIGKILL (see data.convert.CRASH_ENV)
            for _, tar in current.values():
                written.append(tar.close())
            current.clear()
        except BaseException:
            for _, tar in current.values():
                tar.abort()
            raise

    order = {name: i for i, (name, _) in enumerate(split)}
    written.sort(key=lambda t: (order[t["path"].split("/")[0]], t["path"]))
    return {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "records": counted["records"],
        "exported": exported,
        "rejected": rejected,
        "rejected_by_reason": sorted_counts(reasons),
        "tars": written,
    }


# --- finalize: .nv-meta and Energon's index -----------------------------------------------------------------


def energon_path(url: str) -> Any:
    """`url` as Energon's own filesystem layer (`EPath`) reaches it: local paths as they are, `s3://B/K` and
    `gs://B/K` through Multi-Storage Client's implicit profiles (`msc://_s3-B/K`; boto3 takes the endpoint and
    credentials from the same AWS_* environment as the rest of neva-prep)."""
    from megatron.energon.epathlib import EPath

    proto = storage.protocol(url)
    if proto == "file":
        return EPath(storage.local_path(url))
    if proto in ("s3", "gs"):
        bucket, _, key = url.split("://", 1)[1].partition("/")
        return EPath(f"msc://_{proto}-{bucket}/{key}")
    raise BadInput(
        f"{storage.redact(url)}: Energon's index can be written locally, on s3:// or gs://, not {proto}"
    )


def finalize_export(destination: str, *, options: ExportOptions, num_shards: int = 1) -> EnergonResult:
    """After every export shard: merged rejects, `.nv-meta/` (dataset.yaml, the sample loader, and split.yaml
    plus the index from Energon's own `prepare_dataset`), then `stats.json` last."""
    _check_shard(num_shards, 0)
    options.check()
    try:
        from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator
    except ImportError:
        raise BadInput("the Energon index needs megatron-energon: pip install 'neva-prep[energon]'") from None
    source, merge_stats, merge_raw = _merged(destination, options.name)
    root = export_root(destination)
    expected = fingerprint(options, merge_raw, num_shards)
    parts = [part_dir(destination, i, num_shards) for i in range(num_shards)]
    missing = [
        i for i, d in enumerate(parts) if (m := shards.read_marker(d)) is None or m.fingerprint != expected
    ]
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (", …" if len(missing) > 20 else "")
        raise StepFailed(
            f"{len(missing)} of {num_shards} export shard(s) not finished (with these options) under"
            f" {storage.redact(root)}: {shown}; run `data export energon` for them (--shard-index I)"
        )
    part_stats = [shards.read_stats(d) for d in parts]

    records = merge_stats.get("converted")
    exported = sum(p["exported"] for p in part_stats)
    rejected = sum(p["rejected"] for p in part_stats)
    reasons: Counter[str] = Counter()
    for p in part_stats:
        reasons.update(p["rejected_by_reason"])
    if {p["records"] for p in part_stats} != {records} or exported + rejected != records:
        raise StepFailed(
            f"counts do not add up: {storage.redact(source)} has {records} records, the export shards saw"
            f" {sorted({p['records'] for p in part_stats})}, exported {exported} + rejected {rejected};"
            " re-run the export shards with --force"
        )
    order = {name: i for i, (name, _) in enumerate(options.split)}
    tars = sorted(
        (t for p in part_stats for t in p["tars"]), key=lambda t: (order[t["path"].split("/")[0]], t["path"])
    )
    if not tars:
        raise BadInput(
            f"{storage.redact(source)}: none of its {records} records could be exported (media under"
            f" {storage.redact(options.media_root)}: {dict(reasons)}); check --media-root"
        )

    _merge_rejects(parts, storage.join(root, "rejects.jsonl"))
    meta = storage.join(root, META_DIR)
    first = next(_records(source), None)
    media = media_type.VIDEO if first is not None and media_type.VIDEO in first[2] else media_type.IMAGE
    storage.write_text(storage.join(meta, "dataset.yaml"), DATASET_YAML)
    storage.write_text(storage.join(meta, "crude.yaml"), CRUDE_YAML.format(media=media))
    loader = resources.files("neva_prep.data.writers").joinpath("energon_sample_loader.py").read_bytes()
    storage.write_bytes(storage.join(meta, "sample_loader.py"), loader)
    storage.remove(storage.join(root, "stats.json"))

    names = [n for n, _ in options.split] + [n for n in STANDARD_SPLITS if n not in order]
    # Energon prints its progress; stdout is ours (the summary), so it goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            WebdatasetPreparator.prepare_dataset(
                energon_path(root),
                [t["path"] for t in tars],
                split_parts_patterns=[(n, f"^{n}/[0-9]+[.]tar$") for n in names],
                shuffle_seed=None,
                workers=max(1, min(len(tars), usable_cpus(), 16)),
            )
        except SystemExit:
            raise StepFailed(
                f"{storage.redact(root)}: Energon's prepare_dataset refused the shards"
            ) from None

    info = orjson.loads(storage.read_bytes(storage.join(meta, ".info.json")))
    counts = {t["path"]: t["samples"] for t in tars}
    if info.get("shard_counts") != counts:
        raise StepFailed(
            f"{storage.redact(root)}: Energon's index counts {info.get('shard_counts')} differ from the"
            f" samples written {counts}; re-run the export shards with --force"
        )
    split_samples = {n: sum(t["samples"] for t in tars if t["path"].startswith(f"{n}/")) for n in names}
    stats = {
        "name": options.name,
        "source": storage.redact(source),
        "media_root": storage.redact(options.media_root),
        "records": records,
        "exported": exported,
        "rejected": rejected,
        "rejected_by_reason": sorted_counts(reasons),
        "samples_per_shard": options.samples_per_shard,
        "split": {n: w for n, w in options.split},
        "split_samples": split_samples,
        "num_shards": num_shards,
        "tars": tars,
    }
    storage.write_bytes(storage.join(root, "stats.json"), _json_file(stats))
    return EnergonResult(
        root=root,
        records=records,
        exported=exported,
        rejected=rejected,
        tars=len(tars),
        split_samples=split_samples,
        rejected_by_reason=sorted_counts(reasons),
    )


def _merge_rejects(parts: list[str], url: str) -> None:
    """Every shard's rejects (each in record order) -> one file in record order, streamed."""

    def lines(directory: str) -> Iterator[tuple[int, bytes]]:
        with storage.open_read(storage.join(directory, shards.REJECTS)) as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)["row"], line if line.endswith(b"\n") else line + b"\n"

    with storage.atomic_write(url) as out:
        for _, line in heapq.merge(*(lines(d) for d in parts)):
            out.write(line)
