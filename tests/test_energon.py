"""`data export energon`: datasets made by the real data step (`data convert` + `data merge` on a caption CSV
and LLaVA JSON with real images from Pillow), exported, then read back by Megatron-Energon itself."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from conftest import neva
from neva_prep import storage
from neva_prep.data.convert import CRASH_ENV
from neva_prep.data.writers import energon, media_type

pytest.importorskip("megatron.energon")

# (id, media path, caption, how the file is made): odd ids (dots, slashes, unicode, Energon's `__x__` meta
# pattern), a PNG named .jpg, a missing file and a file that is no image.
ROWS: list[tuple[str, str, str, str]] = [
    ("plain-1", "imgs/a.png", "A red square.", "png"),
    ("dot.in.id", "imgs/b.jpg", "A green square, with a comma.", "jpeg"),
    ("slash/in/id", "imgs/sub/c.jpg", "A PNG that is named .jpg.", "png"),
    ("ünïcode-ïd", "imgs/d.gif", 'Quotes "and" ünïcode.', "gif"),
    ("x__meta__y", "imgs/e.webp", "Looks like Energon metadata.", "webp"),
    ("missing", "imgs/missing.png", "Its file is not there.", "none"),
    ("not-an-image", "imgs/f.png", "Its bytes are text.", "text"),
    ("plain-2", "imgs/g.png", "Another one.", "png"),
    ("plain-3", "imgs/h.jpg", "And one more.", "jpeg"),
]
EXPORTED = [r for r in ROWS if r[3] not in ("none", "text")]


def image_bytes(fmt: str, i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5 + i, 4 + i), (30 * i % 256, 80, 200)).save(buf, fmt.upper())
    return buf.getvalue()


def make_media(root: str) -> dict[str, bytes]:
    """Writes the media of ROWS under `root` (path or URL); returns {relative path: bytes}."""
    files = {}
    for i, (_, path, _, how) in enumerate(ROWS):
        if how == "none":
            continue
        data = b"this is not an image\n" if how == "text" else image_bytes(how, i)
        storage.write_bytes(storage.join(root, path), data)
        files[path] = data
    return files


def merged_dataset(src: str, dst: str, *, shards: int = 2) -> list[dict[str, Any]]:
    """The caption CSV of ROWS through the real data step into `dst` (NAME `caps`); returns caps.json."""
    lines = ["id,path,caption"] + [
        f'{rid},{path},"{cap.replace(chr(34), chr(34) * 2)}"' for rid, path, cap, _ in ROWS
    ]
    storage.write_bytes(storage.join(src, "caps.csv"), ("\n".join(lines) + "\n").encode())
    for i in range(shards):
        r = neva("data", "convert", storage.join(src, "caps.csv"), dst, "--from", "captions",
                 "--media", "image", "--media-column", "path", "--caption-column", "caption",
                 "--id-column", "id",
                 "--num-shards", str(shards), "--shard-index", str(i))  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = neva("data", "merge", dst, "--name", "caps")
    assert r.returncode == 0, r.stderr
    records: list[dict[str, Any]] = orjson.loads(storage.read_bytes(storage.join(dst, "caps.json")))
    assert len(records) == len(ROWS)
    return records


def export(dst: str, media_root: str, n: int, *extra: str, env: dict[str, str] | None = None) -> None:
    args = ("--name", "caps", "--media-root", media_root, "--num-shards", str(n), *extra)
    for i in range(n):
        r = neva("data", "export", "energon", dst, *args, "--shard-index", str(i), env=env)
        assert r.returncode == 0, r.stderr
        assert f"energon export shard {i} of {n}" in r.stdout
    r = neva("data", "export", "energon", dst, *args, "--finalize", env=env)
    assert r.returncode == 0, r.stderr
    assert f"{len(ROWS)} records, {len(EXPORTED)} exported, 2 rejected" in r.stdout, r.stdout


def load(path: str, split: str = "train", *, decoded: bool = False) -> list[Any]:
    """Every sample of a split, through Energon's own loader (CPU, no worker processes, no shuffling)."""
    from megatron.energon import DefaultTaskEncoder, WorkerConfig, get_loader, get_train_dataset

    encoder: Any = DefaultTaskEncoder()
    if not decoded:
        encoder.decoder = None  # the parts' bytes as stored
    ds = get_train_dataset(
        path,
        split_part=split,
        batch_size=None,
        worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
        shuffle_buffer_size=None,
        max_samples_per_sequence=None,
        repeat=False,
        task_encoder=encoder,
    )
    return list(get_loader(ds))


