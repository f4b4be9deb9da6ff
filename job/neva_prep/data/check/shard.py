"""One shard of `data check`: its share of the records, checked, as part files the combine step merges.

Records are split like `data convert` splits its input (byte ranges on record boundaries, the same reader),
so N tasks check N shares in parallel. A shard writes under `REPORT/shards/IIIII-of-NNNNN/`:
`lengths.jsonl` and `findings.jsonl` (rows numbered within the shard) and, last, `part.json` (the options
and the record count: the combine step's completion marker). Records are handled a batch at a time: one
multi-threaded SentencePiece encode per batch, media decoded by a thread pool (Pillow and FFmpeg release
the GIL), outputs written in record order so that any shard count gives the same merged files.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import orjson

from neva_prep import storage
from neva_prep.cpus import usable_cpus
from neva_prep.data.check.decode import check_media
from neva_prep.data.check.options import CheckOptions
from neva_prep.data.check.templates import Prompt, prompt, template_findings
from neva_prep.data.check.tokens import Tokenizer, load_tokenizer
from neva_prep.data.media import MediaRoot
from neva_prep.data.readers import read_split
from neva_prep.data.readers.base import Row
from neva_prep.data.readers.files import expand_sources
from neva_prep.data.readers.split import splits_for_shard
from neva_prep.data.records import ConvertOptions, RecordError, check_path, row_error, validate_record
from neva_prep.data.shards import shard_name
from neva_prep.data.stats import sorted_counts
from neva_prep.errors import BadInput
from neva_prep.progress import Reporter

SHARDS = "shards"
LENGTHS = "lengths.jsonl"
FINDINGS = "findings.jsonl"
PART = "part.json"
BATCH = 4096
OVER = "over seq-length"


@dataclass(frozen=True)
class ShardCheck:
    """What one shard found."""

    directory: str
    shard_index: int
    num_shards: int
    records: int
    findings: int
    by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        line = (
            f"check shard {self.shard_index} of {self.num_shards}: {self.records:,} records,"
            f" {self.findings:,} finding(s) -> {storage.redact(self.directory)} (combine with --merge)"
        )
        if self.by_reason:
            line += "\n  findings: " + ", ".join(f"{r}: {n:,}" for r, n in self.by_reason.items())
        return line


def part_dir(report: str, shard_index: int, num_shards: int) -> str:
    return storage.join(report, SHARDS, shard_name(shard_index, num_shards))


def input_file(file: str) -> str:
    """The one JSON array (or JSON lines) file checked; a glob or folder of several is refused."""
    sources = expand_sources(file)
    if len(sources) != 1:
        raise BadInput(f"{storage.redact(file)}: matches {len(sources)} files; check one merged file")
    return sources[0]


def part_identity(file: str, options: CheckOptions, num_shards: int, tokenizer_sha256: str) -> dict[str, Any]:
    """What every part of one check must agree on (the combine step refuses a mix)."""
    return {
        "input": storage.redact(file),
        "input_size": storage.size(file),
        "options": options.to_json(),
        "tokenizer_sha256": tokenizer_sha256,
        "num_shards": num_shards,
    }


def check_shard(
    file: str, report: str, options: CheckOptions, *, num_shards: int = 1, shard_index: int = 0
) -> ShardCheck:
    """Check shard `shard_index` of `num_shards` of `file`; write its part files under `report`."""
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(f"--shard-index {shard_index} is out of range for --num-shards {num_shards}")
    source = input_file(file)
    tokenizer = load_tokenizer(options.tokenizer)
    sha = hashlib.sha256(storage.read_bytes(options.tokenizer)).hexdigest()
    splits = splits_for_shard([source], "llava", num_shards, shard_index)
    directory = part_dir(report, shard_index, num_shards)
    storage.remove(storage.join(directory, PART))  # a re-run is incomplete until its marker is rewritten
    checker = _Checker(options, tokenizer)
    reasons: Counter[str] = Counter()
    records = 0
    with ExitStack() as stack:
        lengths = stack.enter_context(storage.atomic_write(storage.join(directory, LENGTHS)))
        findings = stack.enter_context(storage.atomic_write(storage.join(directory, FINDINGS)))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=min(16, usable_cpus())))
        progress = stack.enter_context(Reporter(f"data check {storage.redact(source)}", None, unit="rows"))
        read_options = ConvertOptions(source_format="llava", media=options.media)
        rows: Iterator[Row] = (row for split in splits for row in read_split(split, "llava", read_options))
        while batch := list(islice(rows, BATCH)):
            for line, found in checker.batch(batch, records, pool):
                lengths.write(orjson.dumps(line) + b"\n")
                for finding in found:
                    reasons[finding.reason] += 1
                    findings.write(_finding_line(line, finding) + b"\n")
            records += len(batch)
            progress.advance(len(batch))
    part = {**part_identity(source, options, num_shards, sha), "shard_index": shard_index, "records": records}
    write_json(storage.join(directory, PART), part)
    return ShardCheck(
        directory, shard_index, num_shards, records, sum(reasons.values()), sorted_counts(reasons)
    )


def _finding_line(line: dict[str, Any], finding: RecordError) -> bytes:
    return orjson.dumps(
        {"row": line["row"], "id": line["id"], "reason": finding.reason, "detail": finding.detail}
    )


class _Checker:
    """The per-record checks, in a fixed order: readable, record rules, template rules, length, media."""

    def __init__(self, options: CheckOptions, tokenizer: Tokenizer) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.root = MediaRoot(options.media_root) if options.media_root else None

    def batch(
        self, rows: list[Row], first: int, pool: ThreadPoolExecutor
    ) -> Iterator[tuple[dict[str, Any], list[RecordError]]]:
        o = self.options
        lines: list[dict[str, Any]] = []
        found: list[list[RecordError]] = []
        prompts: list[tuple[int, Prompt]] = []
        media: list[list[RecordError | Future[RecordError | None]]] = []
        for n, row in enumerate(rows):
            value = row.value if row.error is None else None
            record = value if isinstance(value, dict) else {}
            line = {"row": first + n + 1, "id": _id(record), "tokens": None, **_shape(record)}
            problems: list[RecordError] = []
            if row.error is not None:
                problems.append(row_error(row))
            else:
                try:
                    validate_record(value, o.media)
                except RecordError as exc:
                    problems.append(exc)
                problems += template_findings(record, o.template, o.media)
                with suppress(RecordError):  # NeMo cannot format it either; the rules above say why
                    prompts.append((n, prompt(record, o.template, o.media, o.positions)))
            lines.append(line)
            found.append(problems)
            media.append(self._media(record, pool))
        for (n, _), tokens in zip(prompts, self.tokenizer.lengths([p for _, p in prompts]), strict=True):
            lines[n]["tokens"] = tokens
        for line, problems, checks in zip(lines, found, media, strict=True):
            tokens = line["tokens"]
            if tokens is not None and tokens > o.seq_length:
                problems.append(
                    RecordError(
                        OVER,
                        f"{tokens} tokens > --seq-length {o.seq_length}: NeMo cuts the last"
                        f" {tokens - o.seq_length}",
                    )
                )
            for check in checks:
                result = check.result() if isinstance(check, Future) else check
                if result is not None:
                    problems.append(result)
            yield line, problems

    def _media(
        self, record: dict[str, Any], pool: ThreadPoolExecutor
    ) -> list[RecordError | Future[RecordError | None]]:
        """Missing files now (one listing per folder); decodes queued on the pool."""
        if self.root is None:
            return []
        out: list[RecordError | Future[RecordError | None]] = []
        o = self.options
        for path in _safe_paths(record, o.media):
            if not self.root.exists(path):
                detail = f"{o.media} {path!r} not found under {storage.redact(self.root.root)}"
                out.append(RecordError("media missing", detail))
            elif o.decode:
                url = storage.join(self.root.root, path)
                out.append(pool.submit(check_media, url, path, o.media, o.num_frames or 1))
        return out


def _id(record: dict[str, Any]) -> Any:
    rid = record.get("id")
    return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def _shape(record: dict[str, Any]) -> dict[str, Any]:
    """Turns and answer lengths (characters) for the report's distributions."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return {"turns": 0, "answer_chars": []}
    answers = [
        len(t["value"]) for t in turns[1::2] if isinstance(t, dict) and isinstance(t.get("value"), str)
    ]
    return {"turns": len(turns), "answer_chars": answers}


def _safe_paths(record: dict[str, Any], media: str) -> list[str]:
    """The record's media paths that stay inside the media root (the others are findings already)."""
    value = record.get(media)
    paths = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    safe = []
    for path in paths:
        try:
            check_path(path, media)
        except RecordError:
            continue
        safe.append(path)
    return safe


def read_lines(url: str) -> Iterator[dict[str, Any]]:
    """The JSON lines of a part file, streamed."""
    with storage.open_read(url) as f:
        for raw in f:
            if raw.strip():
                yield orjson.loads(raw)


def write_json(url: str, doc: Any) -> None:
    storage.write_bytes(url, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
