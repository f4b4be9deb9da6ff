"""Mergeable statistics: counts and length summaries that add up across shards.

Every figure is a sum, a min or a max, so shard figures merge into the dataset's in any order and the
merged figures do not depend on the number of shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """count / min / max / sum of a length; `mean` is derived when written."""

    count: int = 0
    min: int | None = None
    max: int | None = None
    sum: int = 0

    def add(self, value: int) -> None:
        self.count += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: Summary) -> None:
        self.count += other.count
        self.sum += other.sum
        for v in (other.min, other.max):
            if v is None:
                continue
            if self.min is None or v < self.min:
                self.min = v
            if self.max is None or v > self.max:
                self.max = v

    def to_json(self) -> dict[str, Any]:
        mean = round(self.sum / self.count, 3) if self.count else None
        return {"count": self.count, "min": self.min, "max": self.max, "sum": self.sum, "mean": mean}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        return cls(count=data["count"], min=data["min"], max=data["max"], sum=data["sum"])


LENGTHS = ("turns", "human_chars", "gpt_chars")
"""Per kept record: number of turns, characters in human turns, characters in gpt turns (the captions)."""


@dataclass
class Lengths:
    """Length statistics of the records kept (see `LENGTHS`)."""

    turns: Summary = field(default_factory=Summary)
    human_chars: Summary = field(default_factory=Summary)
    gpt_chars: Summary = field(default_factory=Summary)

    def add(self, turns: int, human_chars: int, gpt_chars: int) -> None:
        self.turns.add(turns)
        self.human_chars.add(human_chars)
        self.gpt_chars.add(gpt_chars)

    def merge(self, other: Lengths) -> None:
        for name in LENGTHS:
            getattr(self, name).merge(getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_json() for name in LENGTHS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lengths:
        return cls(**{name: Summary.from_json(data[name]) for name in LENGTHS})


def record_lengths(record: dict[str, Any]) -> tuple[int, int, int]:
    """(turns, human chars, gpt chars) of a validated record."""
    human = gpt = 0
    turns = record.get("conversations") or []
    for turn in turns:
        if turn.get("from") == "human":
            human += len(turn.get("value", ""))
        else:
            gpt += len(turn.get("value", ""))
    return len(turns), human, gpt


def sorted_counts(counter: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Reasons by descending count, then name: a stable order for stats files and summaries."""
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
