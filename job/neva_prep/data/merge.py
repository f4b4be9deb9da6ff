"""`data merge`: every finished shard -> one JSON array, one rejects file, one stats file.

The merge reads the shards' splits in source order (file, then byte offset), whichever shard converted
them, so its output does not depend on the number of shards or the order they ran in. It streams: the
records are copied as bytes (never parsed). Duplicates are decided first, over the shards' index files
alone: each record's 8-byte duplicate key (its media and conversations, or for WebVid its id: see
`records.DUPLICATE_KEY`) and id hash are read into numpy arrays (16 bytes a record, ~160 MB for 10M), and a
sort finds the first occurrence of each key ("duplicate record" / "duplicate id": the first in source order
wins) and the ids that repeat among the records kept. A repeated id with other content is a distinct
sample and is kept, counted in `repeated_ids`; `--unique-ids suffix` renames the later ones.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.records import encode_record
from neva_prep.data.stats import Lengths, sorted_counts
from neva_prep.errors import BadInput, StepFailed
from neva_prep.progress import Reporter

_CHUNK = 8 * 2**20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED = {"stats", "rejects", shards.SHARDS_DIR}
UNIQUE_IDS = ("keep", "suffix")
"""`keep`: ids stay as converted (they may repeat); `suffix`: the k-th later record with an id already used
gets `ID_k` (the first free k), a string."""
_REASON = {"id": "duplicate id", "record": "duplicate record"}
_INDEX_BATCH = 2**20


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
    repeated_ids: int = 0
    renamed_ids: int = 0

    def summary(self) -> str:
        line = (
            f"merged {self.num_shards} shard(s): {self.input_rows:,} input rows, {self.converted:,} records,"
            f" {self.rejected:,} rejected -> {storage.redact(self.output)}"
        )
        if self.repeated_ids:
            line += (
                f"\n  repeated ids: {self.repeated_ids:,} records share their id with an earlier record"
                " (kept: other content)"
            )
            if self.renamed_ids:
                line += f"; {self.renamed_ids:,} renamed ID_k (--unique-ids suffix)"
        if self.rejected_by_reason:
            line += "\n  rejected: " + ", ".join(f"{r}: {n:,}" for r, n in self.rejected_by_reason.items())
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


def record_bytes(url: str, offset: int, length: int, last: bytes) -> Iterator[bytes]:
    """A split's record range of a shard's records, in chunks; the range's last two bytes, `last` in the
    file (`shards.records_tail`), come out as `shards.RECORD_END`."""
    keep = len(shards.RECORD_END)
    if length <= 0:
        return
    yield from read_range(url, offset, length - keep)
    check_end(url, offset, length, last)
    yield shards.RECORD_END


def check_end(url: str, offset: int, length: int, last: bytes) -> None:
    """StepFailed unless the record range ends with `last` (`shards.records_tail`)."""
    keep = len(shards.RECORD_END)
    if b"".join(read_range(url, offset + length - keep, keep)) != last:
        raise StepFailed(f"{storage.redact(url)}: a record range does not end a record; re-run the shard")


def read_records(url: str, offset: int, length: int, last: bytes) -> Iterator[list[bytes]]:
    """The records (without their `shards.RECORD_END`) of a split's record range (`record_bytes`), a
    chunk's worth at a time."""
    end = shards.RECORD_END
    tail = b""
    for chunk in record_bytes(url, offset, length, last):
        records = (tail + chunk).split(end)
        tail = records.pop()
        if records:
            yield records
    if tail:
        raise StepFailed(f"{storage.redact(url)}: a record range does not end a record; re-run the shard")


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


