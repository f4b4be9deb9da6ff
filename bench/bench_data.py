"""Data-step benchmark: `neva-prep data convert` + `merge` against the script users write, and orjson alone.

    python bench/bench_data.py [--dir /tmp/neva-bench-data] [--webvid-rows 1000000] [--llava-records 665000]
                               [--repeats 3]

For each dataset, in the same run and alternating (A, B, C, …), each command in its own process:
  naive   WebVid: pandas.read_csv + a record per row + json.dump;  LLaVA: json.load + retarget + json.dump
  orjson  orjson.loads + orjson.dumps of the same bytes (WebVid: the converted JSON; LLaVA: the input)
  cp      `cp` of the input, and of the merged output (the floor for the merge, which copies records)
  neva 1  `neva-prep data convert SRC DST --num-shards 1` then `neva-prep data merge DST`, on one core
  neva 2  the same with 2 shards at once, each pinned to its own core, then the merge
Before every run the inputs are evicted from the page cache (fdatasync + POSIX_FADV_DONTNEED); every
command syncs its outputs before it exits, inside the timed region. Peak RSS is the child's ru_maxrss (wait4).
It prints medians, spread, rows/s, the ratios against the naive script and cp, the shard scaling (2 shards
on 2 cores / 1 shard on 1 core, merge included), the merge alone against cp of its output, and neva's peak
RSS at 1/4 and full size (flat memory). The load average is printed at the start and the end.
Not a test: run it by hand (`make bench-data`); inputs are generated once into --dir by `gen_data.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_data import write_llava, write_webvid

NAIVE_WEBVID = r"""
import json, os, sys
import pandas as pd
src, out = sys.argv[1:3]
df = pd.read_csv(src)
prompt = "<video>\nWrite a terse but informative summary of the following video clip."
records = []
for row in df.itertuples(index=False):
    records.append({
        "id": str(row.videoid),
        "video": f"{row.page_dir}/{row.videoid}.mp4",
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": row.name}],
    })
with open(out, "w") as f:
    json.dump(records, f)
    f.flush()
    os.fsync(f.fileno())
"""

NAIVE_LLAVA = r"""
import json, os, sys
src, out = sys.argv[1:3]
with open(src) as f:
    data = json.load(f)
records = []
for rec in data:
    if "image" not in rec:
        continue
    rec["video"] = rec.pop("image")
    for turn in rec["conversations"]:
        turn["value"] = turn["value"].replace("<image>", "<video>")
    records.append(rec)
with open(out, "w") as f:
    json.dump(records, f)
    f.flush()
    os.fsync(f.fileno())
"""

ORJSON = r"""
import os, sys
import orjson
src, out = sys.argv[1:3]
with open(src, "rb") as f:
    data = orjson.loads(f.read())
with open(out, "wb") as f:
    f.write(orjson.dumps(data))
    f.flush()
    os.fsync(f.fileno())
"""


def evict(*paths: Path) -> None:
    """Drop files from the page cache so that a run reads the disk, not RAM."""
    for path in paths:
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_all(argvs: list[list[str]], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds until the last ends, largest peak RSS) of child processes started together; fails loudly
    on a non-zero exit."""
    start = time.perf_counter()
    env = {**os.environ, **(env or {})}
    procs = {subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL).pid: argv for argv in argvs}
    peak = 0
    while procs:
        pid, status, usage = os.wait4(-1, 0)
        argv = procs.pop(pid, None)
        if argv is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed ({status}): {' '.join(argv)}")
        peak = max(peak, usage.ru_maxrss * 1024)
    return time.perf_counter() - start, peak


