"""Where a shard's files live under the destination, and what its completion marker says.

Layout (one folder per shard; the merge reads nothing else)::

    DST/shards/00003-of-00008/
        records.jsonl   converted records, one canonical JSON object per line ending with `,` (the
                        merge copies runs of them as they are into the array), in source order; the one
                        shard of a 1-shard run is framed as the array itself (`FRAME_START`)
        index.bin       one `INDEX` entry per record: id and duplicate-key hashes, row in its split, lengths
        rejects.jsonl   rejected rows: source, split, split_row, reason, detail, input
        stats.json      counts, per-split figures and byte ranges, length statistics
        DONE            the completion marker, written LAST: fingerprint of inputs and options, and the
                        identity of every input file (size + mtime_ns locally, ETag / version on stores)

Each file is written atomically (temporary name, then rename; aborted multipart upload on S3), so a
killed shard leaves no `DONE` and its leftovers never count; a re-run rewrites the whole folder. A shard
whose `DONE` records the same fingerprint and splits is skipped on re-run (datatrove's `completions/`,
img2dataset's `_stats.json`); the fingerprint holds each input file's identity, so an input edited in place
(even to the same size) redoes the shard, and the merge refuses shards made from different versions.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from neva_prep import storage
from neva_prep.data.readers.base import Split
from neva_prep.data.stats import LENGTHS, Lengths, Summary
from neva_prep.errors import StepFailed

LAYOUT_VERSION = 5
SHARDS_DIR = "shards"
RECORDS = "records.jsonl"
RECORD_END = b",\n"
"""What ends every record in `RECORDS`: the array's separator, so that the merge never splits records."""
FRAME_START, FRAME_END = b"[\n", b"\n]\n"
"""How the one shard of a `--num-shards 1` run frames its `RECORDS` (its stats say `framed`): `[\n` before
the first record and `\n]\n` in place of the last record's `RECORD_END` — the bytes of the merged array,
so a merge that keeps every record as it is publishes the file itself (`storage.publish_copy`)."""
INDEX = "index.bin"
REJECTS = "rejects.jsonl"
STATS = "stats.json"
DONE = "DONE"

INDEX_ENTRY = struct.Struct("<8s8sIIII")
"""Per converted record: 8-byte id hash, 8-byte duplicate-key hash (`records.DUPLICATE_KEY`), 1-based row
within its split, turns, human chars, gpt chars."""
INDEX_DTYPE = np.dtype(
    [
        ("id", "<u8"),
        ("key", "<u8"),
        ("row", "<u4"),
        ("turns", "<u4"),
        ("human_chars", "<u4"),
        ("gpt_chars", "<u4"),
    ]
)
assert INDEX_DTYPE.itemsize == INDEX_ENTRY.size

_SHARD_DIR = re.compile(r"^(\d{5,})-of-(\d{5,})$")


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"{shard_index:05d}-of-{num_shards:05d}"


def shard_dir(destination: str, shard_index: int, num_shards: int) -> str:
    return storage.join(destination, SHARDS_DIR, shard_name(shard_index, num_shards))


_MASK = (1 << 64) - 1
_SEED, _K1, _K2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_WORD = struct.Struct("<Q")


def id_key(record_id: Any) -> bytes:
    """A stable 8-byte hash of an id's text: `42` and `"42"` are the same id (NeMo and the LLaVA tools
    compare ids as text), though each record keeps the type it came with.

    The merge keeps only these hashes (8 bytes per record instead of the ids); two different ids collide
    with probability ~n²/2⁶⁵ (about 3e-6 for 10M ids). The hash: the UTF-8 bytes as little-endian 64-bit
    words (the last zero-padded), folded from a seed that holds the length, each word XORed in and mixed by
    splitmix64's finalizer (a bijection, so ids that differ in one word never collide). Simple enough for
    numpy to compute a column of ids at once (`id_keys`): the columnar path hashes a million ids in ~0.1 s,
    where one BLAKE2 call a row took ~0.7 s.
    """
    data = str(record_id).encode("utf-8")
    h = _SEED ^ (len(data) * _K1 & _MASK)
    if len(data) & 7:
        data += bytes(8 - (len(data) & 7))
    for (word,) in _WORD.iter_unpack(data):
        x = (h ^ word) * _K1 & _MASK
        x = (x ^ (x >> 29)) * _K2 & _MASK
        h = x ^ (x >> 32)
    return _WORD.pack(h)


_BYTES = np.arange(8, dtype=np.int64)