def finished_shards(
    destination: str, num_shards: int | None
) -> tuple[int, list[shards.Marker], list[dict[str, Any]]]:
    """(num_shards, every shard's marker and stats) — or StepFailed naming the shards that have not
    finished, or BadInput when they were made from different input versions or options."""
    if not storage.exists(destination):  # a wrong path, not shards still to come: retrying cannot help
        raise BadInput(f"{storage.redact(destination)}: no such folder")
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
        raise BadInput(f"{storage.redact(destination)}: {_mismatch(markers)}")
    return (
        num_shards,
        markers,
        [shards.read_stats(shards.shard_dir(destination, i, num_shards)) for i in range(num_shards)],
    )


def _mismatch(markers: list[shards.Marker]) -> str:
    """What differs between the shards' markers: the input files (named, with the shards of each
    version) or, failing that, the options."""
    versions: dict[str, dict[str, list[int]]] = {}
    for m in markers:
        for identity in m.inputs:
            version = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS).decode()
            versions.setdefault(identity["source"], {}).setdefault(version, []).append(m.shard_index)
    changed = {src: v for src, v in versions.items() if len(v) > 1}
    added = {src for src, v in versions.items() if sum(len(ix) for ix in v.values()) < len(markers)}
    redo = "; re-run `data convert --force` for every shard"
    if changed:
        parts = []
        for src, by_version in list(changed.items())[:5]:
            groups = " vs ".join("shards " + ",".join(map(str, ix)) for ix in by_version.values())
            parts.append(f"{src} ({groups})")
        return "shards were converted from different versions of " + "; ".join(parts) + redo
    if added:
        return (
            "shards were converted from different input files (" + ", ".join(sorted(added)[:5]) + ")" + redo
        )
    return "shards were converted with different options" + redo


