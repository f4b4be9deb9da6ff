"""`data check --decode` on real tiny media made here (Pillow images, PyAV mp4s) and broken ones; shards in
any order give the 1-shard result; s3:// inputs through the moto server; `--write-clean`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from conftest import neva
from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer

RNG = np.random.default_rng(0)


def noise(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))


def write_mp4(path: Path, frames: int) -> None:
    """A real mp4 (MPEG-4 part 2, FFmpeg's own encoder, in every PyAV wheel); moov written at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(noise()), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer(root / "tokenizer.model", 384)
    patch_tokenizer(str(root / "tokenizer.model"), str(root / "tokenizer_neva.model"))
    return root / "tokenizer_neva.model"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    noise().save(root / "good.jpg", quality=95)
    noise().save(root / "sub" / "good.png")
    noise().save(root / "gif.jpg", format="GIF")  # a GIF named .jpg
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    data = (root / "good.jpg").read_bytes()
    (root / "half.jpg").write_bytes(data[: len(data) // 2])  # decodes its header, not its pixels
    return root


def image_record(i: int, path: str) -> dict[str, Any]:
    return {
        "id": f"img-{i}",
        "image": path,
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."},
            {"from": "gpt", "value": f"Picture number {i}."},
        ],
    }


IMAGE_FILES = ["good.jpg", "gif.jpg", "sub/good.png", "zero.jpg", "text.jpg", "half.jpg", "missing.jpg"]
EXPECTED_IMAGES = {
    2: ("media format mismatch", "is GIF, its extension says JPEG"),
    4: ("media undecodable", "cannot identify image file"),
    5: ("media undecodable", "cannot identify image file"),
    6: ("media undecodable", "image file is truncated"),
    7: ("media missing", "'missing.jpg' not found under"),
}


def check(
    data: str, tokenizer: str | Path, report: str, *args: str, media: str = "image"
) -> tuple[int, str, str]:
    extra = ("--num-frames", "4") if media == "video" else ()
    proc = neva(
        "data", "check", data, "--media", media, "--template", "llama_2", "--tokenizer", str(tokenizer),
        "--seq-length", "4096", "--report", report, *extra, *args,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def findings_of(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (report / "findings.jsonl").read_text().splitlines()]


def test_decode_finds_every_broken_image_with_the_decoders_reason(
    tokenizer: Path, images: Path, tmp_path: Path
) -> None:
    data = tmp_path / "images.json"
    data.write_text(json.dumps([image_record(i, p) for i, p in enumerate(IMAGE_FILES, 1)]))
    report = tmp_path / "report"
    code, out, err = check(str(data), tokenizer, str(report), "--media-root", str(images), "--decode")
    assert code == 3, err
    found = {f["row"]: (f["reason"], f["detail"]) for f in findings_of(report)}
    assert set(found) == set(EXPECTED_IMAGES)
    for row, (reason, words) in EXPECTED_IMAGES.items():
        assert found[row][0] == reason and words in found[row][1], found[row]
    assert f"report: {report / 'report.html'}" in out

    # without --decode only the missing file is seen: the rest needs decoding to be found
    code, _, _ = check(str(data), tokenizer, str(tmp_path / "nodecode"), "--media-root", str(images))
    assert code == 3
    assert [(f["row"], f["reason"]) for f in findings_of(tmp_path / "nodecode")] == [(7, "media missing")]


def test_decode_videos(tokenizer: Path, tmp_path: Path) -> None:
    root = tmp_path / "videos"
    write_mp4(root / "good.mp4", 6)
    write_mp4(root / "short.mp4", 2)
    data = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "zero.mp4").write_bytes(b"")
    names = ["good.mp4", "short.mp4", "truncated.mp4", "zero.mp4"]
    records = [
        {
            "id": f"v{i}",
            "video": name,
            "conversations": [
                {"from": "human", "value": "<video>\nWhat happens?"},
                {"from": "gpt", "value": "Noise."},
            ],
        }
        for i, name in enumerate(names, 1)
    ]
    (tmp_path / "v.json").write_text(json.dumps(records))
    report = tmp_path / "report"
    code, _, err = check(
        str(tmp_path / "v.json"), tokenizer, str(report), "--media-root", str(root), "--decode", media="video"
    )
    assert code == 3, err
    found = {f["row"]: f for f in findings_of(report)}
    assert sorted(found) == [2, 3, 4]
    assert (
        found[2]["reason"] == "video too short" and "2 frame(s) decode, --num-frames 4" in found[2]["detail"]
    )
    assert found[3]["reason"] == "media undecodable" and "truncated.mp4" in found[3]["detail"]
    assert found[4]["reason"] == "media undecodable" and "zero.mp4" in found[4]["detail"]


def many_records(n: int) -> list[dict[str, Any]]:
    files = [*IMAGE_FILES, "../escape.jpg"]
    records = [image_record(i, files[i % len(files)]) for i in range(1, n + 1)]
    records[5]["id"] = records[2]["id"]  # a duplicate id across what become different shards
    records[8]["conversations"][0]["from"] = "gpt"  # turn order
    return records


def test_three_shards_in_any_order_equal_one_shard(tokenizer: Path, images: Path, tmp_path: Path) -> None:
    data = tmp_path / "many.json"
    data.write_text(json.dumps(many_records(40), indent=1))
    opts = ("--media-root", str(images), "--decode")
    one = tmp_path / "one"
    assert check(str(data), tokenizer, str(one), *opts)[0] == 3

    three = tmp_path / "three"
    sharded = (*opts, "--num-shards", "3")
    code, _, err = check(str(data), tokenizer, str(three), *sharded, "--merge")
    assert code == 1 and "check shard 0 of 3 has not finished" in err  # nothing to merge yet
    for i in (2, 0, 1):
        code, out, err = check(str(data), tokenizer, str(three), *sharded, "--shard-index", str(i))
        assert code == 0, err
        assert f"check shard {i} of 3" in out
    code, out, err = check(str(data), tokenizer, str(three), *sharded, "--merge")
    assert code == 3, err
    for name in ("lengths.jsonl", "findings.jsonl", "summary.json"):
        assert (three / name).read_bytes() == (one / name).read_bytes(), name
    reasons = {f["reason"] for f in findings_of(three)}
    assert {"duplicate id", "turn order", "path escapes root", "media format mismatch"} <= reasons
    assert len((three / "lengths.jsonl").read_text().splitlines()) == 40


def test_write_clean_keeps_sound_records_and_rejects_the_rest(
    tokenizer: Path, images: Path, tmp_path: Path
) -> None:
    records = many_records(16)
    data = tmp_path / "many.json"
    data.write_text(json.dumps(records))
    clean = tmp_path / "clean" / "train.json"
    code, out, _ = check(
        str(data), tokenizer, str(tmp_path / "r"), "--media-root", str(images), "--decode",
        "--write-clean", str(clean),
    )  # fmt: skip
    assert code == 3
    bad = {f["row"] for f in findings_of(tmp_path / "r")}
    kept = json.loads(clean.read_text())
    assert kept == [r for i, r in enumerate(records, 1) if i not in bad]
    rejects = [
        json.loads(line) for line in (tmp_path / "clean" / "train.rejects.jsonl").read_text().splitlines()
    ]
    assert [r["row"] for r in rejects] == sorted(bad)
    assert len(kept) + len(rejects) == len(records) and f"({len(kept)} records)" in out
    # the clean file is ready to train
    code, out, err = check(
        str(clean), tokenizer, str(tmp_path / "r2"), "--media-root", str(images), "--decode"
    )
    assert code == 0, out + err


@pytest.mark.s3
def test_s3_input_media_and_report(tokenizer: Path, images: Path, s3: str, tmp_path: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    records = [image_record(i, p) for i, p in enumerate(IMAGE_FILES, 1)]
    local = tmp_path / "local"
    shutil.copytree(images, local)
    fs.put(str(local) + "/", f"{s3}/media/", recursive=True)
    fs.pipe(f"{s3}/data/images.json", json.dumps(records).encode())
    fs.put(str(tokenizer), f"{s3}/tok/tokenizer_neva.model")
    code, out, err = check(
        f"{s3}/data/images.json", f"{s3}/tok/tokenizer_neva.model", f"{s3}/report",
        "--media-root", f"{s3}/media", "--decode",
    )  # fmt: skip
    assert code == 3, err
    assert "testing-secret" not in out + err
    found = [json.loads(line) for line in fs.cat(f"{s3}/report/findings.jsonl").decode().splitlines()]
    assert {f["row"]: f["reason"] for f in found} == {r: e[0] for r, e in EXPECTED_IMAGES.items()}
    assert fs.exists(f"{s3}/report/report.html") and fs.exists(f"{s3}/report/tokens.png")