def tars(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


def test_export_reads_back_in_energon_sample_for_sample(tmp_path: Path) -> None:
    media = make_media(str(tmp_path / "media"))
    dst = tmp_path / "caps"
    records = merged_dataset(str(tmp_path), str(dst))
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)  # here; a repeated id would still get its own key (the position)

    export(str(dst), str(tmp_path / "media"), 3, "--samples-per-shard", "2", "--split", "train=1,val=1")
    root = dst / "energon"
    samples = load(str(root), "train") + load(str(root), "val")

    by_id = {r["id"]: r for r in records}
    assert len(samples) == len(EXPORTED)
    keys = [s.__key__ for s in samples]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k or "__" in k for k in keys)
    for s in samples:
        record = by_id[json.loads(_json_member(root, s.__key__))["id"]]
        assert s.context == [t["value"] for t in record["conversations"] if t["from"] == "human"]
        assert s.answers == [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
        assert s.image == media[record["image"]]  # the bytes, unchanged
    # the json part is the record exactly as NAME.json holds it (bytes)
    lines = (dst / "caps.json").read_bytes().splitlines()[1:-1]
    for s in samples:
        position = int(s.__key__.split("-")[0])
        assert _json_member(root, s.__key__) == lines[position - 1].rstrip(b",")

    # every member's extension is the real format; the PNG named .jpg is a png
    names = sorted(n for t in root.rglob("*.tar") for n in _members(t))
    assert any(n.endswith("-slash_in_id.png") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"json", "png", "jpg", "gif", "webp"}

    # counts add up, rejects name the record and the reason
    stats = json.loads((root / "stats.json").read_text())
    assert (stats["records"], stats["exported"], stats["rejected"]) == (len(ROWS), len(EXPORTED), 2)
    assert stats["rejected_by_reason"] == {"media missing": 1, "unknown media format": 1}
    assert sum(stats["split_samples"].values()) == len(EXPORTED) and stats["split_samples"]["val"] > 0
    assert all(t["samples"] <= 2 for t in stats["tars"])
    rejects = [json.loads(line) for line in (root / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["id"], r["reason"]) for r in rejects] == [
        (6, "missing", "media missing"),
        (7, "not-an-image", "unknown media format"),
    ]

    # decoded by Energon's default decoder: the images' pixels
    decoded = load(str(root), "train", decoded=True)
    assert {tuple(s.image.shape) for s in decoded} <= {(3, 4 + i, 5 + i) for i in range(len(ROWS))}
    # Energon's own check passes
    lint = _energon("lint", str(root), "--split-parts", "train,val")
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # the shard count changes nothing: one shard gives byte-identical tars
    one = tmp_path / "one"
    one.mkdir()
    for name in ("caps.json", "stats.json"):
        shutil.copy(dst / name, one / name)
    export(str(one), str(tmp_path / "media"), 1, "--samples-per-shard", "2", "--split", "train=1,val=1")
    assert tars(one / "energon") == tars(root) and len(tars(root)) >= 3
    again = [json.loads(line) for line in (one / "energon" / "rejects.jsonl").read_text().splitlines()]
    assert [{**r, "source": ""} for r in again] == [{**r, "source": ""} for r in rejects]
    split_yaml = (root / ".nv-meta" / "split.yaml").read_text()
    assert split_yaml == (one / "energon" / ".nv-meta" / "split.yaml").read_text()


def _members(tar: Path) -> list[str]:
    import tarfile

    with tarfile.open(tar) as t:
        members = t.getmembers()
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644) for m in members)
    return [m.name for m in members]