def id_keys(ids: pa.Array) -> np.ndarray:
    """`id_key` of every value of a string array (no nulls) as little-endian uint64, with numpy: the words
    of all ids at position j are mixed at once, longest ids first."""
    n = len(ids)
    if not n:
        return np.zeros(0, dtype="<u8")
    width = np.dtype(np.int64 if pa.types.is_large_string(ids.type) else np.int32)
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width, count=n + 1, offset=ids.offset * width.itemsize)
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = np.concatenate((data[: int(ends[-1])], np.zeros(8, np.uint8)))  # a whole word past every id
    lengths = ends - starts
    words = (lengths + 7) >> 3
    order = np.argsort(-words, kind="stable")  # longest first: the ids still being folded are a prefix
    starts, ends, words = starts[order], ends[order], words[order]
    with np.errstate(over="ignore"):
        h = np.uint64(_SEED) ^ (lengths[order].astype(np.uint64) * np.uint64(_K1))
        for j in range(int(words[0])):
            m = int(np.searchsorted(-words, -j, side="left"))  # ids with more than j words
            at = starts[:m, None] + 8 * j + _BYTES
            chunk = data[at]
            chunk[at >= ends[:m, None]] = 0
            x = (h[:m] ^ chunk.view("<u8").ravel()) * np.uint64(_K1)
            x = (x ^ (x >> np.uint64(29))) * np.uint64(_K2)
            h[:m] = x ^ (x >> np.uint64(32))
    out = np.empty(n, dtype="<u8")
    out[order] = h
    return out


def content_key(record: dict[str, Any], media: str) -> bytes:
    """A stable 8-byte hash of what NeVA trains on: the media and the conversations (not the id, which
    NeMo does not read). Keys inside a turn are sorted, so key order in the input does not matter.
    SHA-256 because CPUs hash it in hardware (SHA-NI, ARMv8): ~2x BLAKE2b on kB-sized records."""
    payload = orjson.dumps([record.get(media), record["conversations"]], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).digest()[:8]


def index_entries(data: bytes) -> np.ndarray:
    """Index entries as a structured array (a view of `data`)."""
    return np.frombuffer(data, dtype=INDEX_DTYPE)


def index_lengths(data: bytes | np.ndarray) -> Lengths:
    """Length statistics of a block of index entries, with numpy (no per-record Python)."""
    entries = index_entries(data) if isinstance(data, bytes) else data
    lengths = Lengths()
    if len(entries):
        for name in LENGTHS:
            column = entries[name]
            getattr(lengths, name).merge(
                Summary(len(column), int(column.min()), int(column.max()), int(column.sum(dtype=np.int64)))
            )
    return lengths


def fingerprint(
    inputs: list[dict[str, Any]], fmt: str, options: Any, media_root: str | None, num_shards: int
) -> str:
    """What every shard of one run shares: the input files and their versions (`sources.file_identity`),
    format, options, media root, shard count."""
    payload = {
        "version": LAYOUT_VERSION,
        "inputs": inputs,
        "format": fmt,
        "options": asdict(options),
        "media_root": storage.redact(media_root) if media_root else None,
        "num_shards": num_shards,
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def records_tail(stats: dict[str, Any], split: dict[str, Any]) -> bytes:
    """What ends a split's record range in `RECORDS`: `RECORD_END`, or for the last records of a framed
    shard the first two bytes of `FRAME_END` (its byte offsets count `RECORD_END` there)."""
    if stats.get("framed") and split["records_bytes"]:
        end = max(s["records_offset"] + s["records_bytes"] for s in stats["splits"])
        if split["records_offset"] + split["records_bytes"] == end:
            return FRAME_END[: len(RECORD_END)]
    return RECORD_END


def split_json(split: Split) -> dict[str, Any]:
    return {
        "source": storage.redact(split.source),
        "file_index": split.file_index,
        "start": split.start,
        "end": split.end,
    }


@dataclass(frozen=True)
class Marker:
    """The contents of `DONE`."""

    fingerprint: str
    shard_index: int
    num_shards: int
    splits: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    """Every input file of the run (not only this shard's): redacted URL and identity."""

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def read_marker(directory: str) -> Marker | None:
    """The shard's marker, or None when the shard has not finished (or its marker is unreadable)."""
    url = storage.join(directory, DONE)
    if not storage.exists(url):
        return None
    try:
        data = orjson.loads(storage.read_bytes(url))
        return Marker(
            fingerprint=data["fingerprint"],
            shard_index=data["shard_index"],
            num_shards=data["num_shards"],
            splits=data["splits"],
            inputs=data["inputs"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def read_stats(directory: str) -> dict[str, Any]:
    url = storage.join(directory, STATS)
    try:
        data: dict[str, Any] = orjson.loads(storage.read_bytes(url))
    except orjson.JSONDecodeError as exc:
        raise StepFailed(f"{storage.redact(url)}: unreadable shard stats ({exc}); re-run the shard") from None
    return data


def shard_counts(destination: str) -> dict[int, list[int]]:
    """{num_shards: [shard indexes with a folder]} for the shard folders under `destination`."""
    found: dict[int, list[int]] = {}
    for name in storage.listdir(storage.join(destination, SHARDS_DIR)):
        m = _SHARD_DIR.match(name)
        if m:
            found.setdefault(int(m.group(2)), []).append(int(m.group(1)))
    return {n: sorted(ix) for n, ix in sorted(found.items())}
