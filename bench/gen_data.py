"""Generate the data step's benchmark inputs, deterministically, streamed to disk.

- `webvid.csv`: WebVid-10M-shaped (`videoid,contentUrl,duration,page_dir,name`, quoted captions with commas
  and quotes, some non-ASCII): ~278 bytes a row, like `results_10M_train.csv`.
- `llava.json`: llava_v1_5_mix665k-shaped JSON array (multi-turn records on `coco/train2017/...jpg`, ~6%
  text-only), ~1.8 kB a record, indented like the original.

    python bench/gen_data.py OUT_DIR [--webvid-rows 1000000] [--llava-records 665000]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson

_TEXT = (
    "aerial view of a mountain lake at sunset slow motion close-up young woman smiling city traffic night "
    "time lapse clouds over the ocean waves crashing on rocks forest in autumn snow falling business man "
    "working laptop office coffee cup table happy family walking park dog running beach drone shot river "
    "bridge old town street market people shopping café über naïve 4k footage"
)
WORDS = tuple(_TEXT.split(" "))
QUESTIONS = (
    "What is the man holding in his hand?",
    "What color is the bus in the image?",
    "How many people are visible in the picture?",
    "What is the weather like in the scene?",
    "Is the street busy or quiet?",
    "What might be the purpose of this gathering?",
)


def caption(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    text = " ".join(words).capitalize()
    r = rng.random()
    if r < 0.3:
        text = text.replace(" ", ", ", 1)
    elif r < 0.35:
        text = f'{text} "quoted"'
    return text


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def write_webvid(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("videoid,contentUrl,duration,page_dir,name\n")
        buf = []
        for i in range(rows):
            vid = 1_000_000 + i * 7
            name = caption(rng, 10, 22)
            slug = "-".join(name.lower().replace(",", "").replace('"', "").split()[:6])
            url = f"https://ak.picdn.net/shutterstock/videos/{vid}/preview/stock-footage-{slug}.mp4"
            page = i // 50
            page_dir = f"{page * 50 + 1:06d}_{page * 50 + 50:06d}"
            buf.append(f"{vid},{url},PT00H00M{rng.randint(5, 59):02d}S,{page_dir},{csv_field(name)}\n")
            if len(buf) == 10_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))


def llava_record(rng: random.Random, i: int) -> dict[str, object]:
    turns = []
    for t in range(rng.choice((1, 2, 3, 4, 6, 8))):
        q = rng.choice(QUESTIONS)
        turns.append({"from": "human", "value": ("<image>\n" + q) if t == 0 else q})
        turns.append({"from": "gpt", "value": caption(rng, 15, 70) + "."})
    if rng.random() < 0.06:
        turns[0]["value"] = turns[0]["value"].removeprefix("<image>\n")
        return {"id": f"text_{i}", "model": "", "conversations": turns}
    return {"id": f"{i:012d}", "image": f"coco/train2017/{i:012d}.jpg", "conversations": turns}


def write_llava(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(b"[\n")
        for i in range(records):
            data = orjson.dumps(llava_record(rng, i), option=orjson.OPT_INDENT_2)
            f.write(b"  " + data.replace(b"\n", b"\n  "))
            f.write(b",\n" if i + 1 < records else b"\n")
        f.write(b"]\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--webvid-rows", type=int, default=1_000_000)
    parser.add_argument("--llava-records", type=int, default=665_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.webvid_rows:
        write_webvid(args.out / "webvid.csv", args.webvid_rows)
    if args.llava_records:
        write_llava(args.out / "llava.json", args.llava_records)


if __name__ == "__main__":
    main()