def merge_shards(
    destination: str, *, name: str, num_shards: int | None = None, unique_ids: str = "keep"
) -> MergeResult:
    """Merge the shards under `destination` into `destination/NAME.json`, `rejects.jsonl`, `stats.json`."""
    _check_name(name)
    if unique_ids not in UNIQUE_IDS:
        raise BadInput(f"--unique-ids must be one of {', '.join(UNIQUE_IDS)}, got {unique_ids!r}")
    num_shards, markers, shard_stats = finished_shards(destination, num_shards)
    _check_not_empty(destination, markers, shard_stats)
    output = storage.join(destination, f"{name}.json")
    rejects_url = storage.join(destination, "rejects.jsonl")
    stats_url = storage.join(destination, "stats.json")
    reason = _REASON[shard_stats[0].get("duplicates_by", "record")]

    # Every split of every shard, in source order; rows of earlier splits give each split's row offset.
    order = sorted(
        (split["file_index"], split["start"], shard, split, shards.records_tail(stats, split))
        for shard, stats in enumerate(shard_stats)
        for split in stats["splits"]
    )
    parts = [(shard, split, last) for _, _, shard, split, last in order]
    plan = _Dedup.of(destination, num_shards, parts, unique_ids)
    # One framed shard whose every record stays as it is: its records file is the array (`shards.FRAME_START`)
    whole = num_shards == 1 and bool(shard_stats[0].get("framed")) and plan.keep.all() and not plan.renames
    offsets: dict[int, int] = {}
    reasons: Counter[str] = Counter()
    lengths = Lengths()
    duplicates = [0] * num_shards
    input_rows = converted = renamed = 0
    at = 0  # position of the next record in the dedup plan (converted records, source order)

    with (
        contextlib.nullcontext() if whole else storage.atomic_write(output) as out,
        storage.atomic_write(rejects_url) as rej,
        Reporter(f"data merge {name}", sum(s["input_rows"] for s in shard_stats), unit="rows") as progress,
    ):
        writer = None if out is None else _ArrayWriter(out)
        for file_index, _start, shard, split, last in order:
            directory = shards.shard_dir(destination, shard, num_shards)
            row_offset = offsets.get(file_index, 0)
            offsets[file_index] = row_offset + split["rows"]
            shard_rejects = _shard_rejects(directory, split)
            pending = next(shard_rejects, None)
            records_url = storage.join(directory, shards.RECORDS)
            index = _IndexStream(
                storage.join(directory, shards.INDEX), split["index_offset"], split["converted"]
            )
            count = split["converted"]
            if not plan.new_ids(at, count) and plan.keep[at : at + count].all():
                # the common case: the split's records as they are, separators included, never split
                offset, length = split["records_offset"], split["records_bytes"]
                if writer is None:
                    pass  # the framed records file is published whole, after the loop
                elif writer.copy_local(records_url, offset, length, last, count):
                    pass  # in the kernel (copy_file_range), never through Python's memory
                elif not writer.copy(record_bytes(records_url, offset, length, last), count):
                    raise StepFailed(
                        f"{storage.redact(records_url)}: not as many records as its stats say;"
                        " re-run the shard"
                    )
                while index.left:
                    lengths.merge(shards.index_lengths(index.take(min(index.left, _INDEX_BATCH))))
                progress.advance(count)
                at += count
                kept = count
                batches: Iterator[list[bytes]] = iter(())
            else:
                kept = 0
                batches = read_records(records_url, split["records_offset"], split["records_bytes"], last)
            for lines in batches:
                entries = index.take(len(lines))
                progress.advance(len(lines))
                keep = plan.keep[at : at + len(lines)]
                new_ids = plan.new_ids(at, len(lines))
                at += len(lines)
                out_lines = []
                for j, (line, k) in enumerate(zip(lines, keep.tolist(), strict=True)):
                    if k:
                        new_id = new_ids.get(j)
                        if new_id is not None:
                            record = orjson.loads(line)
                            record["id"] = new_id
                            line = encode_record(record)
                            renamed += 1
                        out_lines.append(line)
                        continue
                    split_row = int(entries["row"][j])
                    while pending is not None and pending["split_row"] < split_row:
                        _write_reject(rej, pending, row_offset)
                        pending = next(shard_rejects, None)
                    _write_reject(rej, _duplicate(split, split_row, line, reason), row_offset)
                    reasons[reason] += 1
                    duplicates[shard] += 1
                assert writer is not None  # `whole` keeps every record as it is
                writer.add(out_lines)
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
        if writer is not None:
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
            "duplicates_by": reason,
            "repeated_ids": plan.repeated_ids,
            "unique_ids": unique_ids,
            "renamed_ids": renamed,
            "lengths": lengths.to_json(),
            "num_shards": num_shards,
            "shards": [
                {
                    "shard_index": i,
                    "input_rows": s["input_rows"],
                    "converted": s["converted"] - duplicates[i],
                    "rejected": s["rejected"] + duplicates[i],
                    "rejected_by_reason": sorted_counts(
                        Counter(s["rejected_by_reason"]) + Counter({reason: duplicates[i]})
                    ),
                    "splits": [
                        {k: sp[k] for k in ("source", "file_index", "start", "end", "rows")}
                        for sp in s["splits"]
                    ],
                }
                for i, s in enumerate(shard_stats)
            ],
        }
    if whole:
        records = storage.join(shards.shard_dir(destination, 0, 1), shards.RECORDS)
        _publish_whole(records, shard_stats[0], output)
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
        repeated_ids=plan.repeated_ids,
        renamed_ids=renamed,
    )


def _publish_whole(records_url: str, stats: dict[str, Any], output: str) -> None:
    """Publish a framed shard's records file as the output once its frame and size are as its stats say."""
    size = len(shards.FRAME_START) + sum(s["records_bytes"] for s in stats["splits"]) + 1
    start, end = len(shards.FRAME_START), len(shards.FRAME_END)
    ends = (
        storage.size(records_url) == size
        and b"".join(read_range(records_url, 0, start)) == shards.FRAME_START
        and b"".join(read_range(records_url, size - end, end)) == shards.FRAME_END
    )
    if not ends:
        raise StepFailed(f"{storage.redact(records_url)}: not framed as its stats say; re-run the shard")
    storage.publish_copy(records_url, output)


