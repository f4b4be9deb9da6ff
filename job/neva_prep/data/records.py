"""NeVA / VideoNeVA records: building them from input rows, and the ONE validator every path uses.

A record is `{"id", "image"|"video", "conversations": [{"from": "human"|"gpt", "value": str}, ...]}` (see
shared/nemo-format.md §4). Rules, each enforced here and nowhere else:
- `conversations` is a non-empty list of `{"from", "value"}` objects alternating human/gpt, starting with
  human, every value a non-empty string (multi-turn is kept: only the `plain` template wants exactly 2), with
  at least one gpt turn (NeVA's loss is on the answers: a question alone trains nothing);
- the number of placeholders (`<image>` / `<video>`) equals the number of media files and the other media
  type's placeholder never appears (a record whose placeholder is missing silently trains without media);
- media paths are non-empty relative paths without `..` (NeMo joins them with `os.path.join`, so an absolute
  path silently escapes the media folder); text-only records are kept for image and refused for video;
- `id` is present: a non-empty string, or an integer (LLaVA files use both; kept as given, never converted).
  Caption-derived ids are always strings. Ids need not be unique (LLaVA's id is the image stem, shared by
  the image's conversations): duplicates are found by the merge, by `DUPLICATE_KEY`.
Nothing is fixed silently: a bad record raises `RecordError` with a short stable `reason` (counted in the
stats) and a one-line `detail` naming the field.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from neva_prep.data.prompts import choose_prompt, load_prompts
from neva_prep.errors import BadInput

if TYPE_CHECKING:
    from neva_prep.data.readers.base import Row

MEDIA = ("image", "video")
PLACEHOLDER = {"image": "<image>", "video": "<video>"}
OTHER = {"image": "video", "video": "image"}
WEBVID_PROMPT = "Write a terse but informative summary of the following video clip."
DUPLICATE_KEY = {"webvid": "id", "captions": "record", "llava": "record"}
"""What makes a later record a duplicate, by `--from`: the same media and conversations ("record"; an id
repeated with other content is a distinct sample and is kept), or, for WebVid, whose `videoid` names one
video, the same id."""
_DRIVE = re.compile(r"^[A-Za-z]:|^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class ConvertOptions:
    """How input rows become records (the `data convert` options that affect records)."""

    source_format: str
    media: str  # "image" | "video"
    media_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    prompts: str | None = None  # built-in list name or URL; None = the default list for `media`


class RecordError(Exception):
    """A row that cannot become a record: `reason` is a short stable category, `detail` one human line."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail or reason


def row_error(row: Row) -> RecordError:
    """The `RecordError` for a row that could not be read (`row.error` is ``"reason: detail"``)."""
    reason, _, detail = (row.error or "unreadable row").partition(": ")
    return RecordError(reason, detail or None)


# --- validation -------------------------------------------------------------------------------------------


def check_path(path: Any, field: str) -> None:
    """A media path must be a non-empty relative path that stays inside the media folder."""
    if not isinstance(path, str):
        raise RecordError("wrong type", f"field {field!r} must be a string, got {type(path).__name__}")
    if not path or path.isspace():
        raise RecordError("empty media path", f"field {field!r} is empty")
    if path[0] in "/\\" or (":" in path and _DRIVE.match(path)):
        raise RecordError("path escapes root", f"field {field!r} is absolute: {path[:200]!r}")
    if ".." in path and ".." in path.replace("\\", "/").split("/"):
        raise RecordError("path escapes root", f"field {field!r} contains '..': {path[:200]!r}")