def _json_member(root: Path, key: str) -> bytes:
    import tarfile

    for path in root.rglob("*.tar"):
        with tarfile.open(path) as t:
            try:
                f = t.extractfile(f"{key}.json")
            except KeyError:
                continue
            assert f is not None
            return f.read()
    raise AssertionError(key)


def _energon(*args: str) -> Any:
    import subprocess
    import sys

    code = "import sys; from megatron.energon.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)


def test_killed_shard_reruns_to_the_same_bytes(tmp_path: Path) -> None:
    make_media(str(tmp_path / "media"))
    dst = tmp_path / "caps"
    merged_dataset(str(tmp_path), str(dst), shards=1)
    args = ("--name", "caps", "--media-root", str(tmp_path / "media"), "--samples-per-shard", "2")
    args += ("--num-shards", "2")

    killed = neva("data", "export", "energon", str(dst), *args, "--shard-index", "0", env={CRASH_ENV: "3"})
    assert killed.returncode == 137
    assert not (dst / "energon" / "parts" / "00000-of-00002" / "DONE").exists()
    ok = neva("data", "export", "energon", str(dst), *args, "--shard-index", "1")
    assert ok.returncode == 0, ok.stderr
    early = neva("data", "export", "energon", str(dst), *args, "--finalize")
    assert (
        early.returncode == 1
        and "1 of 2 export shard(s) not finished" in early.stderr
        and ": 0;" in early.stderr
    )
    again = neva("data", "export", "energon", str(dst), *args, "--shard-index", "0")
    assert again.returncode == 0, again.stderr
    skipped = neva("data", "export", "energon", str(dst), *args, "--shard-index", "0")
    assert "already done" in skipped.stdout
    assert neva("data", "export", "energon", str(dst), *args, "--finalize").returncode == 0

    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("caps.json", "stats.json"):
        shutil.copy(dst / name, ref / name)
    export(str(ref), str(tmp_path / "media"), 1, "--samples-per-shard", "2")
    assert tars(dst / "energon") == tars(ref / "energon")
    assert len(load(str(dst / "energon"))) == len(EXPORTED)


def test_bad_options_and_order(tmp_path: Path) -> None:
    make_media(str(tmp_path / "media"))
    dst = tmp_path / "caps"
    base = ("data", "export", "energon", str(dst), "--name", "caps", "--media-root", str(tmp_path / "media"))
    missing = neva(*base)
    assert (
        missing.returncode == 2 and "no such folder" in missing.stderr
    )  # a wrong path: retrying cannot help
    dst.mkdir()
    before = neva(*base)
    assert before.returncode == 1 and "run `data merge" in before.stderr  # the merge may still be to come
    merged_dataset(str(tmp_path), str(dst), shards=1)
    for bad, says in (
        (("--split", "train=0"), "--split"),
        (("--split", "train=1,train=2"), "named twice"),
        (("--samples-per-shard", "0"), "--samples-per-shard"),
        (("--num-shards", "2", "--shard-index", "2"), "out of range"),
    ):
        r = neva(*base, *bad)
        assert r.returncode == 2 and says in r.stderr, r.stderr
        assert not (dst / "energon").exists()
    wrong = neva("data", "export", "energon", str(dst), "--name", "other", "--media-root", "x")
    assert wrong.returncode == 1 and "no finished merge" in wrong.stderr
    nothing = tmp_path / "empty-media"
    nothing.mkdir()
    assert neva(*base[:-1], str(nothing)).returncode == 0
    none = neva(*base[:-1], str(nothing), "--finalize")
    assert none.returncode == 2 and "none of its 9 records could be exported" in none.stderr


