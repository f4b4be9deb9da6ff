"""`data check`: is a NeVA / VideoNeVA JSON ready to train with a given NeMo config?

templates.py (NeMo's prompt text and asserts per template) → tokens.py (exact `tokens` lengths, batch
encoded) → decode.py (Pillow / PyAV) → shard.py (one shard's share, part files) → combine.py (all parts →
lengths, findings, summary) → report.py (plots, report.html) and clean.py (`--write-clean`).
"""

from __future__ import annotations

from neva_prep.data.check.combine import CheckResult, combine
from neva_prep.data.check.options import CheckOptions
from neva_prep.data.check.shard import ShardCheck, check_shard


def check_file(
    file: str,
    report: str,
    options: CheckOptions,
    *,
    num_shards: int = 1,
    shard_index: int | None = None,
    merge: bool = False,
    clean: str | None = None,
) -> CheckResult | ShardCheck:
    """One shard (`num_shards` > 1, not `merge`), the combine step (`merge`), or both in one go (1 shard)."""
    if merge:
        return combine(file, report, options, num_shards=num_shards, clean=clean)
    if num_shards == 1:
        check_shard(file, report, options)
        return combine(file, report, options, clean=clean)
    return check_shard(file, report, options, num_shards=num_shards, shard_index=shard_index or 0)


__all__ = ["CheckOptions", "CheckResult", "ShardCheck", "check_file"]
