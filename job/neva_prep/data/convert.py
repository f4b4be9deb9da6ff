"""`data convert`: one shard of the input -> its records, rejects, stats and completion marker.

A shard reads only its splits (`sources.splits_for_shard`), one row at a time, and streams three files
into its folder (`shards.py` has the layout). Nothing is decided across shards here: duplicates are found
by the merge, which sees every shard in source order; the shard only hashes each record's id and
duplicate key (`records.DUPLICATE_KEY`) into its index.

Nothing is created at the destination before the shard's input files pass `sources.check_split`, and a
shard that still fails with bad input removes the folders it made: exit 2 leaves the destination as it was.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa

from neva_prep import storage
from neva_prep.data import shards
from neva_prep.data.media import MediaRoot
from neva_prep.data.readers import check_split, columnar, read_split
from neva_prep.data.readers.base import Split
from neva_prep.data.readers.files import expand_sources, file_identity, file_kind
from neva_prep.data.readers.split import splits_for_shard
from neva_prep.data.records import (
    DUPLICATE_KEY,
    ConvertOptions,
    RecordError,
    encode_record,
    llava_shortcut,
    media_paths,
    record_builder,
)
from neva_prep.data.stats import Lengths, record_lengths, sorted_counts
from neva_prep.errors import BadInput
from neva_prep.progress import Reporter

CRASH_ENV = "NEVA_PREP_TEST_CRASH_AFTER_ROWS"
"""Test hook: when set to K, the process dies (`os._exit(137)`, like a SIGKILL) after reading K rows,
with its temporary files half-written. Used by the resume tests; never set it in production."""

_FLUSH_ROWS = 4096


@dataclass(frozen=True)
class ShardResult:
    """What one shard did (or found already done)."""

    directory: str
    shard_index: int
    num_shards: int
    input_rows: int
    converted: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: bool = False

    def summary(self) -> str:
        head = f"shard {self.shard_index} of {self.num_shards}"
        if self.skipped:
            head += " already done (skipped; --force to redo)"
        line = (
            f"{head}: {self.input_rows:,} input rows, {self.converted:,} converted,"
            f" {self.rejected:,} rejected -> {storage.redact(self.directory)}"
        )
        if self.rejected_by_reason:
            line += "\n  rejected: " + ", ".join(f"{r}: {n:,}" for r, n in self.rejected_by_reason.items())
        return line

    @classmethod
    def from_stats(cls, directory: str, stats: dict[str, Any], *, skipped: bool) -> ShardResult:
        return cls(
            directory=directory,
            shard_index=stats["shard_index"],
            num_shards=stats["num_shards"],
            input_rows=stats["input_rows"],
            converted=stats["converted"],
            rejected=stats["rejected"],
            rejected_by_reason=stats["rejected_by_reason"],
            skipped=skipped,
        )


def shard_index_from_env(environ: dict[str, str] | None = None) -> int:
    """The array index of this task: Kubernetes Indexed Jobs, then Slurm job arrays, else 0."""
    env = os.environ if environ is None else environ
    for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise BadInput(f"${name}={value!r} is not a shard index (an integer)") from None
    return 0


def convert_shard(
    source: str,
    destination: str,
    *,
    options: ConvertOptions,
    num_shards: int = 1,
    shard_index: int = 0,
    media_root: str | None = None,
    force: bool = False,
) -> ShardResult:
    """Convert shard `shard_index` of `num_shards` of `source` (a file, URL or glob) under `destination`."""
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(
            f"--shard-index {shard_index} is out of range for --num-shards {num_shards} (0..{num_shards - 1})"
        )
    record_builder(options)  # unusable options (--from webvid --media image, ...) fail before any I/O
    sources = expand_sources(source)
    # Identities are taken before reading: an input changed while the shard runs is redone next time.
    inputs = [file_identity(url) for url in sources]
    sizes = [int(i["size"]) for i in inputs]
    if not any(sizes):
        raise BadInput(f"{_names(sources)}: empty (0 bytes); no data rows to convert")
    fmt = options.source_format
    splits = splits_for_shard(sources, fmt, num_shards, shard_index, sizes=sizes)
    directory = shards.shard_dir(destination, shard_index, num_shards)
    marker = shards.Marker(
        fingerprint=shards.fingerprint(inputs, fmt, options, media_root, num_shards),
        shard_index=shard_index,
        num_shards=num_shards,
        splits=[shards.split_json(s) for s in splits],
        inputs=inputs,
    )
    if not force and shards.read_marker(directory) == marker:
        return ShardResult.from_stats(directory, shards.read_stats(directory), skipped=True)
    for split in splits:
        check_split(split, fmt, options)
    # This shard reads every byte of the input: no rows here means no rows in the dataset.
    whole_input = [s.source for s in splits] if sum(s.end - s.start for s in splits) == sum(sizes) else None

    made = _missing_dirs(directory)
    try:
        # A re-run first withdraws the old marker: a crash from here on must not leave "done" over new files.
        storage.remove(storage.join(directory, shards.DONE))
        storage.makedirs(directory)
        stats = _write_shard(directory, splits, options, media_root, shard_index, num_shards, whole_input)
        storage.write_bytes(storage.join(directory, shards.STATS), _json_file(stats))
        storage.write_bytes(storage.join(directory, shards.DONE), marker.to_bytes())
    except BaseException:
        _remove_empty_dirs(made)
        raise
    return ShardResult.from_stats(directory, stats, skipped=False)


def _names(urls: list[str], limit: int = 5) -> str:
    shown = ", ".join(storage.redact(u) for u in urls[:limit])
    return shown + (f" and {len(urls) - limit} more" if len(urls) > limit else "")


def _missing_dirs(directory: str) -> list[str]:
    """The local folders `storage.makedirs(directory)` would create, deepest first (none on object stores)."""
    if not storage.is_local(directory):
        return []
    missing = []
    path = os.path.abspath(storage.local_path(directory))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_empty_dirs(paths: list[str]) -> None:
    """Undo `_missing_dirs`' folders, deepest first, as far as they are still empty."""
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            return


