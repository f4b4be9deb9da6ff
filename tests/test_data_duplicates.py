"""What the merge calls a duplicate: the same record (media and conversations), or for WebVid the same
videoid. An id repeated with other content is a distinct sample: kept, and counted; ids compare as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from conftest import neva
from neva_prep.data.convert import convert_shard
from neva_prep.data.merge import merge_shards
from neva_prep.data.records import ConvertOptions

LLAVA = ConvertOptions("llava", "image")


def rec(rid: Any, image: str, question: str, answer: str = "An answer.") -> dict[str, Any]:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": rid, "image": image, "conversations": turns}


# LLaVA-v1.5-mix665k's shape: the id is the image stem, and one image carries several conversations.
RECORDS = [
    rec("000000033471", "coco/train2017/000000033471.jpg", "What colour is the bus?"),
    rec("000000033471", "coco/train2017/000000033471.jpg", "How many people?"),  # same id, other content
    rec("000000052846", "coco/train2017/000000052846.jpg", "What is the cat doing?"),
    rec("000000033471", "coco/train2017/000000033471.jpg", "What colour is the bus?"),  # an exact duplicate
    rec(42, "a.jpg", "Int id?"),
    rec("42", "b.jpg", "Str id?"),  # the id 42 again, as text: a repeated id, kept with its type
    {**rec("other", "a.jpg", "Int id?"), "extra": 1},  # row 5's media and conversations: a duplicate
    rec("000000033471_1", "c.jpg", "Already suffixed?"),  # an id `--unique-ids suffix` must not reuse
    rec("000000033471", "coco/train2017/000000033471.jpg", "Anything else?"),
]


def test_repeated_ids_are_kept_exact_duplicates_rejected(tmp_path: Path) -> None:
    src = tmp_path / "mix.json"
    src.write_bytes(orjson.dumps(RECORDS, option=orjson.OPT_INDENT_2))
    outputs = []
    for n in (1, 3):
        dst = tmp_path / f"out-{n}"
        for i in range(n):
            convert_shard(str(src), str(dst), options=LLAVA, num_shards=n, shard_index=i)
        r = neva("data", "merge", str(dst), "--name", "llava")
        assert r.returncode == 0, r.stderr
        assert "9 input rows, 7 records, 2 rejected" in r.stdout
        assert "repeated ids: 3 records share their id with an earlier record" in r.stdout
        outputs.append(tuple((dst / f).read_bytes() for f in ("llava.json", "rejects.jsonl")))
    assert outputs[0] == outputs[1]  # byte-identical whatever the shard count

    dst = tmp_path / "out-1"
    records = orjson.loads((dst / "llava.json").read_bytes())
    assert [r["id"] for r in records] == [
        "000000033471",
        "000000033471",
        "000000052846",
        42,
        "42",
        "000000033471_1",
        "000000033471",
    ]
    assert records[1]["conversations"][0]["value"].endswith("How many people?")
    rejects = [orjson.loads(x) for x in (dst / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [(4, "duplicate record"), (7, "duplicate record")]
    stats = orjson.loads((dst / "stats.json").read_bytes())
    assert (stats["converted"], stats["repeated_ids"], stats["rejected_by_reason"]) == (
        7,
        3,
        {"duplicate record": 2},
    )


def test_unique_ids_suffix_renames_later_repeats_only_on_request(tmp_path: Path) -> None:
    src = tmp_path / "mix.json"
    src.write_bytes(orjson.dumps(RECORDS))
    dst = tmp_path / "out"
    convert_shard(str(src), str(dst), options=LLAVA, num_shards=2, shard_index=0)
    convert_shard(str(src), str(dst), options=LLAVA, num_shards=2, shard_index=1)
    r = neva("data", "merge", str(dst), "--name", "llava", "--unique-ids", "suffix")
    assert r.returncode == 0, r.stderr
    assert "3 renamed ID_k" in r.stdout
    records = orjson.loads((dst / "llava.json").read_bytes())
    ids = [r["id"] for r in records]
    # the first keeps its id and type; `000000033471_1` is taken, so the repeats get _2 and _3
    assert ids == [
        "000000033471",
        "000000033471_2",
        "000000052846",
        42,
        "42_1",
        "000000033471_1",
        "000000033471_3",
    ]
    assert len({str(i) for i in ids}) == len(ids)
    assert [r.get("conversations") for r in records] == [
        r["conversations"] for i, r in enumerate(RECORDS) if i not in (3, 6)
    ]
    r = neva("data", "merge", str(dst), "--name", "llava", "--unique-ids", "drop")
    assert r.returncode == 2 and "--unique-ids" in r.stderr


def test_captions_with_several_captions_per_image_are_all_kept(tmp_path: Path) -> None:
    """COCO gives five captions per image: the id (the path stem) repeats, each caption is a sample."""
    src = tmp_path / "coco.csv"
    src.write_text(
        "path,text\n"
        "coco/1.jpg,A man riding a bike.\n"
        "coco/1.jpg,Someone on a bicycle in the street.\n"
        "coco/2.jpg,A plate of food.\n"
        "coco/1.jpg,A man riding a bike.\n",  # the same caption again: a duplicate
        encoding="utf-8",
    )
    dst = tmp_path / "out"
    options = ConvertOptions("captions", "image", media_column="path", caption_column="text")
    convert_shard(str(src), str(dst), options=options)
    result = merge_shards(str(dst), name="coco")
    assert (result.converted, result.repeated_ids, result.rejected_by_reason) == (
        3,
        1,
        {"duplicate record": 1},
    )


def test_webvid_repeated_videoid_stays_a_duplicate(tmp_path: Path) -> None:
    from test_data_convert_merge import webvid_csv

    src = tmp_path / "w.csv"
    src.write_bytes(webvid_csv([("7", "d", "first caption"), ("7", "d", "another caption"), ("8", "d", "x")]))
    dst = tmp_path / "out"
    convert_shard(str(src), str(dst), options=ConvertOptions("webvid", "video"))
    result = merge_shards(str(dst), name="w")
    assert (result.converted, result.repeated_ids, result.rejected_by_reason) == (2, 0, {"duplicate id": 1})


def test_a_question_without_answer_is_rejected_by_convert_and_validate(tmp_path: Path) -> None:
    question_only = {
        "id": "q",
        "image": "q.jpg",
        "conversations": [{"from": "human", "value": "<image>\nWhy?"}],
    }
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps([rec("a", "a.jpg", "Q?"), question_only]))
    dst = tmp_path / "out"
    r = neva("data", "convert", str(src), str(dst), "--from", "llava", "--media", "image")
    assert r.returncode == 0 and "no answer: 1" in r.stdout
    r = neva("data", "validate", str(src), "--media", "image")
    assert r.returncode != 0 and "no answer: 1" in r.stdout
    lines = [orjson.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [(x["row"], x["reason"]) for x in lines] == [(2, "no answer")]
