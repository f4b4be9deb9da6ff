"""The one record validator, rule by rule, and the builders that turn rows into records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neva_prep.data.prompts import choose_prompt, load_prompts
from neva_prep.data.readers.base import Row
from neva_prep.data.records import (
    WEBVID_PROMPT,
    ConvertOptions,
    RecordError,
    build_record,
    default_id,
    encode_record,
    media_paths,
    validate_record,
)
from neva_prep.errors import BadInput

HUMAN, GPT = "human", "gpt"


def conv(*values: str) -> list[dict[str, str]]:
    return [{"from": HUMAN if i % 2 == 0 else GPT, "value": v} for i, v in enumerate(values)]


def rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "a",
        "image": "x/1.jpg",
        "conversations": conv("<image>\nDescribe.", "A cat."),
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def row(value: Any, error: str | None = None) -> Row:
    return Row("in.csv", 1, value, "raw", error)


def reason(record: Any, media: str = "image") -> str:
    with pytest.raises(RecordError) as info:
        validate_record(record, media)
    assert info.value.detail  # always one human line
    return info.value.reason


def test_good_records_pass() -> None:
    validate_record(rec(), "image")
    validate_record(
        rec(image=["a.jpg", "b/c.jpg"], conversations=conv("<image><image> same?", "yes")), "image"
    )
    validate_record(rec(id=7), "image")  # integer ids are kept as given (LLaVA files use them)
    multi = conv("<image>\nWhat is it?", "A cat.", "What colour?", "Black.")
    validate_record(rec(conversations=multi), "image")  # multi-turn kept for llava inputs
    validate_record(rec(image=..., conversations=conv("Hi", "Hello")), "image")  # text-only: NeVA accepts
    validate_record(
        {"id": "v", "video": "d/1.mp4", "conversations": conv("Summarize.\n<video>", "x")}, "video"
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([1, 2], "non-object record"),
        ("text", "non-object record"),
        (rec(id=...), "missing field 'id'"),
        (rec(id=True), "wrong type"),
        (rec(id=1.5), "wrong type"),
        (rec(id=" "), "empty id"),
        (rec(conversations=...), "missing field 'conversations'"),
        (rec(conversations="hi"), "wrong type"),
        (rec(conversations=[]), "empty conversations"),
        (rec(conversations=conv("<image>\nDescribe.")), "no answer"),  # a question alone trains nothing
        (rec(image=..., conversations=conv("Hi")), "no answer"),
        (rec(conversations=["<image>", "x"]), "wrong type"),
        (rec(conversations=[{"value": "<image>"}]), "missing field 'from'"),
        (rec(conversations=[{"from": "human"}]), "missing field 'value'"),
        (rec(conversations=[{"from": "gpt", "value": "<image>"}]), "turn order"),
        (rec(conversations=[*conv("<image>", "a", "b")[:2], {"from": "gpt", "value": "c"}]), "turn order"),
        (rec(conversations=conv("<image>", 3)), "wrong type"),  # type: ignore[arg-type]
        (rec(conversations=conv("<image>", "  ")), "empty turn"),
        (rec(conversations=conv("Describe.", "A cat.")), "placeholder count"),  # would train without media
        (rec(conversations=conv("<image><image>", "A cat.")), "placeholder count"),
        (rec(image=["a.jpg", "b.jpg"]), "placeholder count"),
        (rec(image=..., conversations=conv("<image>", "x")), "placeholder count"),
        (rec(conversations=conv("<image>\n<video>", "x")), "wrong placeholder"),
        (rec(video="v.mp4"), "wrong media key 'video'"),
        (rec(image=""), "empty media path"),
        (rec(image=[]), "empty media path"),
        (rec(image=3), "wrong type"),
        (rec(image=["a.jpg", 3], conversations=conv("<image><image>", "x")), "wrong type"),
        (rec(image="/data/x.jpg"), "path escapes root"),
        (rec(image="../x.jpg"), "path escapes root"),
        (rec(image="a/../../x.jpg"), "path escapes root"),
        (rec(image="a\\..\\x.jpg"), "path escapes root"),
        (rec(image="C:/x.jpg"), "path escapes root"),
        (rec(image="s3://bucket/x.jpg"), "path escapes root"),
    ],
)
def test_each_rule_rejects(record: Any, expected: str) -> None:
    assert reason(record) == expected


def test_video_rules() -> None:
    assert reason(rec(image=..., conversations=conv("Hi", "Hello")), "video") == "text-only record (video)"
    assert reason(rec(), "video") == "wrong media key 'image'"
    ok = {"id": "v", "video": ["a.mp4"], "conversations": conv("<video>\nx", "y")}
    assert media_paths(ok, "video") == ["a.mp4"]
    assert media_paths(rec(image=...), "image") == []


def test_encode_record_is_canonical_and_compact() -> None:
    record = {"conversations": conv("<image>\nä", "b"), "extra": 1, "image": "x.jpg", "id": "1"}
    out = encode_record(record)
    assert out == (
        b'{"id":"1","image":"x.jpg","conversations":[{"from":"human","value":"<image>\\n\xc3\xa4"},'
        b'{"from":"gpt","value":"b"}],"extra":1}'
    )
    assert orjson.loads(out) == record


# --- builders ---------------------------------------------------------------------------------------------

WEBVID = ConvertOptions(source_format="webvid", media="video")


def test_webvid_seed_row_matches_the_nemo_guide() -> None:
    # The VideoNeVA data-preparation guide (NeMo Framework user guide) shows this record, with
    # "video": "{video_folder}/076101_076150/1043215450.mp4" and "id": 0; NeMo's loader wants the path
    # relative to video_folder, and ids must be unique, so the WebVid videoid is the id.
    caption = (
        "Oaxaca de juarez, mexico - circa 1970: mexican tourists on the square of the cathedral of our "
        "lady of the assumption in the city of oaxaca. archival of mexico in oaxaca state in the 1970s."
    )
    value = {"videoid": "1043215450", "contentUrl": "u", "page_dir": "076101_076150", "name": caption}
    record = build_record(row(value), WEBVID)
    assert record == {
        "id": "1043215450",
        "video": "076101_076150/1043215450.mp4",
        "conversations": [
            {
                "from": "human",
                "value": "<video>\nWrite a terse but informative summary of the following video clip.",
            },
            {"from": "gpt", "value": caption},
        ],
    }
    validate_record(record, "video")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"videoid": "1", "page_dir": "p"}, "missing field 'name'"),
        ({"videoid": "1", "page_dir": "p", "name": ""}, "missing field 'name'"),
        ({"videoid": "", "page_dir": "p", "name": "c"}, "missing field 'videoid'"),
        ({"videoid": "1", "page_dir": "..", "name": "c"}, "path escapes root"),
        ({"videoid": "1", "page_dir": "/abs", "name": "c"}, "path escapes root"),
        ({"videoid": "1", "page_dir": "p", "name": "a <video> b"}, "placeholder count"),
    ],
)
def test_webvid_bad_rows(value: dict[str, str], expected: str) -> None:
    with pytest.raises(RecordError) as info:
        build_record(row(value), WEBVID)
    assert info.value.reason == expected


def test_unreadable_rows_raise_their_reason() -> None:
    with pytest.raises(RecordError) as info:
        build_record(row(None, "malformed csv row: 3 fields, the header has 5"), WEBVID)
    assert (info.value.reason, info.value.detail) == ("malformed csv row", "3 fields, the header has 5")


def test_bad_options_are_bad_input() -> None:
    with pytest.raises(BadInput, match="--media video"):
        build_record(row({}), ConvertOptions("webvid", "image"))
    with pytest.raises(BadInput, match="--media-column"):
        build_record(row({}), ConvertOptions("captions", "image"))
    with pytest.raises(BadInput, match="--from"):
        build_record(row({}), ConvertOptions("tsv", "image"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ConvertOptions("llava", "image", prompts="image_brief"), "--prompts is for --from captions"),
        (ConvertOptions("llava", "image", media_column="path"), "--media-column is for --from captions"),
        (ConvertOptions("llava", "video", id_column="id"), "--id-column is for --from captions"),
        (ConvertOptions("webvid", "video", caption_column="name"), "--caption-column is for --from captions"),
    ],
)
def test_options_a_format_cannot_use_are_refused(options: ConvertOptions, message: str) -> None:
    """Never ignore an option: the user meant something by it."""
    with pytest.raises(BadInput, match=message):
        build_record(row({}), options)


def test_webvid_honours_prompts() -> None:
    value = {"videoid": "1043215450", "page_dir": "076101_076150", "name": "A beach"}
    default = build_record(row(value), WEBVID)["conversations"][0]["value"]
    assert default == "<video>\n" + WEBVID_PROMPT  # the VideoNeVA guide's prompt stays the default
    listed = load_prompts("video_brief", "video")
    chosen = build_record(row(value), ConvertOptions("webvid", "video", prompts="video_brief"))
    assert chosen["conversations"][0]["value"] == "<video>\n" + choose_prompt(listed, "1043215450")
    prompts: set[str] = set()
    for vid in range(40):
        value = {"videoid": str(vid), "page_dir": "p", "name": "c"}
        record = build_record(row(value), ConvertOptions("webvid", "video", prompts="video_brief"))
        prompts.add(record["conversations"][0]["value"].removeprefix("<video>\n"))
    assert len(prompts) > 1 and prompts <= set(listed)


CAPTIONS = ConvertOptions("captions", "image", media_column="path", caption_column="text")


def test_captions_record_and_default_id() -> None:
    record = build_record(row({"path": "00000/000000012.jpg", "text": "a dog", "x": 1}), CAPTIONS)
    assert record["id"] == "00000/000000012" == default_id("00000/000000012.jpg")
    assert record["image"] == "00000/000000012.jpg"
    human = record["conversations"][0]["value"]
    assert human.startswith("<image>\n") and human.count("<image>") == 1
    assert record["conversations"][1] == {"from": "gpt", "value": "a dog"}
    validate_record(record, "image")
    # the prompt depends on the id only: the same row always gets the same prompt
    again = build_record(row({"path": "00000/000000012.jpg", "text": "another caption"}), CAPTIONS)
    assert again["conversations"][0] == record["conversations"][0]
    # a stem that is blank would be an empty id: the whole path is the id then
    assert default_id(" .jpg") == " .jpg" and default_id("a/b.tar.gz") == "a/b.tar"


def test_captions_id_column_and_video() -> None:
    options = ConvertOptions("captions", "video", media_column="path", caption_column="text", id_column="key")
    record = build_record(row({"path": "v/1.mp4", "text": "t", "key": 17}), options)
    assert record["id"] == "17" and record["video"] == "v/1.mp4"
    assert record["conversations"][0]["value"].startswith("<video>\n")
    validate_record(record, "video")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"text": "t"}, "missing field 'path'"),
        ({"path": None, "text": "t"}, "missing field 'path'"),
        ({"path": "a.jpg", "text": None}, "missing field 'text'"),
        ({"path": "a.jpg", "text": 5}, "wrong type"),
        ({"path": 5, "text": "t"}, "wrong type"),
        ({"path": "../a.jpg", "text": "t"}, "path escapes root"),
        ({"path": "a.jpg", "text": "see <image>"}, "placeholder count"),
        ([1], "non-object record"),
    ],
)
def test_captions_bad_rows(value: Any, expected: str) -> None:
    with pytest.raises(RecordError) as info:
        build_record(row(value), CAPTIONS)
    assert info.value.reason == expected


def test_llava_records_are_retargeted() -> None:
    image = {"id": 1, "image": "coco/1.jpg", "conversations": conv("Q?\n<image>", "A.", "More?", "No.")}
    to_video = build_record(row(image), ConvertOptions("llava", "video"))
    assert to_video == {
        "id": 1,
        "video": "coco/1.jpg",
        "conversations": conv("Q?\n<video>", "A.", "More?", "No."),
    }
    assert image["conversations"][0]["value"] == "Q?\n<image>"  # the input is not mutated
    back = build_record(row(to_video), ConvertOptions("llava", "image"))
    assert back == image
    assert encode_record(back).startswith(b'{"id":1,"image":"coco/1.jpg","conversations":')


def test_llava_rejects() -> None:
    text_only = {"id": "t", "conversations": conv("Hi", "Hello")}
    assert build_record(row(text_only), ConvertOptions("llava", "image")) == text_only
    with pytest.raises(RecordError, match="text-only"):
        build_record(row(text_only), ConvertOptions("llava", "video"))
    both = {"id": "b", "image": "a.jpg", "video": "a.mp4", "conversations": conv("<image>", "x")}
    with pytest.raises(RecordError, match="both image and video"):
        build_record(row(both), ConvertOptions("llava", "image"))
    with pytest.raises(RecordError, match="placeholder count"):
        build_record(row(rec(conversations=conv("no placeholder", "x"))), ConvertOptions("llava", "image"))
    with pytest.raises(RecordError, match="non-object"):
        build_record(row([1]), ConvertOptions("llava", "image"))


def test_video_chatgpt_rows() -> None:
    record = build_record(
        row({"video_id": "v_abc", "q": "What?", "a": "This."}), ConvertOptions("llava", "video")
    )
    assert record == {"id": "v_abc", "video": "v_abc.mp4", "conversations": conv("<video>\nWhat?", "This.")}


_pieces = [*"ab./\\ <>:é", "..", "<image>", "<video>", "\n"]
_cell = st.lists(st.sampled_from(_pieces), max_size=6).map("".join)


@settings(max_examples=200, deadline=None)
@given(videoid=_cell, page_dir=_cell, name=_cell, media=st.sampled_from(["image", "video"]))
def test_built_records_always_pass_the_validator(videoid: str, page_dir: str, name: str, media: str) -> None:
    """The builders check their fields directly (fast); whatever they accept, the one validator accepts."""
    captions = ConvertOptions("captions", media, media_column="m", caption_column="c")
    with_id = ConvertOptions("captions", media, media_column="m", caption_column="c", id_column="i")
    cases = [(captions, {"m": page_dir, "c": name}), (with_id, {"m": page_dir, "c": name, "i": videoid})]
    if media == "video":
        cases.append((WEBVID, {"videoid": videoid, "page_dir": page_dir, "name": name}))
    for options, value in cases:
        try:
            record = build_record(row(value), options)
        except RecordError:
            continue
        validate_record(record, media)
