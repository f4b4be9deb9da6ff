"""The id hash the merge's duplicate check keeps: one value at a time (`id_key`, every row path) and a column
at once (`id_keys`, the columnar path) must agree on every id, or a repeated id goes unseen."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from neva_prep.data import shards

_IDS = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=70), min_size=1, max_size=60)


@settings(max_examples=400, deadline=None)
@given(_IDS, st.integers(0, 5), st.booleans())
def test_column_hash_is_the_row_hash(ids: list[str], skip: int, large: bool) -> None:
    """Any ids (empty, unicode, every length around a word), in a string or large_string array, sliced (an
    offset into the buffers, as a filtered or sliced batch has)."""
    column = pa.array(["pad"] * skip + ids, pa.large_string() if large else pa.string()).slice(skip)
    got = shards.id_keys(column)
    assert got.dtype == np.dtype("<u8")
    assert got.tobytes() == b"".join(shards.id_key(i) for i in ids)


def test_text_of_the_id_and_spread() -> None:
    """42 and "42" are one id; a million near-identical ids (the shape of WebVid's and LLaVA's ids) give a
    million hashes, and every output bit is set about half the time."""
    assert shards.id_key(42) == shards.id_key("42") != shards.id_key("42 ")
    assert shards.id_key("") != shards.id_key("\0")  # the length is in the hash: padding is not a collision
    ids = pa.array(
        [f"{1_000_000_000 + 7919 * i}" for i in range(500_000)] + [f"img-{i:07d}" for i in range(500_000)]
    )
    hashes = shards.id_keys(ids)
    assert len(np.unique(hashes)) == len(ids)
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)
    assert ((bits > 0.49) & (bits < 0.51)).all(), bits
