"""`data merge`: every finished shard -> one JSON array, one rejects file, one stats file.

The merge reads the shards' splits in source order (file, then byte offset), whichever shard converted
them, so its output does not depend on the number of shards or the order they ran in. It streams: the
records are copied as bytes (never parsed); only the 8-byte id hashes of kept records stay in memory, to
reject later duplicates ("duplicate id": the first occurrence in source order wins). That set costs
~70 bytes per record in CPython (~0.7 GB for WebVid's 10M rows).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.stats import Lengths, sorted_counts
from neva_prep.errors import BadInput, StepFailed
from neva_prep.progress import Reporter

_CHUNK = 8 * 2**20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED = {"stats", "rejects", shards.SHARDS_DIR}


@dataclass(frozen=True)
class MergeResult:
    output: str
    rejects: str
    stats: str
    num_shards: int
    input_rows: int
    converted: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        line = (
            f"merged {self.num_shards} shard(s): {self.input_rows} input rows, {self.converted} records,"
            f" {self.rejected} rejected -> {storage.redact(self.output)}"
        )
        if self.rejected_by_reason:
            line += "\n  rejected: " + ", ".join(f"{r}: {n}" for r, n in self.rejected_by_reason.items())
            line += f"\n  rejects: {storage.redact(self.rejects)}"
        return line


def read_range(url: str, offset: int, length: int) -> Iterator[bytes]:
    """Stream `length` bytes of `url` from `offset` in chunks."""
    if length <= 0:
        return
    with storage.open_read(url) as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise StepFailed(
                    f"{storage.redact(url)}: shorter than its stats say; re-run the shard (--force)"
                )
            left -= len(chunk)
            yield chunk


def read_line_batches(url: str, offset: int, length: int) -> Iterator[list[bytes]]:
    """The lines (without newline) of a byte range that ends with a newline, a chunk's worth at a time."""
    tail = b""
    for chunk in read_range(url, offset, length):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        if lines:
            yield lines
    if tail:
        raise StepFailed(f"{storage.redact(url)}: a record range does not end on a line; re-run the shard")


class _IndexStream:
    """`count` index entries from entry `first` of a shard's `index.bin`, handed out in batches."""

    def __init__(self, url: str, first: int, count: int) -> None:
        self.url = url
        self.left = count
        self._chunks = read_range(url, first * shards.INDEX_ENTRY.size, count * shards.INDEX_ENTRY.size)
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        need = n * shards.INDEX_ENTRY.size
        if n > self.left:
            raise StepFailed(
                f"{storage.redact(self.url)}: fewer index entries than records; re-run the shard"
            )
        if len(self._buf) - self._pos < need:
            parts = [self._buf[self._pos :]]
            have = len(parts[0])
            while have < need:
                chunk = next(self._chunks)
                parts.append(chunk)
                have += len(chunk)
            self._buf, self._pos = b"".join(parts), 0
        entries = shards.index_entries(self._buf[self._pos : self._pos + need])
        self._pos += need
        self.left -= n
        return entries


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in _RESERVED or name.endswith(".json"):
        raise BadInput(
            f"--name {name!r}: use a plain file stem (letters, digits, '.', '_', '-'),"
            " not 'stats' or 'rejects'; the output is DST/NAME.json"
        )


def finished_shards(destination: str, num_shards: int | None) -> tuple[int, list[dict[str, Any]]]:
    """(num_shards, every shard's stats) — or StepFailed naming the shards that have not finished."""
    found = shards.shard_counts(destination)
    if num_shards is None:
        if not found:
            raise StepFailed(
                f"{storage.redact(destination)}: no shards found under {shards.SHARDS_DIR}/;"
                " run `data convert` first"
            )
        if len(found) > 1:
            counts = ", ".join(str(n) for n in found)
            raise StepFailed(
                f"{storage.redact(destination)}: shards of runs with different --num-shards ({counts});"
                " pass --num-shards to merge one of them"
            )
        num_shards = next(iter(found))
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    markers: list[shards.Marker] = []
    missing: list[int] = []
    for i in range(num_shards):
        marker = shards.read_marker(shards.shard_dir(destination, i, num_shards))
        if marker is None:
            missing.append(i)
        else:
            markers.append(marker)
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (", …" if len(missing) > 20 else "")
        raise StepFailed(
            f"{len(missing)} of {num_shards} shard(s) not finished under {storage.redact(destination)}:"
            f" {shown}; re-run `data convert` for them (--shard-index I)"
        )
    if len({m.fingerprint for m in markers}) > 1:
        raise StepFailed(
            f"{storage.redact(destination)}: shards were converted from different inputs or options;"
            " re-run `data convert` with --force for every shard"
        )
    return num_shards, [
        shards.read_stats(shards.shard_dir(destination, i, num_shards)) for i in range(num_shards)
    ]