def media_paths(record: dict[str, Any], media: str) -> list[str]:
    """The media files of a (validated) record, as a list; empty for a text-only record."""
    value = record.get(media)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def validate_record(record: Any, media: str) -> None:
    """Raise `RecordError` unless `record` is a record NeVA (`image`) / VideoNeVA (`video`) trains on."""
    if not isinstance(record, dict):
        raise RecordError("non-object record", f"expected a JSON object, got {type(record).__name__}")
    other = OTHER[media]
    if other in record:
        raise RecordError(f"wrong media key '{other}'", f"record has {other!r}, expected {media!r} (--media)")
    if "id" not in record:
        raise RecordError("missing field 'id'", "record has no 'id'")
    rid = record["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RecordError("wrong type", f"field 'id' must be str or int, got {type(rid).__name__}")
    if isinstance(rid, str) and not rid.strip():
        raise RecordError("empty id", "field 'id' is empty")

    if media in record:
        value = record[media]
        if isinstance(value, str):
            check_path(value, media)
            n_media = 1
        elif isinstance(value, list):
            if not value:
                raise RecordError("empty media path", f"field {media!r} is an empty list")
            for i, path in enumerate(value):
                check_path(path, f"{media}[{i}]")
            n_media = len(value)
        else:
            raise RecordError(
                "wrong type", f"field {media!r} must be a string or a list, got {type(value).__name__}"
            )
    elif media == "video":
        raise RecordError("text-only record (video)", "record has no 'video' (VideoNeVA needs media)")
    else:
        n_media = 0

    if "conversations" not in record:
        raise RecordError("missing field 'conversations'", "record has no 'conversations'")
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise RecordError("wrong type", f"field 'conversations' must be a list, got {type(turns).__name__}")
    if not turns:
        raise RecordError("empty conversations", "field 'conversations' is empty")
    placeholder, other_placeholder = PLACEHOLDER[media], PLACEHOLDER[other]
    count = 0
    expected = "human"
    for turn in turns:  # fast path; the first bad turn is explained by _check_turns
        text = turn.get("value") if type(turn) is dict else None
        if (
            type(text) is not str
            or turn.get("from") != expected
            or not text
            or text.isspace()
            or other_placeholder in text
        ):
            _check_turns(turns, media)
        count += text.count(placeholder)  # type: ignore[union-attr]
        expected = "gpt" if expected == "human" else "human"
    if len(turns) < 2:  # turns alternate from human: a gpt turn exists iff there are two
        raise RecordError("no answer", "conversations has no gpt turn (nothing for NeVA to train on)")
    if count != n_media:
        raise RecordError(
            "placeholder count", f"{count} {placeholder} in conversations for {n_media} media file(s)"
        )


def _check_turns(turns: list[Any], media: str) -> NoReturn:
    """Raise the `RecordError` that explains the first bad turn."""
    other_placeholder = PLACEHOLDER[OTHER[media]]
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError("wrong type", f"conversations[{i}] is a {type(turn).__name__}, not an object")
        if "from" not in turn:
            raise RecordError("missing field 'from'", f"conversations[{i}] has no 'from'")
        if "value" not in turn:
            raise RecordError("missing field 'value'", f"conversations[{i}] has no 'value'")
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise RecordError(
                "turn order", f"conversations[{i}].from is {turn['from']!r}, expected {expected!r}"
            )
        text = turn["value"]
        if not isinstance(text, str):
            raise RecordError(
                "wrong type", f"conversations[{i}].value must be a string, got {type(text).__name__}"
            )
        if not text.strip():
            raise RecordError("empty turn", f"conversations[{i}].value is empty")
        if other_placeholder in text:
            raise RecordError(
                "wrong placeholder", f"conversations[{i}].value has {other_placeholder} (--media {media})"
            )
    raise AssertionError("unreachable: a turn failed the fast check")  # pragma: no cover


# --- encoding ---------------------------------------------------------------------------------------------


def encode_record(record: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with keys in canonical order: id, image|video, conversations, then the others."""
    head = ("id", "image", "video", "conversations")
    ordered = {k: record[k] for k in head if k in record}
    if len(ordered) != len(record):
        ordered.update((k, v) for k, v in record.items() if k not in ordered)
    return orjson.dumps(ordered)


# --- building ---------------------------------------------------------------------------------------------


def _conversation(human: str, gpt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


def _field(value: dict[str, Any], column: str) -> Any:
    field = value.get(column)
    if field is None or field == "" or (type(field) is str and field.isspace()):
        raise RecordError(f"missing field '{column}'", f"field {column!r} is missing or empty")
    return field


def _caption(value: dict[str, Any], column: str) -> str:
    caption = _field(value, column)
    if type(caption) is not str:
        raise RecordError("wrong type", f"field {column!r} must be a string, got {type(caption).__name__}")
    if "<" in caption and ("<image>" in caption or "<video>" in caption):
        raise RecordError("placeholder count", f"field {column!r} contains a media placeholder")
    return caption


def _refuse_column_options(options: ConvertOptions, why: str) -> None:
    """An option the format cannot use is refused, never ignored: the user meant something by it."""
    given = {
        "--media-column": options.media_column,
        "--caption-column": options.caption_column,
        "--id-column": options.id_column,
    }
    for flag, value in given.items():
        if value is not None:
            raise BadInput(f"{flag} is for --from captions; --from {options.source_format} {why}")


def _webvid_options(options: ConvertOptions) -> None:
    if options.media != "video":
        raise BadInput("--from webvid makes video records: use --media video")
    _refuse_column_options(options, "reads the columns videoid, name and page_dir")


def _webvid_builder(options: ConvertOptions) -> Callable[[Row], dict[str, Any]]:
    if options.prompts is None:
        guide = "<video>\n" + WEBVID_PROMPT  # the VideoNeVA guide's prompt, for every record

        def human(videoid: str) -> str:
            return guide
    else:
        prompts = load_prompts(options.prompts, "video")

        def human(videoid: str) -> str:
            return "<video>\n" + choose_prompt(prompts, videoid)

    def build(row: Row) -> dict[str, Any]:
        value = row.value
        videoid = _field(value, "videoid")
        page_dir = _field(value, "page_dir")
        caption = _caption(value, "name")
        path = f"{page_dir}/{videoid}.mp4"
        check_path(path, "page_dir")
        return {"id": videoid, "video": path, "conversations": _conversation(human(videoid), caption)}

    return build


def default_id(media_path: str) -> str:
    """The id of a caption row without `--id-column`: the media path without its extension.

    It is readable, unique whenever the paths are (img2dataset's `00000/000000012.jpg` -> `00000/000000012`),
    and a function of the row alone.
    """
    root, ext = posixpath.splitext(media_path)
    return root if ext and root.strip() else media_path


def _captions_options(options: ConvertOptions) -> None:
    if not options.media_column or not options.caption_column:
        raise BadInput("--from captions needs --media-column and --caption-column")


def _captions_builder(options: ConvertOptions) -> Callable[[Row], dict[str, Any]]:
    assert options.media_column and options.caption_column  # check_options
    media, media_col, caption_col, id_col = (
        options.media,
        options.media_column,
        options.caption_column,
        options.id_column,
    )
    prompts = load_prompts(options.prompts, media)
    prefix = PLACEHOLDER[media] + "\n"

    def build(row: Row) -> dict[str, Any]:
        value = row.value
        if not isinstance(value, dict):
            raise RecordError("non-object record", f"expected a JSON object, got {type(value).__name__}")
        path = _field(value, media_col)
        check_path(path, media_col)
        caption = _caption(value, caption_col)
        if id_col is None:
            rid = default_id(path)
        else:
            rid = _field(value, id_col)
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise RecordError("wrong type", f"field {id_col!r} must be a string or an integer")
            rid = str(rid)
        human = prefix + choose_prompt(prompts, rid)
        return {"id": rid, media: path, "conversations": _conversation(human, caption)}

    return build


def _retarget_turns(turns: Any, old: str, new: str) -> Any:
    if not isinstance(turns, list):
        return turns
    out: list[Any] = []
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str) and old in turn["value"]:
            turn = {**turn, "value": turn["value"].replace(old, new)}
        out.append(turn)
    return out


def _llava_options(options: ConvertOptions) -> None:
    _refuse_column_options(options, "keeps the records' own fields")
    if options.prompts is not None:
        raise BadInput(
            "--prompts is for --from captions and webvid; --from llava keeps the records' own turns"
        )


def _llava_builder(options: ConvertOptions) -> Callable[[Row], dict[str, Any]]:
    media = options.media
    other = OTHER[media]

    def build(row: Row) -> dict[str, Any]:
        record = row.value
        if not isinstance(record, dict):
            raise RecordError("non-object record", f"expected a JSON object, got {type(record).__name__}")
        if "video_id" in record and "q" in record and "a" in record and "conversations" not in record:
            record = _video_chatgpt(record, media)
        elif other in record:
            if media in record:
                raise RecordError("both image and video", "record has both 'image' and 'video'")
            record = {(media if k == other else k): v for k, v in record.items()}
            record["conversations"] = _retarget_turns(
                record.get("conversations"), PLACEHOLDER[other], PLACEHOLDER[media]
            )
        validate_record(record, media)
        return record

    return build


def llava_shortcut(media: str) -> Callable[[Any], tuple[dict[str, Any], int, int, int] | None]:
    """For `--from llava`: the common record shape — `{"id", "image"|"video": one path, "conversations"}`,
    every turn a `{"from", "value"}` in order — checked, retargeted and measured in one pass over its turns,
    or None whenever anything differs from it, and the row path (`record_builder`) must decide.

    Returns (record in canonical key order, turns, human chars, gpt chars). It accepts only what the row
    path accepts and builds the same record (`tests/test_llava_shortcut.py` proves it on random records):
    its tests are a subset of the rules above, so the reasons for a reject stay the row path's alone.
    """
    other = OTHER[media]
    placeholder, other_placeholder = PLACEHOLDER[media], PLACEHOLDER[other]

    def shortcut(value: Any) -> tuple[dict[str, Any], int, int, int] | None:
        if type(value) is not dict or len(value) != 3:
            return None
        renamed = other in value
        path = value.get(other if renamed else media)
        rid = value.get("id")
        turns = value.get("conversations")
        if type(path) is not str or type(turns) is not list or len(turns) < 2:
            return None
        if type(rid) is str:
            if not rid.strip():
                return None
        elif type(rid) is not int:
            return None
        if not path or path[0] in "/\\" or ":" in path or ".." in path or path.isspace():
            return None
        out = []
        count = human = gpt = 0
        expected = "human"
        for turn in turns:
            if type(turn) is not dict:
                return None
            text = turn.get("value")
            if type(text) is not str or turn.get("from") != expected or not text or text.isspace():
                return None
            if other_placeholder in text:
                if not renamed:
                    return None
                text = text.replace(other_placeholder, placeholder)
                turn = {**turn, "value": text}
            count += text.count(placeholder)
            if expected == "human":
                human += len(text)
                expected = "gpt"
            else:
                gpt += len(text)
                expected = "human"
            out.append(turn)
        if count != 1:
            return None
        return {"id": rid, media: path, "conversations": out}, len(out), human, gpt

    return shortcut


def _video_chatgpt(record: dict[str, Any], media: str) -> dict[str, Any]:
    """Video-ChatGPT `{"video_id", "q", "a"}` -> a 2-turn record on `<video_id>.mp4`, placeholder first."""
    vid, q, a = record["video_id"], record["q"], record["a"]
    if not isinstance(vid, str) or not isinstance(q, str) or not isinstance(a, str):
        raise RecordError("wrong type", "fields 'video_id', 'q', 'a' must be strings")
    path = vid if posixpath.splitext(vid)[1] else f"{vid}.mp4"
    return {"id": vid, media: path, "conversations": _conversation(f"{PLACEHOLDER[media]}\n{q}", a)}


_BUILDERS: dict[str, Callable[[ConvertOptions], Callable[[Row], dict[str, Any]]]] = {
    "webvid": _webvid_builder,
    "captions": _captions_builder,
    "llava": _llava_builder,
}


_OPTION_RULES: dict[str, Callable[[ConvertOptions], None]] = {
    "webvid": _webvid_options,
    "captions": _captions_options,
    "llava": _llava_options,
}


def check_options(options: ConvertOptions) -> None:
    """Refuse (BadInput) options the format cannot use, reading nothing: `data convert` checks them before
    its first row, a plan when it is loaded (so a launcher never submits a run that would fail on them)."""
    if options.media not in MEDIA:
        raise BadInput(f"--media must be one of {', '.join(MEDIA)}, got {options.media!r}")
    rule = _OPTION_RULES.get(options.source_format)
    if rule is None:
        raise BadInput(f"--from must be one of {', '.join(_BUILDERS)}, got {options.source_format!r}")
    rule(options)


@functools.lru_cache(maxsize=16)
def record_builder(options: ConvertOptions) -> Callable[[Row], dict[str, Any]]:
    """A fast `Row -> record` function for `options` (prompts loaded and columns fixed once).

    Refuses unusable options (BadInput) up front. Rows that could not be read raise their `RecordError`.
    """
    check_options(options)
    build = _BUILDERS[options.source_format](options)

    def checked(row: Row) -> dict[str, Any]:
        if row.error is not None:
            raise row_error(row)
        return build(row)

    return checked


def build_record(row: Row, options: ConvertOptions) -> dict[str, Any]:
    """The validated record for `row`; raises `RecordError` (bad row) or `BadInput` (bad options)."""
    return record_builder(options)(row)