def _check_not_empty(
    destination: str, markers: list[shards.Marker], shard_stats: list[dict[str, Any]]
) -> None:
    """A dataset without a single record is bad input, not a success that writes `[]`."""
    rows = sum(s["input_rows"] for s in shard_stats)
    if rows == 0:
        names = [i["source"] for i in markers[0].inputs]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise BadInput(f"{shown}: no data rows in any input (empty, a header or an empty array only)")
    if sum(s["converted"] for s in shard_stats) == 0:
        reasons: Counter[str] = Counter()
        for s in shard_stats:
            reasons.update(s["rejected_by_reason"])
        top = ", ".join(f"{r}: {n:,}" for r, n in list(sorted_counts(reasons).items())[:3])
        raise BadInput(
            f"{storage.redact(destination)}: all {rows} input rows were rejected ({top}); nothing to merge"
            f" (the reasons are in {storage.redact(storage.join(destination, shards.SHARDS_DIR))}/*/"
            f"{shards.REJECTS})"
        )


def _duplicate(split: dict[str, Any], split_row: int, line: bytes, reason: str) -> dict[str, Any]:
    if reason == "duplicate id":
        detail = f"id {orjson.loads(line).get('id')!r} already used by an earlier record (the first is kept)"
    else:
        detail = "the same media and conversations as an earlier record (the first is kept)"
    return {
        "source": split["source"],
        "split_row": split_row,
        "reason": reason,
        "detail": detail,
        "input": line.decode("utf-8"),
    }


@dataclass
class _Dedup:
    """What the merge does with each converted record, in source order, decided from the index alone."""

    keep: np.ndarray  # bool per converted record: the first of its duplicate key
    repeated_ids: int  # kept records whose id text an earlier kept record already has
    renames: dict[int, str]  # position of a converted record -> its new id (--unique-ids suffix)

    def new_ids(self, start: int, n: int) -> dict[int, str]:
        """{offset in the batch: new id} for the batch of `n` records at `start`."""
        if not self.renames:
            return {}
        return {p - start: self.renames[p] for p in range(start, start + n) if p in self.renames}

    @classmethod
    def of(
        cls,
        destination: str,
        num_shards: int,
        splits: list[tuple[int, dict[str, Any], bytes]],
        unique_ids: str,
    ) -> _Dedup:
        ids, keys = [], []
        for shard, split, _ in splits:
            url = storage.join(shards.shard_dir(destination, shard, num_shards), shards.INDEX)
            stream = _IndexStream(url, split["index_offset"], split["converted"])
            while stream.left:
                entries = stream.take(min(stream.left, _INDEX_BATCH))
                ids.append(entries["id"].copy())
                keys.append(entries["key"].copy())
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype="<u8")
        all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype="<u8")
        del ids, keys
        keep = np.zeros(len(all_keys), dtype=bool)
        keep[np.unique(all_keys, return_index=True)[1]] = True  # the first occurrence of each key
        if np.array_equal(all_ids, all_keys):  # the id is the key (WebVid): kept ids are already unique
            return cls(keep=keep, repeated_ids=0, renames={})
        del all_keys
        kept_positions = np.flatnonzero(keep)
        kept_ids = all_ids[kept_positions]
        sorter = np.argsort(kept_ids, kind="stable")  # equal ids stay in source order
        ordered = kept_ids[sorter]
        later = np.zeros(len(ordered), dtype=bool)
        later[1:] = ordered[1:] == ordered[:-1]
        repeated = int(later.sum())
        renames: dict[int, str] = {}
        if unique_ids == "suffix" and repeated:
            renames = _suffixes(destination, num_shards, splits, kept_positions[sorter[later]], ordered)
        return cls(keep=keep, repeated_ids=repeated, renames=renames)


