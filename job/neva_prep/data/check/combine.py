"""The combine step of `data check`: every shard's part → one set of report files.

Parts are read in shard order and their rows renumbered into record numbers of the whole file, so the
outputs are the same whatever the shard count and whatever order the shards ran in. Duplicate ids are found
here, where every id is seen (the first record keeps it, as the merge of `data convert` does). Outputs in
REPORT/: `lengths.jsonl`, `findings.jsonl`, `summary.json`, the PNG plots and `report.html`, each written
atomically; `summary.json` is written last.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from neva_prep import storage
from neva_prep.data.check.clean import write_clean
from neva_prep.data.check.options import CheckOptions
from neva_prep.data.check.report import write_report
from neva_prep.data.check.shard import (
    FINDINGS,
    LENGTHS,
    OVER,
    PART,
    input_file,
    part_dir,
    read_lines,
    write_json,
)
from neva_prep.data.shards import id_key
from neva_prep.data.stats import sorted_counts
from neva_prep.errors import EXIT_CHECK_FAILED, EXIT_OK, BadInput, StepFailed

SUMMARY = "summary.json"
REPORT = "report.html"
WORST = 20


@dataclass(frozen=True)
class CheckResult:
    """What `data check` found in the whole file."""

    input: str
    report: str
    records: int
    with_findings: int
    over_seq_length: int
    seq_length: int
    by_reason: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    clean: str | None = None
    kept: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if not self.by_reason else EXIT_CHECK_FAILED

    def summary(self) -> str:
        verdict = "ready to train" if self.exit_code == EXIT_OK else "PROBLEMS"
        findings = sum(self.by_reason.values())
        line = (
            f"{storage.redact(self.input)}: {verdict}: {self.records} records, {self.with_findings} with "
            f"findings ({findings} finding(s)), {self.over_seq_length} over --seq-length {self.seq_length}"
        )
        if self.tokens:
            line += f"; tokens p50 {self.tokens['p50']:.0f}, max {self.tokens['max']:.0f}"
        if self.by_reason:
            line += "\n  findings: " + ", ".join(f"{r}: {n}" for r, n in self.by_reason.items())
        if self.clean:
            line += f"\n  clean: {storage.redact(self.clean)} ({self.kept} records)"
        return line + f"\n  report: {storage.redact(storage.join(self.report, REPORT))}"


def _parts(report: str, num_shards: int, file: str, options: CheckOptions) -> list[dict[str, Any]]:
    parts = []
    for i in range(num_shards):
        url = storage.join(part_dir(report, i, num_shards), PART)
        if not storage.exists(url):
            raise StepFailed(
                f"check shard {i} of {num_shards} has not finished ({storage.redact(url)} missing)"
            )
        parts.append(orjson.loads(storage.read_bytes(url)))
    for i, part in enumerate(parts):
        if part["options"] != options.to_json() or part["input"] != storage.redact(file):
            raise BadInput(
                f"check shard {i} of {num_shards} was made for other options or another input; rerun it"
            )
        if {k: v for k, v in part.items() if k not in ("shard_index", "records")} != {
            k: v for k, v in parts[0].items() if k not in ("shard_index", "records")
        }:
            raise BadInput(
                f"check shards 0 and {i} of {num_shards} disagree (input or tokenizer changed); rerun"
            )
    return parts


def combine(
    file: str, report: str, options: CheckOptions, *, num_shards: int = 1, clean: str | None = None
) -> CheckResult:
    """Merge the parts of every shard into REPORT's files; optionally write the clean input to `clean`."""
    source = input_file(file)
    parts = _parts(report, num_shards, source, options)
    seen: set[bytes] = set()
    findings: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    tokens: list[int] = []
    turns: list[int] = []
    answers: list[int] = []
    ids: list[Any] = []
    offset = 0
    with ExitStack() as stack:
        out = stack.enter_context(storage.atomic_write(storage.join(report, LENGTHS)))
        for i, part in enumerate(parts):
            directory = part_dir(report, i, num_shards)
            for line in read_lines(storage.join(directory, LENGTHS)):
                line["row"] += offset
                out.write(orjson.dumps(line) + b"\n")
                tokens.append(-1 if line["tokens"] is None else line["tokens"])
                turns.append(line["turns"])
                ids.append(line["id"])
                answers += line["answer_chars"]
                if line["id"] is not None:
                    key = id_key(line["id"])
                    if key in seen:
                        detail = f"id {line['id']!r} already used by an earlier record (the first is kept)"
                        duplicates.append(
                            {"row": line["row"], "id": line["id"], "reason": "duplicate id", "detail": detail}
                        )
                    seen.add(key)
            for finding in read_lines(storage.join(directory, FINDINGS)):
                finding["row"] += offset
                findings.append(finding)
            offset += part["records"]
    # stable: in row order, a record's own findings first, then its duplicate id
    findings = sorted(findings + duplicates, key=lambda f: f["row"])
    with storage.atomic_write(storage.join(report, FINDINGS)) as f:
        for finding in findings:
            f.write(orjson.dumps(finding) + b"\n")

    by_reason = sorted_counts(Counter(f["reason"] for f in findings))
    lengths = np.asarray(tokens, dtype=np.int64)
    known = lengths[lengths >= 0]
    rows_with = sorted({f["row"] for f in findings})
    worst = _worst(lengths, ids, findings)
    summary = {
        "input": storage.redact(source),
        "options": options.to_json(),
        "records": offset,
        "records_with_findings": len(rows_with),
        "findings": len(findings),
        "findings_by_reason": by_reason,
        "seq_length": options.seq_length,
        "media_positions": options.positions,
        "over_seq_length": by_reason.get(OVER, 0),
        "tokens_known": int(known.size),
        "tokens": _percentiles(known),
        "turns": {str(k): v for k, v in sorted(Counter(turns).items())},
        "answer_chars": _percentiles(np.asarray(answers, dtype=np.int64)),
    }
    write_report(report, summary, known, np.asarray(turns), np.asarray(answers), worst, findings[:200])
    kept = 0
    if clean is not None:
        kept = write_clean(source, clean, rows_with, findings)
    write_json(storage.join(report, "summary.json"), summary)
    return CheckResult(
        input=source,
        report=report,
        records=offset,
        with_findings=len(rows_with),
        over_seq_length=by_reason.get(OVER, 0),
        seq_length=options.seq_length,
        by_reason=by_reason,
        tokens=_percentiles(known),
        clean=clean,
        kept=kept,
    )


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {}
    q = np.percentile(values, [50, 90, 99], method="higher")
    return {
        "min": int(values.min()),
        "p50": int(q[0]),
        "p90": int(q[1]),
        "p99": int(q[2]),
        "max": int(values.max()),
        "mean": round(float(values.mean()), 1),
    }


def _worst(lengths: np.ndarray, ids: list[Any], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The longest records (rows, tokens, their finding reasons), longest first, ties by row."""
    order = np.lexsort((np.arange(lengths.size), -lengths))[:WORST]
    reasons: dict[int, list[str]] = {}
    for f in findings:
        reasons.setdefault(f["row"], []).append(f["reason"])
    return [
        {"row": int(i) + 1, "id": ids[i], "tokens": int(lengths[i]), "reasons": reasons.get(int(i) + 1, [])}
        for i in order
        if lengths[i] >= 0
    ]
