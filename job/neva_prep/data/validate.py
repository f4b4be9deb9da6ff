"""`data validate`: the record rules applied to an existing NeVA / VideoNeVA JSON, streamed.

It reads the file with the same streaming reader as `data convert --from llava` and applies the same
validator (`records.validate_record`), the same duplicate rule as the merge (a record with the media and
conversations of an earlier one is a "duplicate record"; an id repeated with other content is a distinct
sample, counted, not invalid) and the same media check, so a file that validates is one `data convert` would
have written. Nothing is retargeted: a record with the other media key or placeholder is invalid here.
A file without a single record is bad input, as it is for the merge.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO

import orjson

from neva_prep import storage
from neva_prep.data.media import MediaRoot
from neva_prep.data.readers import check_split, read_split
from neva_prep.data.readers.files import expand_sources
from neva_prep.data.readers.split import splits_for_shard
from neva_prep.data.records import ConvertOptions, RecordError, media_paths, row_error, validate_record
from neva_prep.data.shards import content_key, id_key
from neva_prep.data.stats import sorted_counts
from neva_prep.errors import BadInput
from neva_prep.progress import Reporter

_PROGRESS_ROWS = 8192


@dataclass(frozen=True)
class ValidateResult:
    path: str
    records: int
    valid: int
    invalid: int
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    report: str | None = None
    repeated_ids: int = 0

    @property
    def ok(self) -> bool:
        return self.invalid == 0

    def summary(self) -> str:
        verdict = "valid" if self.ok else "INVALID"
        line = (
            f"{storage.redact(self.path)}: {verdict}: {self.records:,} records, {self.valid:,} valid,"
            f" {self.invalid:,} invalid"
        )
        if self.repeated_ids:
            line += (
                f"\n  repeated ids: {self.repeated_ids:,} valid records share their id with an earlier one"
                " (distinct content: allowed)"
            )
        if self.invalid_by_reason:
            line += "\n  invalid: " + ", ".join(f"{r}: {n:,}" for r, n in self.invalid_by_reason.items())
        if self.report and not self.ok:
            line += f"\n  report: {storage.redact(self.report)}"
        return line


def validate_file(
    path: str, *, media: str, media_root: str | None = None, report: str | None = None
) -> ValidateResult:
    """Check every record of `path`; write one rejects-style JSON line per invalid record to `report`
    (a URL; `None` or `-` = stdout)."""
    options = ConvertOptions(source_format="llava", media=media)
    sources = expand_sources(path)
    splits = splits_for_shard(sources, "llava", 1, 0)
    for split in splits:
        check_split(split, "llava", options)
    root = MediaRoot(media_root) if media_root else None
    seen: set[bytes] = set()  # duplicate keys (media + conversations) of the valid records
    ids: set[bytes] = set()
    repeated = 0
    reasons: Counter[str] = Counter()
    records = valid = 0
    to_stdout = report in (None, "-")

    with ExitStack() as stack:
        out: IO[bytes] = (
            sys.stdout.buffer if to_stdout else stack.enter_context(storage.atomic_write(report))  # type: ignore[arg-type]
        )
        progress = stack.enter_context(Reporter(f"data validate {storage.redact(path)}", None, unit="rows"))
        for split in splits:
            source = storage.redact(split.source)
            for row in read_split(split, "llava", options):
                records += 1
                try:
                    if row.error is not None:
                        raise row_error(row)
                    validate_record(row.value, media)
                    key = content_key(row.value, media)
                    if key in seen:
                        raise RecordError(
                            "duplicate record",
                            "the same media and conversations as an earlier record (the first is kept)",
                        )
                    if root is not None:
                        root.check(media_paths(row.value, media), media)
                    seen.add(key)
                    rid = id_key(row.value["id"])
                    if rid in ids:
                        repeated += 1
                    ids.add(rid)
                    valid += 1
                except RecordError as exc:
                    reasons[exc.reason] += 1
                    line = {
                        "source": source,
                        "row": row.split_row,
                        "reason": exc.reason,
                        "detail": exc.detail,
                        "input": row.raw,
                    }
                    out.write(orjson.dumps(line) + b"\n")
                if records % _PROGRESS_ROWS == 0:
                    progress.advance(_PROGRESS_ROWS)
        if records == 0:  # raised inside the report's writer, so that no report is left behind
            raise BadInput(f"{storage.redact(path)}: no records (an empty file or an empty array)")
        out.flush()
    return ValidateResult(
        path=path,
        records=records,
        valid=valid,
        invalid=records - valid,
        invalid_by_reason=sorted_counts(reasons),
        report=None if to_stdout else report,
        repeated_ids=repeated,
    )