def run(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of one child process."""
    return run_all([argv], env=env)


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core % (os.cpu_count() or 1))] if shutil.which("taskset") else []


def neva(src: Path, dst: Path, fmt: str, shards: int = 1) -> tuple[float, float, int]:
    """convert (`shards` shards at once, each pinned to its own core) + merge: (total seconds, merge
    seconds, peak RSS of the largest process)."""
    shutil.rmtree(dst, ignore_errors=True)
    cli = [sys.executable, "-m", "neva_prep.cli", "data"]
    env = {"OMP_NUM_THREADS": "1"}
    convert = [
        *cli,
        "convert",
        str(src),
        str(dst),
        "--from",
        fmt,
        "--media",
        "video",
        "--num-shards",
        str(shards),
    ]
    t1, rss1 = run_all([[*pin(i), *convert, "--shard-index", str(i)] for i in range(shards)], env=env)
    t2, rss2 = run([*pin(0), *cli, "merge", str(dst), "--name", "out"], env=env)
    subprocess.run(["sync", "-f", str(dst)], check=True)
    return t1 + t2, t2, max(rss1, rss2)


def cp(src: Path, dst: Path) -> float:
    """`cp` of a file with its output synced, the input evicted first."""
    evict(src)
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", "-f", str(dst.parent)], check=True)
    return time.perf_counter() - start


def fmt_time(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def bench(name: str, src: Path, rows: int, work: Path, repeats: int, fmt: str, naive: str) -> None:
    keys = ("naive", "orjson", "cp", "neva 1", "neva 2", "merge 1", "cp out")
    times: dict[str, list[float]] = {k: [] for k in keys}
    rss: dict[str, int] = dict.fromkeys(keys, 0)
    neva_out = work / f"{name}-neva"
    orjson_src = neva_out / "out.json" if name == "webvid" else src
    for i in range(repeats):
        evict(src)
        t, m = run([*pin(0), sys.executable, "-c", naive, str(src), str(work / f"{name}-naive.json")])
        times["naive"].append(t)
        rss["naive"] = max(rss["naive"], m)
        for shards in (1, 2):
            evict(src)
            t, merge_t, m = neva(src, neva_out, fmt, shards)
            times[f"neva {shards}"].append(t)
            rss[f"neva {shards}"] = max(rss[f"neva {shards}"], m)
            if shards == 1:
                times["merge 1"].append(merge_t)
                times["cp out"].append(cp(neva_out / "out.json", work / "cp-out.json"))
        evict(orjson_src)
        t, m = run(
            [*pin(0), sys.executable, "-c", ORJSON, str(orjson_src), str(work / f"{name}-orjson.json")]
        )
        times["orjson"].append(t)
        rss["orjson"] = max(rss["orjson"], m)
        times["cp"].append(cp(src, work / "cp-in"))
        print(
            f"  {name} round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True
        )
    size = src.stat().st_size
    out_size = (neva_out / "out.json").stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n{name}: {rows:,} input rows, {size / 1e6:.0f} MB in, {out_size / 1e6:.0f} MB out,"
        f" {repeats} rounds"
    )
    labels = {
        "naive": "naive script",
        "orjson": "orjson loads+dumps",
        "cp": "cp of the input",
        "neva 1": "neva 1 shard, 1 core",
        "neva 2": "neva 2 shards, 2 cores",
        "merge 1": "  of which the merge",
        "cp out": "cp of the merged JSON",
    }
    for key, label in labels.items():
        peak = f"  peak RSS {rss[key] / 2**20:6.0f} MiB" if rss[key] else ""
        print(f"  {label:24s} {fmt_time(times[key])}  {rows / med[key]:12,.0f} rows/s{peak}")
    print(f"  neva 1 shard vs naive:  {med['naive'] / med['neva 1']:5.2f}x the rows/s")
    print(f"  neva 2 shards vs naive: {med['naive'] / med['neva 2']:5.2f}x the rows/s")
    print(f"  2 shards / 1 shard:     {med['neva 2'] / med['neva 1']:5.2f} of the wall time (target <= 0.6)")
    print(f"  neva 1 shard vs orjson: {med['neva 1'] / med['orjson']:5.2f}x the time")
    print(f"  neva 1 shard vs cp:     {med['neva 1'] / med['cp']:5.2f}x the time of cp of the input")
    print(
        f"  merge vs cp of its output: {med['cp out'] / med['merge 1']:5.2f} of cp's throughput"
        " (target >= 0.5)"
    )


def flat_memory(name: str, src_full: Path, src_quarter: Path, work: Path, fmt: str) -> None:
    _, _, small = neva(src_quarter, work / f"{name}-quarter", fmt)
    _, _, full = neva(src_full, work / f"{name}-full", fmt)
    print(f"  neva peak RSS: {small / 2**20:.0f} MiB at 1/4 size, {full / 2**20:.0f} MiB at full size")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/neva-bench-data"))
    parser.add_argument("--webvid-rows", type=int, default=1_000_000)
    parser.add_argument("--llava-records", type=int, default=665_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    inputs, work = args.dir / "inputs", args.dir / "work"
    inputs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    datasets = []
    if args.webvid_rows:
        full, quarter = (
            inputs / f"webvid-{args.webvid_rows}.csv",
            inputs / f"webvid-{args.webvid_rows // 4}.csv",
        )
        for path, rows in ((full, args.webvid_rows), (quarter, args.webvid_rows // 4)):
            if not path.exists():
                print(f"generating {path} ...", flush=True)
                write_webvid(path, rows)
        datasets.append(("webvid", full, quarter, args.webvid_rows, "webvid", NAIVE_WEBVID))
    if args.llava_records:
        full, quarter = (
            inputs / f"llava-{args.llava_records}.json",
            inputs / f"llava-{args.llava_records // 4}.json",
        )
        for path, rows in ((full, args.llava_records), (quarter, args.llava_records // 4)):
            if not path.exists():
                print(f"generating {path} ...", flush=True)
                write_llava(path, rows)
        datasets.append(("llava", full, quarter, args.llava_records, "llava", NAIVE_LLAVA))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, full, quarter, rows, fmt, naive in datasets:
        bench(name, full, rows, work, args.repeats, fmt, naive)
        flat_memory(name, full, quarter, work, fmt)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