def test_llava_multi_turn_several_images(tmp_path: Path) -> None:
    media = tmp_path / "media"
    pictures = {f"p{i}.png": image_bytes("png", i) for i in range(3)}
    for name, data in pictures.items():
        storage.write_bytes(str(media / name), data)
    turns = [
        {"from": "human", "value": "<image>\n<image>\nWhat differs?"},
        {"from": "gpt", "value": "The colour."},
        {"from": "human", "value": "And the size?"},
        {"from": "gpt", "value": "The second is larger."},
    ]
    source = [
        {"id": "two.images", "image": ["p0.png", "p1.png"], "conversations": turns},
        {
            "id": 7,
            "image": "p2.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, turns[1]],
        },
        # the same id with other content is a distinct sample the merge keeps: its key is still unique
        {
            "id": "7",
            "image": "p0.png",
            "conversations": [{"from": "human", "value": "<image>\nAnd?"}, turns[1]],
        },
    ]
    (tmp_path / "llava.json").write_bytes(orjson.dumps(source))
    dst = tmp_path / "llava"
    r = neva("data", "convert", str(tmp_path / "llava.json"), str(dst), "--from", "llava", "--media", "image")
    assert r.returncode == 0, r.stderr
    assert neva("data", "merge", str(dst), "--name", "llava").returncode == 0
    args = ("data", "export", "energon", str(dst), "--name", "llava", "--media-root", str(media))
    assert neva(*args).returncode == 0
    done = neva(*args, "--finalize")
    assert done.returncode == 0, done.stderr
    samples = sorted(load(str(dst / "energon")), key=lambda s: s.__key__)
    assert [s.__key__ for s in samples] == ["0000000001-two_images", "0000000002-7", "0000000003-7"]
    assert samples[0].image == [pictures["p0.png"], pictures["p1.png"]]
    assert samples[0].context == ["<image>\n<image>\nWhat differs?", "And the size?"]
    assert samples[0].answers == ["The colour.", "The second is larger."]
    assert samples[1].image == pictures["p2.png"] and samples[2].image == pictures["p0.png"]
    assert samples[2].context == ["<image>\nAnd?"]
    crude = (dst / "energon" / ".nv-meta" / "crude.yaml").read_text()
    assert "CrudeWebdataset" in crude and "media: image" in crude


