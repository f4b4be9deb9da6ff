"""Energon sample loader for datasets exported by `neva-prep data export energon`.

This file is copied verbatim into the dataset's `.nv-meta/sample_loader.py`, where `dataset.yaml` names it;
Energon imports it on the training machine, so it imports nothing but the standard library.

It turns one sample (a `json` part holding the NeVA record exactly as in NAME.json, plus its media parts)
into the fields of Energon's `VQASample`, the type NeMo 2's NeVA task encoder (`MultiModalTaskEncoder`)
encodes: `context` = the human turns, `answers` = the gpt turns, in order (a multi-turn conversation is
two lists of the same length), `image` = the decoded media part (a list when a record has several).
"""

from __future__ import annotations

import json
from typing import Any


def _media_order(part: str) -> tuple[int, str]:
    """`jpg` (one medium) or `0.jpg`, `1.png`, ... (several) in record order."""
    index, _, _ = part.partition(".")
    return (int(index), part) if index.isdigit() and "." in part else (0, part)


def media_parts(raw: dict[str, Any]) -> list[str]:
    """The names of a raw sample's media parts, in the record's order."""
    parts = [k for k in raw if not k.startswith("__") and k != "json"]
    return sorted(parts, key=_media_order)


def sample_loader(raw: dict[str, Any]) -> dict[str, Any]:
    record = raw["json"]
    if isinstance(record, bytes | str):  # a dataset loaded without a decoder hands over the bytes
        record = json.loads(record)
    turns = record["conversations"]
    media = [raw[p] for p in media_parts(raw)]
    return {
        "image": media[0] if len(media) == 1 else media,
        "context": [t["value"] for t in turns if t["from"] == "human"],
        "answers": [t["value"] for t in turns if t["from"] == "gpt"],
    }


def part_filter(part: str) -> bool:
    return True
