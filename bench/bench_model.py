"""Model-step benchmark: `neva-prep checkpoint convert` against copying the same safetensors files.

    python bench/bench_model.py [--dir /tmp/neva-bench-model] [--shape 7b|70b-slice] [--layers N]
                                [--repeats 3] [--precision 16] [--keep] [--sha256]

In the same run and alternating (copy, convert, copy, convert, …), each command in its own process:
  copy     `cp` of the *.safetensors files into --dir/out, then `sync -f` on the output (the floor)
  convert  `python -m neva_prep.cli checkpoint convert SRC --dir/out/model.nemo` (fsyncs before renaming)
  convert+sha256 (--sha256)  the same conversion hashing what it writes, as the model step runs it
Before every run the inputs are evicted from the page cache (fdatasync + POSIX_FADV_DONTNEED) and the
previous output is deleted. Peak RSS is the child's ru_maxrss (wait4), what `/usr/bin/time -v` reports.
The synthetic checkpoint is generated once into --dir/<shape> by `make_llama.py` (13.5 GB for 7b).
Not a test: run it by hand (`make bench-model`); it prints medians, spread, the ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# the conversion as the model step runs it: hashing every byte as it is written (for the manifest)
HASHED = (
    "import sys; from neva_prep.model.convert import convert_checkpoint as c; "
    "c(sys.argv[1], sys.argv[2], precision=sys.argv[3], sha256=True)"
)


def evict(paths: list[Path]) -> None:
    """Drop files from the page cache so that the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(cmd: list[str]) -> tuple[float, int]:
    """Run `cmd`; (wall seconds, peak RSS bytes of the child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/neva-bench-model"))
    ap.add_argument("--shape", choices=["7b", "70b-slice"], default="7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="16")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint afterwards")
    ap.add_argument(
        "--sha256", action="store_true", help="also time the conversion as the model step runs it (hashing)"
    )
    args = ap.parse_args()
    src = args.dir / (args.shape + (f"-{args.layers}l" if args.layers else ""))
    out = args.dir / "out"
    if not (src / "model.safetensors.index.json").exists():
        layers = ["--layers", str(args.layers)] if args.layers else []
        subprocess.run(
            [sys.executable, str(BENCH / "make_llama.py"), str(src), "--shape", args.shape, *layers],
            check=True,
        )
    shards = sorted(src.glob("*.safetensors"))
    inputs = [*shards, *(src / n for n in ("config.json", "tokenizer.model", "model.safetensors.index.json"))]
    size = sum(p.stat().st_size for p in shards)
    nemo = out / "model.nemo"
    names = ["copy", "convert", *(["convert+sha256"] if args.sha256 else [])]
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    commands = {
        "copy": ["sh", "-c", f'cp {" ".join(map(str, shards))} "{out}/" && sync -f "{out}"'],
        "convert": [sys.executable, "-m", "neva_prep.cli", "checkpoint", "convert", str(src), str(nemo),
                    "--precision", args.precision],
        "convert+sha256": [sys.executable, "-c", HASHED, str(src), str(nemo), args.precision],
    }  # fmt: skip
    for i in range(args.repeats):
        for name in names:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            os.sync()
            evict(inputs)
            wall, rss = timed(commands[name])
            runs[name].append((wall, rss))
            print(f"run {i + 1} {name:8s} {wall:7.1f} s  peak RSS {rss / 2**20:7.0f} MiB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    spread = {k: (min(w for w, _ in v), max(w for w, _ in v)) for k, v in runs.items()}
    peak = {k: max(r for _, r in v) for k, v in runs.items()}
    report = {
        "shape": args.shape,
        "layers": args.layers,
        "precision": args.precision,
        "input_bytes": size,
        "median_s": med,
        "spread_s": spread,
        "peak_rss_bytes": peak,
        "ratio_convert_to_copy": med["convert"] / med["copy"],
        **({"ratio_convert_sha256_to_copy": med["convert+sha256"] / med["copy"]} if args.sha256 else {}),
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n| {args.shape} ({size / 1e9:.1f} GB, precision {args.precision}) | median | spread | peak RSS |\n"
        f"|---|---|---|---|\n"
        f"| cp + sync | {med['copy']:.1f} s | {spread['copy'][0]:.1f}-{spread['copy'][1]:.1f} s | - |\n"
        f"| neva-prep checkpoint convert | {med['convert']:.1f} s | {spread['convert'][0]:.1f}-"
        f"{spread['convert'][1]:.1f} s | {peak['convert'] / 2**20:.0f} MiB |\n"
        f"ratio convert / copy: {report['ratio_convert_to_copy']:.2f}"
    )
    if args.sha256:
        lo, hi = spread["convert+sha256"]
        print(
            f"| convert + sha256 (model step) | {med['convert+sha256']:.1f} s | {lo:.1f}-{hi:.1f} s | "
            f"{peak['convert+sha256'] / 2**20:.0f} MiB |\n"
            f"ratio convert+sha256 / copy: {report['ratio_convert_sha256_to_copy']:.2f}"
        )
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