def test_media_type_from_bytes() -> None:
    for fmt, ext in (("png", "png"), ("jpeg", "jpg"), ("gif", "gif"), ("webp", "webp"), ("bmp", "bmp"),
                     ("tiff", "tiff")):  # fmt: skip
        assert media_type.extension(image_bytes(fmt, 1)[:64]) == ("image", ext)
    assert media_type.extension(b"\0\0\0\x20ftypisom\0\0\2\0isomiso2avc1mp41") == ("video", "mp4")
    assert media_type.extension(b"\0\0\0\x14ftypqt  \0\0\2\0qt  ") == ("video", "mov")
    assert media_type.extension(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm") == ("video", "webm")
    assert media_type.extension(b"RIFF\0\0\0\0AVI LIST") == ("video", "avi")
    assert media_type.extension(b"BM but not a bitmap") is None
    assert media_type.extension(b"hello") is None


def test_keys_and_splits_are_functions_of_the_record() -> None:
    assert energon.sample_key(3, "a.b/c__d__e") == "0000000003-a_b_c_d_e"
    assert energon.sample_key(12, "ünï") == "0000000012-n"
    assert energon.sample_key(1, "...") == "0000000001"
    split = energon.parse_split("train=98,val=2")
    assert split == (("train", 0.98), ("val", 0.02))
    picks = [energon.split_index(energon.sample_key(i, i), split) for i in range(1, 5001)]
    assert 50 <= picks.count(1) <= 150  # ~2% of 5000
    assert picks == [energon.split_index(energon.sample_key(i, i), split) for i in range(1, 5001)]


@pytest.mark.s3
def test_s3_media_and_destination(s3: str, tmp_path: Path) -> None:
    media = make_media(f"{s3}/media")
    dst = f"{s3}/out/caps"
    merged_dataset(f"{s3}/in", dst)
    export(dst, f"{s3}/media", 2, "--samples-per-shard", "3")
    assert storage.exists(f"{dst}/energon/.nv-meta/index.sqlite")
    assert storage.exists(f"{dst}/energon/train/000000.tar.idx")
    bucket = s3.split("://", 1)[1]
    samples = load(f"msc://_s3-{bucket}/out/caps/energon")
    assert sorted(s.image for s in samples) == sorted(media[p] for _, p, _, how in EXPORTED)

    local = tmp_path / "local"
    local.mkdir()
    for name in ("caps.json", "stats.json"):
        (local / name).write_bytes(storage.read_bytes(f"{dst}/{name}"))
    export(str(local), f"{s3}/media", 1, "--samples-per-shard", "3")
    remote = {t: storage.read_bytes(f"{dst}/energon/{t}") for t in tars(local / "energon")}
    assert remote == tars(local / "energon")


def test_plan_runs_the_export_after_the_merge(tmp_path: Path) -> None:
    make_media(str(tmp_path / "media"))
    merged_dataset(str(tmp_path), str(tmp_path / "unused"), shards=1)  # writes caps.csv
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"output: {tmp_path / 'out'}\n"
        "datasets:\n"
        "  - name: caps\n"
        f"    source: {tmp_path / 'caps.csv'}\n"
        "    from: captions\n"
        "    media: image\n"
        "    media_column: path\n"
        "    caption_column: caption\n"
        "    id_column: id\n"
        "    shards: 2\n"
        f"    media_root: {tmp_path / 'media'}\n"
        "    energon: {shards: 2, samples_per_shard: 3, split: 'train=9,val=1'}\n"
    )
    check = neva("plan", "check", str(plan))
    assert check.returncode == 0, check.stderr
    assert "data export energon" in check.stdout and "--finalize" in check.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(plan.read_text().replace("train=9,val=1", "train=x"))
    refused = neva("plan", "check", str(bad))
    assert refused.returncode == 2 and "datasets[0].energon.split" in refused.stderr

    run = neva("launch", "local", str(plan), "--workers", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[caps energon index] ok" in run.stdout
    root = tmp_path / "out" / "datasets" / "caps" / "energon"
    stats = json.loads((root / "stats.json").read_text())
    # the convert already rejected the row whose file is missing (the dataset's media_root); the export the
    # one whose bytes are no image
    assert (stats["records"], stats["exported"], stats["num_shards"]) == (len(ROWS) - 1, len(EXPORTED), 2)
    assert stats["rejected_by_reason"] == {"unknown media format": 1}
    assert len(load(str(root))) == stats["split_samples"]["train"]


def test_local_read_ahead_equals_the_threaded_reads(tmp_path: Path) -> None:
    """Local media asked of the kernel ahead (one thread) give what the object-store path's threads give,
    record for record and rejection for rejection, with no file left open: more records than are read
    ahead, a file named twice in one record, an empty file, a folder, a missing file, text, a wrong kind."""
    root = tmp_path / "media"
    (root / "dir.png").mkdir(parents=True)
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"no image\n")
    (root / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + bytes(40))
    images = {f"i{i}.png": image_bytes("png", i % 7) for i in range(energon.LOCAL_AHEAD * 2 + 5)}
    for name, data in images.items():
        (root / name).write_bytes(data)
    records: list[dict[str, Any]] = [{"image": name} for name in images]
    for odd in (
        "dir.png",
        "empty.png",
        "text.png",
        "clip.mp4",
        "gone.png",
        ["i1.png", "i1.png"],
        ["i2.png", "gone.png"],
    ):
        records.insert(len(records) // 2, {"image": odd})
    items = [(i, r) for i, r in enumerate(records)]
    fds = len(list(Path("/proc/self/fd").iterdir()))

    def outcome(got: Any) -> Any:
        return (got.reason, got.detail) if isinstance(got, Exception) else got

    local = [(i, outcome(m)) for i, m in energon._local_read_ahead(items, str(root))]
    threaded = [(i, outcome(m)) for i, m in energon._threaded_read_ahead(items, str(root))]
    assert local == threaded
    assert len(local) == len(records)
    reasons = sorted(m[0] for _, m in local if isinstance(m, tuple))
    assert reasons == sorted(
        ["media unreadable"] * 2 + ["unknown media format", "wrong media kind"] + ["media missing"] * 2
    )
    assert local[-1][1] == [("png", images[records[-1]["image"]])]
    assert len(list(Path("/proc/self/fd").iterdir())) == fds
    # a reader stopped half-way closes what it had opened ahead
    reader = energon._local_read_ahead(items, str(root))
    next(reader)
    reader.close()
    assert len(list(Path("/proc/self/fd").iterdir())) == fds
