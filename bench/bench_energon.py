"""Energon-export benchmark: `neva-prep data export energon` against `tar` and NVIDIA's ShardWriter script.

    python bench/bench_energon.py [--dir /tmp/neva-bench-energon] [--images 100000] [--repeats 3]

Inputs (made once into --dir): N small generated JPEGs (64x48, ~1.5 KB) under media/, a LLaVA JSON over them,
and the merged dataset `data convert` + `data merge` make of it. Then, alternating (A, B, C, A, B, C, …), each
command in its own process, with the media evicted from the page cache first (POSIX_FADV_DONTNEED) and the
outputs synced inside the timed region:
  tar      `tar -cf` of the media folder (the floor: reads every file, writes one archive; no JSON at all)
  nvidia   the script NVIDIA's NeMo docs show: json.load, then webdataset.ShardWriter with one sample per
           record (`jpg` = the file's bytes, `json` = the conversations), 10k samples a shard
  neva     `neva-prep data export energon` (one shard, then --finalize, Energon's own index) — reported as
           the export alone and with the finalize step
Peak RSS is the child's ru_maxrss (wait4). Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

NVIDIA_SCRIPT = r"""
import json, os, sys
import webdataset as wds
data_json, media, out = sys.argv[1:4]
with open(data_json) as f:
    data = json.load(f)
os.makedirs(out, exist_ok=True)
with wds.ShardWriter(os.path.join(out, "pretrain-%d.tar"), maxcount=10000) as shard_writer:
    for entry in data:
        with open(os.path.join(media, entry["image"]), "rb") as img_file:
            image_data = img_file.read()
        sample = {
            "__key__": entry["id"],
            "jpg": image_data,
            "json": json.dumps(entry["conversations"]).encode("utf-8"),
        }
        shard_writer.write(sample)
for name in os.listdir(out):
    fd = os.open(os.path.join(out, name), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""


def make_inputs(root: Path, n: int) -> Path:
    """N JPEGs, a LLaVA JSON over them, and its merged dataset (the real data step); returns the dataset."""
    from PIL import Image

    media, dataset = root / "media", root / "dataset"
    if (dataset / "stats.json").exists():
        return dataset
    records = []
    for i in range(n):
        rel = f"{i // 1000:03d}/{i:07d}.jpg"
        path = media / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 128)).save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        turns = [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"A flat colour, number {i}."},
        ]
        records.append({"id": f"img-{i:07d}", "image": rel, "conversations": turns})
    (root / "llava.json").write_bytes(orjson.dumps(records))
    neva = [sys.executable, "-m", "neva_prep.cli"]
    subprocess.run([*neva, "data", "convert", str(root / "llava.json"), str(dataset), "--from", "llava",
                    "--media", "image"], check=True)  # fmt: skip
    subprocess.run([*neva, "data", "merge", str(dataset), "--name", "bench"], check=True)
    return dataset


def evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.fdatasync(fd)  # dirty pages (fresh inputs) are not dropped, and would be read from RAM
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def timed(argv: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in MiB) of one command in its own process."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return seconds, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default="/tmp/neva-bench-energon")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.dir) / str(args.images)
    root.mkdir(parents=True, exist_ok=True)
    dataset = make_inputs(root, args.images)
    media, outs = root / "media", root / "outs"
    neva = [
        sys.executable,
        "-m",
        "neva_prep.cli",
        "data",
        "export",
        "energon",
        str(dataset),
        "--name",
        "bench",
    ]
    neva += ["--media-root", str(media)]
    runs: dict[str, list[tuple[float, int]]] = {"tar": [], "nvidia": [], "neva": [], "neva+index": []}

    for _ in range(args.repeats):
        shutil.rmtree(outs, ignore_errors=True)
        outs.mkdir()
        evict(media)
        runs["tar"].append(
            timed(["bash", "-c", f"tar -cf {outs}/all.tar -C {media} . && sync -f {outs}/all.tar"])
        )
        evict(media)
        runs["nvidia"].append(
            timed(
                [
                    sys.executable,
                    "-c",
                    NVIDIA_SCRIPT,
                    str(dataset / "bench.json"),
                    str(media),
                    str(outs / "wds"),
                ]
            )
        )
        shutil.rmtree(dataset / "energon", ignore_errors=True)
        evict(media)
        export = timed([*neva, "--force"])
        index = timed([*neva, "--finalize"])
        runs["neva"].append(export)
        runs["neva+index"].append((export[0] + index[0], max(export[1], index[1])))

    floor = statistics.median(s for s, _ in runs["tar"])
    size = sum(p.stat().st_size for p in media.rglob("*.jpg"))
    print(f"\n{args.images} images, {size / 2**20:.0f} MiB; median of {args.repeats} (min-max), peak RSS")
    print("| command | time | vs tar | peak RSS |\n|---|---|---|---|")
    for name, results in runs.items():
        times = [s for s, _ in results]
        med = statistics.median(times)
        rss = max(r for _, r in results)
        print(
            f"| {name} | {med:.1f} s ({min(times):.1f}-{max(times):.1f}) | {med / floor:.2f}x | {rss} MiB |"
        )


if __name__ == "__main__":
    main()