def merge_shards(destination: str, *, name: str, num_shards: int | None = None) -> MergeResult:
    """Merge the shards under `destination` into `destination/NAME.json`, `rejects.jsonl`, `stats.json`."""
    _check_name(name)
    num_shards, shard_stats = finished_shards(destination, num_shards)
    output = storage.join(destination, f"{name}.json")
    rejects_url = storage.join(destination, "rejects.jsonl")
    stats_url = storage.join(destination, "stats.json")

    # Every split of every shard, in source order; rows of earlier splits give each split's row offset.
    order = sorted(
        (split["file_index"], split["start"], shard, split)
        for shard, stats in enumerate(shard_stats)
        for split in stats["splits"]
    )
    offsets: dict[int, int] = {}
    seen: set[int] = set()  # 8-byte id hashes of the records kept (see shards.id_key)
    reasons: Counter[str] = Counter()
    lengths = Lengths()
    duplicates = [0] * num_shards
    input_rows = converted = 0

    with (
        storage.atomic_write(output) as out,
        storage.atomic_write(rejects_url) as rej,
        Reporter(f"data merge {name}", sum(s["input_rows"] for s in shard_stats), unit="rows") as progress,
    ):
        writer = _ArrayWriter(out)
        for file_index, _start, shard, split in order:
            directory = shards.shard_dir(destination, shard, num_shards)
            row_offset = offsets.get(file_index, 0)
            offsets[file_index] = row_offset + split["rows"]
            shard_rejects = _shard_rejects(directory, split)
            pending = next(shard_rejects, None)
            batches = read_line_batches(
                storage.join(directory, shards.RECORDS), split["records_offset"], split["records_bytes"]
            )
            index = _IndexStream(
                storage.join(directory, shards.INDEX), split["index_offset"], split["converted"]
            )
            kept = 0
            for lines in batches:
                entries = index.take(len(lines))
                progress.advance(len(lines))
                keys = entries["id"].tolist()
                fresh = set(keys)
                if len(fresh) == len(keys) and seen.isdisjoint(fresh):
                    # The common case, with no per-record Python: no id of this batch was seen before.
                    seen |= fresh
                    writer.add(lines)
                    lengths.merge(shards.index_lengths(entries))
                    kept += len(lines)
                    continue
                keep = np.ones(len(lines), dtype=bool)
                for j, key in enumerate(keys):
                    if key not in seen:
                        seen.add(key)
                        continue
                    keep[j] = False
                    split_row = int(entries["row"][j])
                    while pending is not None and pending["split_row"] < split_row:
                        _write_reject(rej, pending, row_offset)
                        pending = next(shard_rejects, None)
                    record_id = orjson.loads(lines[j]).get("id")
                    duplicate = {
                        "source": split["source"],
                        "split_row": split_row,
                        "reason": "duplicate id",
                        "detail": f"id {record_id!r} already used by an earlier record (the first is kept)",
                        "input": lines[j].decode("utf-8"),
                    }
                    _write_reject(rej, duplicate, row_offset)
                    reasons["duplicate id"] += 1
                    duplicates[shard] += 1
                writer.add([line for line, k in zip(lines, keep.tolist(), strict=True) if k])
                lengths.merge(shards.index_lengths(entries[keep]))
                kept += int(keep.sum())
            if index.left:
                raise StepFailed(
                    f"{storage.redact(index.url)}: more index entries than records; re-run the shard"
                )
            while pending is not None:
                _write_reject(rej, pending, row_offset)
                pending = next(shard_rejects, None)
            input_rows += split["rows"]
            converted += kept
            progress.advance(split["rows"] - split["converted"])
        writer.close()

        # Independent tallies: rows read from the splits, records copied, rejects the shards and the
        # duplicate check reported. If they disagree the shards are inconsistent, and nothing is published.
        for stats in shard_stats:
            reasons.update(stats["rejected_by_reason"])
        rejected = sum(s["rejected"] for s in shard_stats) + sum(duplicates)
        if input_rows != converted + rejected or rejected != sum(reasons.values()):
            raise StepFailed(
                f"counts do not add up: {input_rows} input rows != {converted} converted"
                f" + {rejected} rejected ({sum(reasons.values())} by reason); re-run the shards with --force"
            )
        stats_doc = {
            "name": name,
            "output": storage.redact(output),
            "input_rows": input_rows,
            "converted": converted,
            "rejected": rejected,
            "rejected_by_reason": sorted_counts(reasons),
            "lengths": lengths.to_json(),
            "num_shards": num_shards,
            "shards": [
                {
                    "shard_index": i,
                    "input_rows": s["input_rows"],
                    "converted": s["converted"] - duplicates[i],
                    "rejected": s["rejected"] + duplicates[i],
                    "rejected_by_reason": sorted_counts(
                        Counter(s["rejected_by_reason"]) + Counter({"duplicate id": duplicates[i]})
                    ),
                    "splits": [
                        {k: sp[k] for k in ("source", "file_index", "start", "end", "rows")}
                        for sp in s["splits"]
                    ],
                }
                for i, s in enumerate(shard_stats)
            ],
        }
    # Written last, like a shard's marker: a stats file says the array and the rejects beside it are complete.
    storage.write_bytes(
        stats_url, orjson.dumps(stats_doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )

    return MergeResult(
        output=output,
        rejects=rejects_url,
        stats=stats_url,
        num_shards=num_shards,
        input_rows=input_rows,
        converted=converted,
        rejected=rejected,
        rejected_by_reason=sorted_counts(reasons),
    )


def _shard_rejects(directory: str, split: dict[str, Any]) -> Iterator[dict[str, Any]]:
    url = storage.join(directory, shards.REJECTS)
    for lines in read_line_batches(url, split["rejects_offset"], split["rejects_bytes"]):
        yield from map(orjson.loads, lines)


def _write_reject(f: IO[bytes], reject: dict[str, Any], row_offset: int) -> None:
    """A reject as merged: `row` is the 1-based record number in its source file."""
    f.write(
        orjson.dumps(
            {
                "source": reject["source"],
                "row": row_offset + reject["split_row"],
                "reason": reject["reason"],
                "detail": reject["detail"],
                "input": reject["input"],
            }
        )
        + b"\n"
    )


class _ArrayWriter:
    """Writes `[\\n` + records joined by `,\\n` + `\\n]\\n` (`[]\\n` when empty), a batch per write."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.count = 0

    def add(self, records: list[bytes]) -> None:
        if records:
            self.f.write((b"[\n" if self.count == 0 else b",\n") + b",\n".join(records))
            self.count += len(records)

    def close(self) -> None:
        self.f.write(b"\n]\n" if self.count else b"[]\n")
