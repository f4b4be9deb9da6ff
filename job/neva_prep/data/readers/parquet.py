"""Parquet caption tables: the row groups whose first page lies in the split, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from neva_prep import storage
from neva_prep.data.readers.base import Row, Split
from neva_prep.data.records import ConvertOptions
from neva_prep.errors import BadInput


def parquet_columns(f: IO[bytes], source: str, options: ConvertOptions) -> tuple[Any, list[str]]:
    """The open Parquet file and the columns to read; BadInput if it is not Parquet or lacks one."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as exc:
        raise BadInput(f"{storage.redact(source)}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    needed = [c for c in (options.media_column, options.caption_column, options.id_column) if c]
    missing = [c for c in needed if c not in names]
    if missing:
        raise BadInput(f"{storage.redact(source)}: no column {missing[0]!r} (have {', '.join(names)})")
    schema = pf.schema_arrow
    for flag, column in (
        ("--media-column", options.media_column),
        ("--caption-column", options.caption_column),
        ("--id-column", options.id_column),
    ):
        if column and not _usable(schema.field(column).type, ids=flag == "--id-column"):
            kind = "text or integers" if flag == "--id-column" else "text"
            raise BadInput(
                f"{storage.redact(source)}: column {column!r} ({flag}) holds {schema.field(column).type},"
                f" not {kind}: no row could be converted"
            )
    return pf, needed


def _usable(arrow_type: Any, *, ids: bool) -> bool:
    """Whether a column of this type can hold the row path's values: text (ids: or integers). A column of
    any other type fails the same rule on every row, so it is refused before the first row."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    text = text or (is_view is not None and is_view(arrow_type))
    return text or (ids and pa.types.is_integer(arrow_type))


def row_groups(pf: Any, split: Split) -> list[int]:
    """The row groups whose first page lies in the split (each group belongs to exactly one split)."""
    meta = pf.metadata
    groups = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if rg.num_columns == 0:
            continue
        col = rg.column(0)
        first = col.data_page_offset
        if col.dictionary_page_offset is not None and col.dictionary_page_offset > 0:
            first = min(first, col.dictionary_page_offset)
        if split.start <= first < split.end:
            groups.append(g)
    return groups


def read_parquet(split: Split, options: ConvertOptions) -> Iterator[Row]:
    source = split.source
    with storage.open_read(source) as f:
        pf, needed = parquet_columns(f, source, options)
        groups = row_groups(pf, split)
        n = 0
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=needed or None):
            for value in batch.to_pylist():
                n += 1
                yield Row(source, n, value, None, None)