def _json_file(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


_LATER = bytes(8)
"""An index entry's id hash (or id-keyed duplicate key) until `_Shard.flush` hashes its block's ids."""


class _Shard:
    """The three streams of a shard, buffered row by row and written in large blocks.

    Positions are only read at split boundaries, after a flush, so they are exact byte offsets.
    """

    def __init__(
        self, records: IO[bytes], index: IO[bytes], rejects: IO[bytes], *, by_id: bool, framed: bool
    ) -> None:
        self.files = (records, index, rejects)
        self.framed = framed
        self.held = b""
        """The last record's `RECORD_END`, written before the next records or replaced by `close`."""
        if framed:
            records.write(shards.FRAME_START)
        self.records: list[bytes] = []
        self.index: list[bytes] = []
        """Entries whose id hash (and, when `by_id`, duplicate key) is filled in at the flush, from `ids`."""
        self.ids: list[str] = []
        self.by_id = by_id
        self.rejects: list[bytes] = []
        self.records_pos = len(shards.FRAME_START) if framed else 0
        self.rejects_pos = 0
        self.lengths = Lengths()

    def _write_records(self, data: bytes | memoryview) -> None:
        if len(data):
            records_f = self.files[0]
            records_f.write(self.held)
            records_f.write(memoryview(data)[: -len(shards.RECORD_END)])
            self.held = bytes(data[-len(shards.RECORD_END) :])
            self.records_pos += len(data)

    def close(self) -> None:
        """Flush, and end the records file: with the held `RECORD_END`, or framed with `FRAME_END`."""
        self.flush()
        if self.framed:
            self.files[0].write(shards.FRAME_END if self.held else shards.FRAME_END[1:])
        else:
            self.files[0].write(self.held)
        self.held = b""

    def add_block(self, records: bytes | memoryview, index: bytes) -> None:
        """Records (each ending with `shards.RECORD_END`) and their index entries, written as they are."""
        self.flush()
        self._write_records(records)
        self.files[1].write(index)
        self.lengths.merge(shards.index_lengths(index))

    def flush(self) -> None:
        _, index_f, rejects_f = self.files
        if self.records:
            self._write_records(shards.RECORD_END.join(self.records) + shards.RECORD_END)
            self.records.clear()
        if self.index:
            entries = np.frombuffer(bytearray(b"".join(self.index)), dtype=shards.INDEX_DTYPE)
            entries["id"] = shards.id_keys(pa.array(self.ids, pa.string()))  # a column at once
            if self.by_id:
                entries["key"] = entries["id"]
            index_f.write(entries.tobytes())
            self.lengths.merge(shards.index_lengths(entries))
            self.index.clear()
            self.ids.clear()
        if self.rejects:
            data = b"".join(self.rejects)
            rejects_f.write(data)
            self.rejects_pos += len(data)
            self.rejects.clear()


def _write_columnar(
    out: _Shard,
    split: Split,
    kind: str,
    ordinal: int,
    options: ConvertOptions,
    reasons: Counter[str],
    progress: Reporter,
) -> tuple[int, int, int]:
    """A split by the columnar path (`readers/columnar.py`): (rows, converted, rejected)."""
    rows = converted = rejected = 0
    source = storage.redact(split.source)
    for batch in columnar.convert_split(split, options, record_builder(options), kind):
        out.add_block(batch.records, batch.index)
        for split_row, exc, raw in batch.rejects:
            reasons[exc.reason] += 1
            reject = {
                "source": source,
                "split": ordinal,
                "split_row": split_row,
                "reason": exc.reason,
                "detail": exc.detail,
                "input": raw,
            }
            out.rejects.append(orjson.dumps(reject) + b"\n")
        rows += batch.rows
        converted += batch.converted
        rejected += len(batch.rejects)
        progress.advance(0, batch.rows, "rows")
    return rows, converted, rejected


def _write_shard(
    directory: str,
    splits: list[Split],
    options: ConvertOptions,
    media_root: str | None,
    shard_index: int,
    num_shards: int,
    whole_input: list[str] | None,
) -> dict[str, Any]:
    media = MediaRoot(media_root) if media_root else None
    crash_after = int(os.environ.get(CRASH_ENV) or 0)
    reasons: Counter[str] = Counter()
    split_stats: list[dict[str, Any]] = []
    total_rows = total_converted = total_rejected = 0
    build = record_builder(options)
    pack = shards.INDEX_ENTRY.pack
    content_key = shards.content_key
    by_id = DUPLICATE_KEY[options.source_format] == "id"
    media_key = options.media
    fmt = options.source_format
    shortcut = llava_shortcut(media_key) if fmt == "llava" and media is None else None
    label = f"data convert shard {shard_index}/{num_shards}"

    with ExitStack() as stack:
        out = _Shard(
            *(
                stack.enter_context(storage.atomic_write(storage.join(directory, name)))
                for name in (shards.RECORDS, shards.INDEX, shards.REJECTS)
            ),
            by_id=by_id,
            framed=num_shards == 1,
        )
        records, index, ids, rejects = out.records, out.index, out.ids, out.rejects
        progress = stack.enter_context(Reporter(label, sum(s.end - s.start for s in splits)))
        stack.enter_context(storage.reporting_reads(progress.reading(splits)))  # bytes read of the splits
        for ordinal, split in enumerate(splits):
            rows = converted = rejected = 0
            records_start, rejects_start, index_start = out.records_pos, out.rejects_pos, total_converted
            source = storage.redact(split.source)
            kind = file_kind(split.source, fmt)
            columns = not crash_after and columnar.applies(options, media_root, kind)
            if columns:
                rows, converted, rejected = _write_columnar(
                    out, split, kind, ordinal, options, reasons, progress
                )
            for row in () if columns else read_split(split, fmt, options):
                rows += 1
                done = shortcut(row.value) if shortcut is not None and row.error is None else None
                if done is not None:  # the common LLaVA shape, checked in one pass (records.llava_shortcut)
                    record, *lengths = done
                    converted += 1
                    records.append(orjson.dumps(record))
                    ids.append(str(record["id"]))
                    index.append(pack(_LATER, content_key(record, media_key), row.split_row, *lengths))
                else:
                    try:
                        record = build(row)
                        if media is not None:
                            media.check(media_paths(record, options.media), options.media)
                    except RecordError as exc:
                        rejected += 1
                        reasons[exc.reason] += 1
                        reject = {
                            "source": source,
                            "split": ordinal,
                            "split_row": row.split_row,
                            "reason": exc.reason,
                            "detail": exc.detail,
                            "input": row.raw,
                        }
                        rejects.append(orjson.dumps(reject) + b"\n")
                    else:
                        converted += 1
                        records.append(encode_record(record))
                        ids.append(str(record["id"]))
                        key = _LATER if by_id else content_key(record, media_key)
                        index.append(pack(_LATER, key, row.split_row, *record_lengths(record)))
                if rows % _FLUSH_ROWS == 0:
                    out.flush()
                    progress.advance(0, _FLUSH_ROWS, "rows")
                if crash_after and total_rows + rows >= crash_after:
                    out.flush()
                    for f in out.files:
                        f.flush()
                    os._exit(137)
            out.flush()
            progress.advance(0, 0 if columns else rows % _FLUSH_ROWS, "rows")
            total_rows += rows
            total_converted += converted
            total_rejected += rejected
            split_stats.append(
                {
                    **shards.split_json(split),
                    "rows": rows,
                    "converted": converted,
                    "rejected": rejected,
                    "records_offset": records_start,
                    "records_bytes": out.records_pos - records_start,
                    "index_offset": index_start,
                    "rejects_offset": rejects_start,
                    "rejects_bytes": out.rejects_pos - rejects_start,
                }
            )
        out.close()
        if whole_input is not None and total_rows == 0:
            # raised inside the writers: their temporary files go, and convert_shard removes the folders
            raise BadInput(f"{_names(whole_input)}: no data rows (a header or an empty array only)")
    assert total_rows == total_converted + total_rejected
    return {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "input_rows": total_rows,
        "converted": total_converted,
        "rejected": total_rejected,
        "rejected_by_reason": sorted_counts(reasons),
        "duplicates_by": DUPLICATE_KEY[options.source_format],
        "framed": out.framed,
        "lengths": out.lengths.to_json(),
        "splits": split_stats,
    }
