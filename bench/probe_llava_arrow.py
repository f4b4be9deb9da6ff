"""Probe: what a columnar (pyarrow) path for LLaVA JSON arrays would cost, step by step, against orjson.

Not a converter: it times the kernels such a path needs on a LLaVA-shaped file from `gen_data.py` (cut each
~4 MiB block into elements at `]},{`, parse them with pyarrow's JSON reader, the per-element checks the row
path's exactness needs, JSON escaping, joining turns and records, SHA-256 content keys) and, on the same
blocks, orjson's parse alone. docs/data-inputs.md has the figures and what they mean.

    python bench/probe_llava_arrow.py /tmp/neva-bench-data/inputs/llava-166250.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

_CUT = re.compile(rb"\][ \t\r\n]*\}[ \t\r\n]*(,)(?=[ \t\r\n]*\{)")
_BLOCK = 4 * 2**20


def blocks(body: bytes) -> list[bytes]:
    """The inside of the array in ~4 MiB blocks of whole elements (cut after the last `]},` of each)."""
    out = []
    pos = 0
    while pos < len(body):
        block = body[pos : pos + _BLOCK]
        if pos + _BLOCK < len(body):
            last = None
            for last in _CUT.finditer(block, len(block) - 2**16):  # noqa: B007 - the last match
                pass
            assert last is not None
            block = block[: last.start(1)]
            pos += last.start(1) + 1
        else:
            pos = len(body)
        out.append(block)
    return out


def probe(block: bytes, times: dict[str, float]) -> int:
    """The columnar steps for one block; returns its number of elements."""
    t = time.perf_counter()

    def tick(step: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[step] += now - t
        t = now

    cuts = [m.start(1) for m in _CUT.finditer(block)]
    tick("find element ends (regex)")
    buf = bytearray(block)
    np.frombuffer(buf, np.uint8)[cuts] = 10
    tick("separators to newlines")
    table = pajson.read_json(
        pa.py_buffer(buf),
        read_options=pajson.ReadOptions(use_threads=False, block_size=len(buf) + 1),
        parse_options=pajson.ParseOptions(newlines_in_values=True),
    )
    tick("pyarrow JSON parse")
    for token in (b'"from"', b'"value"', b"null", b'"id"', b'"image"'):
        block.count(token)
    tick("token counts (dup keys, nulls)")
    ends = np.array([*cuts, len(block)], dtype=np.int64)
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets.tobytes()), pa.py_buffer(block))
    pc.count_substring_regex(lines, r'\{[ \t\r\n]*"from"')
    tick("turn key order (RE2)")
    conversations = table.column("conversations").combine_chunks()
    turns = conversations.flatten()
    values = turns.field("value")
    escaped = pc.match_substring_regex(values, r'["\\\x00-\x1f]')
    pc.match_substring_regex(values, r"^\s*$")
    tick("value checks (RE2)")
    special = [orjson.dumps(v).decode() for v in pc.filter(values, escaped).to_pylist()]
    quoted = pc.replace_with_mask(
        pc.binary_join_element_wise('"', values, '"', ""), escaped, pa.array(special, pa.string())
    )
    tick("JSON escaping")
    turn_json = pc.binary_join_element_wise('{"from":"', turns.field("from"), '","value":', quoted, "}", "")
    joined = pc.binary_join(pa.ListArray.from_arrays(conversations.offsets, turn_json), ",")
    pc.binary_join_element_wise(
        '{"id":"',
        table.column("id").combine_chunks(),
        '","video":"',
        table.column("image").combine_chunks(),
        '","conversations":[',
        joined,
        "]},\n",
        "",
    )
    tick("records built (joins)")
    bounds = np.frombuffer(joined.buffers()[1], np.int32, count=len(joined) + 1).tolist()
    data = memoryview(joined.buffers()[2])
    sha256 = hashlib.sha256
    for a, b in itertools.pairwise(bounds):
        sha256(data[a:b]).digest()
    tick("SHA-256 content keys")
    pc.count_substring(values, "<image>")
    pc.utf8_length(values)
    tick("placeholders and lengths")
    return int(table.num_rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    data = args.path.read_bytes()
    body = data[data.index(b"[") + 1 : data.rindex(b"]")]
    parts = blocks(body)
    times: dict[str, float] = defaultdict(float)
    rows = sum(probe(block, times) for block in parts)
    t = time.perf_counter()
    parsed = sum(len(orjson.loads(b"[" + block + b"]")) for block in parts)
    orjson_time = time.perf_counter() - t
    assert parsed == rows
    print(f"{rows:,} elements in {len(parts)} blocks")
    for step, seconds in times.items():
        print(f"  {step:34s} {seconds:6.2f} s")
    print(f"  {'columnar total':34s} {sum(times.values()):6.2f} s")
    print(f"  {'orjson parse alone (same blocks)':34s} {orjson_time:6.2f} s")


if __name__ == "__main__":
    main()