def _suffixes(
    destination: str,
    num_shards: int,
    splits: list[tuple[int, dict[str, Any], bytes]],
    positions: np.ndarray,
    taken: np.ndarray,
) -> dict[int, str]:
    """New ids for the records at `positions` (kept, with an id used before): `ID_k`, k counting the
    record's earlier namesakes, raised while `ID_k` is an id already in use (`taken`, sorted hashes)."""
    wanted = set(positions.tolist())
    ordered = np.sort(positions)
    renames: dict[int, str] = {}
    used: set[bytes] = set()
    counts: Counter[str] = Counter()
    at = 0
    for shard, split, last in splits:
        n = split["converted"]
        if np.searchsorted(ordered, at + n) > np.searchsorted(ordered, at):  # a record to rename in here
            url = storage.join(shards.shard_dir(destination, shard, num_shards), shards.RECORDS)
            position = at
            for lines in read_records(url, split["records_offset"], split["records_bytes"], last):
                for line in lines:
                    if position in wanted:
                        text = str(orjson.loads(line)["id"])
                        k = counts[text] + 1
                        while True:
                            candidate = f"{text}_{k}"
                            h = shards.id_key(candidate)
                            hv = int.from_bytes(h, "little")
                            i = int(np.searchsorted(taken, hv))
                            if h not in used and not (i < len(taken) and int(taken[i]) == hv):
                                break
                            k += 1
                        counts[text] = k
                        used.add(h)
                        renames[position] = candidate
                    position += 1
        at += n
    return renames


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
    """Writes `[\\n` + records joined by `,\\n` + `\\n]\\n` (`[]\\n` when empty) from pieces that end
    with `shards.RECORD_END`: each piece is written as it is but for its last two bytes, held back until the
    next piece (then written) or the end (then replaced by the closing bracket)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.count = 0
        self.held = b"[\n"

    def _write(self, data: bytes) -> None:
        keep = len(shards.RECORD_END)
        if len(data) < keep:  # a sliver of a chunk: joined to what is held
            data, self.held = self.held + data, b""
        self.f.write(self.held)
        self.f.write(memoryview(data)[:-keep])
        self.held = data[-keep:]

    def copy(self, chunks: Iterator[bytes], count: int) -> bool:
        """`count` records as bytes that end with `RECORD_END`, in chunks cut anywhere; False when the
        bytes do not hold `count` records (a record holds no newline: each ends with the one of its end)."""
        lines = 0
        for chunk in chunks:
            if chunk:
                lines += chunk.count(b"\n")
                self._write(chunk)
        self.count += count
        return lines == count

    def copy_local(self, url: str, offset: int, length: int, last: bytes, count: int) -> bool:
        """`copy` for a local shard into a local output, by `os.copy_file_range`; False (nothing written)
        where that cannot be used. The range must end a record; its record count is the index's."""
        fileno = getattr(self.f, "fileno", None)
        if not (count and storage.is_local(url) and fileno and hasattr(os, "copy_file_range")):
            return False
        keep = len(shards.RECORD_END)
        check_end(url, offset, length, last)
        with open(storage.local_path(url), "rb") as src:
            self.f.write(self.held)
            self.f.flush()
            at, left = offset, length - keep
            try:
                while left > 0:
                    done = os.copy_file_range(src.fileno(), fileno(), left, at)
                    if done <= 0:
                        raise StepFailed(
                            f"{storage.redact(url)}: shorter than its stats say; re-run the shard"
                        )
                    at, left = at + done, left - done
            except OSError:
                if at != offset:
                    raise
                self.held = (
                    b""  # nothing copied (no kernel support): the caller streams it after the separator
                )
                return False
        self.held = shards.RECORD_END
        self.count += count
        return True

    def add(self, records: list[bytes]) -> None:
        if records:
            end = shards.RECORD_END
            self._write(end.join(records) + end)
            self.count += len(records)

    def close(self) -> None:
        if self.count and self.held != shards.RECORD_END:
            raise StepFailed("a shard's records do not end a record; re-run the shards with --force")
        self.f.write(b"\n]\n" if self.count else b"[]\n")
