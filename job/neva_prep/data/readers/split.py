"""The splitter: shard i's share of the input as byte ranges (`Split`s); readers align them on records."""

from __future__ import annotations

from neva_prep import storage
from neva_prep.data.readers.base import Split
from neva_prep.data.readers.files import file_kind
from neva_prep.errors import BadInput


def splits_for_shard(
    sources: list[str], fmt: str, num_shards: int, shard_index: int, sizes: list[int] | None = None
) -> list[Split]:
    """Shard `shard_index`'s share of the input: range i of `num_shards` equal byte ranges of all the files
    laid end to end, cut at file edges. Many small files thus go whole to one shard each (one open per file
    per job, not per shard), one big file is cut N ways, and shard i's part of any file precedes shard
    i+1's. Pure arithmetic on file sizes (one metadata request per file, none when `sizes` are given);
    `read_split` aligns on records.
    """
    if num_shards < 1:
        raise BadInput(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    for url in sources:
        file_kind(url, fmt)
    if sizes is None:
        sizes = [storage.size(url) for url in sources]
    total = sum(sizes)
    lo, hi = total * shard_index // num_shards, total * (shard_index + 1) // num_shards
    splits = []
    base = 0
    for i, (url, size) in enumerate(zip(sources, sizes, strict=True)):
        start, end = max(lo - base, 0), min(hi - base, size)
        if end > start:
            splits.append(Split(url, i, start, end))
        base += size
    return splits
