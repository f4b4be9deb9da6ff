"""`data validate`: the record rules applied to an existing NeVA / VideoNeVA JSON, streamed.

It reads the file with the same streaming reader as `data convert --from llava` and applies the same
validator (`records.validate_record`), the same duplicate-id rule (first occurrence wins) and the same
media check, so a file that validates is one `data convert` would have written. Nothing is retargeted:
a record with the other media key or placeholder is invalid here.
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
from neva_prep.data.records import ConvertOptions, RecordError, media_paths, row_error, validate_record
from neva_prep.data.shards import id_key
from neva_prep.data.sources import expand_sources, read_split, splits_for_shard
from neva_prep.data.stats import sorted_counts
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

    @property
    def ok(self) -> bool:
        return self.invalid == 0

    def summary(self) -> str:
        verdict = "valid" if self.ok else "INVALID"
        line = (
            f"{storage.redact(self.path)}: {verdict}: {self.records} records, {self.valid} valid,"
            f" {self.invalid} invalid"
        )
        if self.invalid_by_reason:
            line += "\n  invalid: " + ", ".join(f"{r}: {n}" for r, n in self.invalid_by_reason.items())
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
    root = MediaRoot(media_root) if media_root else None
    seen: set[bytes] = set()
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
                    h = id_key(row.value["id"])
                    if h in seen:
                        raise RecordError(
                            "duplicate id",
                            f"id {row.value['id']!r} already used by an earlier record (the first is kept)",
                        )
                    seen.add(h)
                    if root is not None:
                        root.check(media_paths(row.value, media), media)
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
        out.flush()
    return ValidateResult(
        path=path,
        records=records,
        valid=valid,
        invalid=records - valid,
        invalid_by_reason=sorted_counts(reasons),
        report=None if to_stdout else report,
    )
