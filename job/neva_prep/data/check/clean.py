"""`--write-clean OUT.json`: the input minus the records with findings, so that training can start on what
is sound; the dropped records go to `OUT.rejects.jsonl` beside it with their reasons, so nothing is lost."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import orjson

from neva_prep import storage
from neva_prep.data.readers import read_split
from neva_prep.data.readers.split import splits_for_shard
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput


def rejects_url(clean: str) -> str:
    """`clean.json` → `clean.rejects.jsonl`."""
    stem = clean[: -len(".json")] if clean.endswith(".json") else clean
    return stem + ".rejects.jsonl"


def write_clean(source: str, clean: str, bad_rows: list[int], findings: list[dict[str, Any]]) -> int:
    """Stream `source` again; records are copied as parsed (key order kept). Returns how many were kept."""
    if not clean.endswith(".json"):
        raise BadInput(f"--write-clean {storage.redact(clean)}: give a .json file (NeVA reads a JSON array)")
    if storage.redact(clean) == storage.redact(source):
        raise BadInput("--write-clean must not overwrite the input")
    reasons: dict[int, list[str]] = {}
    for f in findings:
        reasons.setdefault(f["row"], []).append(f["reason"])
    bad = set(bad_rows)
    kept = 0
    row = 0
    with ExitStack() as stack:
        out = stack.enter_context(storage.atomic_write(clean))
        rejects = stack.enter_context(storage.atomic_write(rejects_url(clean)))
        for split in splits_for_shard([source], "llava", 1, 0):
            for r in read_split(split, "llava", ConvertOptions(source_format="llava", media="image")):
                row += 1
                if row in bad:
                    rid = r.value.get("id") if isinstance(r.value, dict) else None
                    line = {"row": row, "id": rid, "reasons": reasons[row], "input": r.raw}
                    rejects.write(orjson.dumps(line, default=str) + b"\n")
                    continue
                out.write((b"[\n" if kept == 0 else b",\n") + orjson.dumps(r.value))
                kept += 1
        out.write(b"\n]\n" if kept else b"[]\n")
    return kept
