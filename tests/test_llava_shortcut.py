"""`records.llava_shortcut` accepts only what the row path accepts and builds the same record, key, lengths.

The shortcut is how `data convert --from llava` checks the common record shape in one pass; the ONE validator
stays `record_builder`. Random records (valid, broken, unicode, placeholders, odd types and key orders) go
through both; whatever the row path rejects, the shortcut must hand back to it.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from neva_prep.data import shards
from neva_prep.data.readers.base import Row
from neva_prep.data.records import ConvertOptions, RecordError, encode_record, llava_shortcut, record_builder
from neva_prep.data.stats import record_lengths

_WORDS = st.lists(st.sampled_from(["a", "Q?", " ", "\n", "é", '"', "\\", "x"]), min_size=1, max_size=5).map(
    lambda s: "w" + "".join(s)
)
_MUTATIONS = (
    ("value", " "),
    ("value", ""),
    ("value", "\u3000"),
    ("value", "<image> again"),
    ("value", "<video> again"),
    ("value", 5),
    ("from", "gpt"),
    ("from", "x"),
    ("id", ""),
    ("id", " "),
    ("id", True),
    ("id", 1.5),
    ("id", None),
    ("path", ""),
    ("path", " "),
    ("path", "/abs.jpg"),
    ("path", "\\x"),
    ("path", "a/../b"),
    ("path", ".."),
    ("path", "C:/x"),
    ("path", "s3://b/k"),
    ("path", "a:b/c.jpg"),
    ("path", ["a.jpg"]),
    ("path", 3),
    ("extra", "model"),
    ("extra", "image"),
    ("extra", "video"),
    ("order", None),
    ("turn_extra", None),
    ("drop_turn", None),
    ("no_answer", None),
    ("no_placeholder", None),
)


@st.composite
def _record(draw: st.DrawFn) -> Any:
    """A valid LLaVA record with image or video, then at most one thing changed (`_MUTATIONS`)."""
    key = draw(st.sampled_from(["image", "video"]))
    n = 2 * draw(st.integers(1, 3))
    turns: list[dict[str, Any]] = [{"from": ("human", "gpt")[i % 2], "value": draw(_WORDS)} for i in range(n)]
    turns[0]["value"] = draw(st.sampled_from(["<{}>\n{}", "{1}\n<{0}>"])).format(key, turns[0]["value"])
    record: dict[str, Any] = {
        "id": draw(st.sampled_from(["000000123", "x y", 7, 0])),
        key: draw(st.sampled_from(["coco/1.jpg", "v/2.mp4", "a b/c.jpg"])),
        "conversations": turns,
    }
    if draw(st.booleans()):
        return record
    what, to = draw(st.sampled_from(_MUTATIONS))
    i = draw(st.integers(0, n - 1))
    if what in ("value", "from"):
        turns[i][what] = to
    elif what == "id":
        record["id"] = to
    elif what == "path":
        record[key] = to
    elif what == "extra":
        record[str(to)] = "" if to == "model" else "d/e.jpg"
    elif what == "order":
        turns[i] = {"value": turns[i]["value"], "from": turns[i]["from"]}
    elif what == "turn_extra":
        turns[i]["weight"] = 1
    elif what == "drop_turn":
        del turns[i]
    elif what == "no_answer":
        del turns[1:]
    else:
        turns[0]["value"] = turns[0]["value"].replace(f"<{key}>", "")
    return record


@settings(max_examples=400, deadline=None)
@given(record=_record(), media=st.sampled_from(["image", "video"]))
def test_shortcut_equals_row_path(record: dict[str, Any], media: str) -> None:
    value = orjson.loads(orjson.dumps(record))
    done = llava_shortcut(media)(orjson.loads(orjson.dumps(record)))
    build = record_builder(ConvertOptions("llava", media))
    try:
        expected = build(Row("x.json", 1, value, None, None))
    except RecordError:
        assert done is None  # a reject is always the row path's to explain
        return
    if done is None:
        return  # an accepted shape the shortcut leaves to the row path (lists of media, extra keys, ...)
    got, *lengths = done
    assert orjson.dumps(got) == encode_record(expected)
    assert shards.id_key(got["id"]) == shards.id_key(expected["id"])
    assert shards.content_key(got, media) == shards.content_key(expected, media)
    assert tuple(lengths) == record_lengths(expected)


def test_shortcut_takes_the_common_shape() -> None:
    # the shape of nearly every LLaVA record: the shortcut must take it, or it saves nothing
    record = {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    }
    done = llava_shortcut("video")(record)
    assert done is not None
    got, turns, human, gpt = done
    assert list(got) == ["id", "video", "conversations"]
    assert got["conversations"][0]["value"].startswith("<video>\n")
    assert (turns, human, gpt) == record_lengths(got)
    assert llava_shortcut("image")(record) is not None
