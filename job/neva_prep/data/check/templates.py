"""NeMo's conversation templates: the text NeVA's dataset tokenizes for a record, and the rules it asserts.

Facts read from NVIDIA/NeMo at tag v2.0.0rc0 (NeMo Framework 24.05), never imported:
- `nemo/collections/multimodal/data/neva/conversation.py`: the `Conversation` objects `conv_llava_llama_2`
  (`llama_2`), `conv_vicuna_v1` (`v1`), `conv_nvgpt` (`nvgpt`, `nv_steerlm`), `conv_nv_dpo` (`nv_dpo`) and
  `Conversation.get_prompt` (separator styles LLAMA_2, TWO, NVGPT).
- `nemo/collections/multimodal/data/neva/neva_dataset.py`: `preprocess_llama_2`, `preprocess_v1`,
  `preprocess_nvgpt`, `preprocess_nv_dpo`, `preprocess_plain` (how a record becomes one prompt string) and
  `preprocess_multimodal` (how each `<image>` / `<video>` becomes media tokens, and the `plain` asserts).

A placeholder expands to `<extra_id_4>` + `<extra_id_3>` x (P - 2) + `<extra_id_5>` (P = media tokens per
placeholder, `use_im_start_end: False`, NeMo's default). The texts built here hold only the start and end
tokens and report the elided patch tokens separately: user-defined pieces are atomic, so the count is the
same, and 665k records do not make the tokenizer read 256 patch tokens each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neva_prep.data.records import PLACEHOLDER, RecordError

SYSTEM_TOKEN = "<extra_id_0>"
SEPARATOR_TOKEN = "<extra_id_1>"
LABELS_TOKEN = "<extra_id_2>"
PATCH_TOKEN = "<extra_id_3>"
MEDIA_START = "<extra_id_4>"
MEDIA_END = "<extra_id_5>"
BOS_TOKEN = "<extra_id_6>"
EOS_TOKEN = "<extra_id_7>"

LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
NVGPT_SYSTEM = V1_SYSTEM + "\n\n"
NV_DPO_SYSTEM = "\n"
NVGPT_LABEL = (
    "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,"
    "verbosity:4"
)
TEMPLATES = ("plain", "llama_2", "v1", "nvgpt", "nv_steerlm", "nv_dpo")


@dataclass(frozen=True)
class Prompt:
    """What NeMo tokenizes for one record: `text` with each placeholder as start + end token only, and
    `patch_tokens`, the patch tokens elided from it."""

    text: str
    patch_tokens: int


def media_positions(media_tokens: int, num_frames: int, media: str) -> int:
    """Positions one placeholder takes in `tokens`: P = tokens per image (x frames for a video); NeMo writes
    start + P - 2 patches + end, so P in all (2 when P < 2: a negative repeat is empty)."""
    per = media_tokens * (num_frames if media == "video" else 1)
    return max(per, 2)


def turns_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's turns when NeMo can format them (objects with string values, human/gpt alternating from
    human), else RecordError: such a record fails NeMo's asserts, so it has no length."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("no length", "'conversations' is not a non-empty list")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError("no length", f"conversations[{i}] has no string 'value'")
        if turn.get("from") != ("human", "gpt")[i % 2]:
            raise RecordError("no length", f"conversations[{i}].from is not {('human', 'gpt')[i % 2]!r}")
    return turns


def template_findings(record: dict[str, Any], template: str, media: str) -> list[RecordError]:
    """Violations of what NeMo's dataset asserts for `template` beyond the record rules of `records.py`."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return []
    found = []
    placeholder = PLACEHOLDER[media]
    if template == "plain":
        value = record.get(media)
        n_media = 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0
        if len(turns) != 2:
            found.append(
                RecordError(
                    "plain: not 2 turns",
                    f"{len(turns)} turns; NeMo's preprocess_plain asserts len(source) == 2",
                )
            )
        first = turns[0].get("value") if turns and isinstance(turns[0], dict) else None
        if n_media and not (isinstance(first, str) and placeholder in first):
            found.append(
                RecordError(
                    "plain: placeholder not in turn 0",
                    f"{placeholder} must be in the first human turn (preprocess_multimodal asserts it)",
                )
            )
        if n_media > 1:
            found.append(
                RecordError(
                    "plain: more than one media",
                    f"{n_media} {media} files; plain replaces turn 0 by one {placeholder}",
                )
            )
    elif template in ("nvgpt", "nv_steerlm", "nv_dpo"):
        if "system" in record and not isinstance(record["system"], str):
            found.append(RecordError("wrong type", "field 'system' must be a string (NeMo prepends it)"))
        for i, turn in enumerate(turns):
            if isinstance(turn, dict) and "label" in turn and not isinstance(turn["label"], str):
                found.append(RecordError("wrong type", f"conversations[{i}].label must be a string"))
    return found


def prompt(record: dict[str, Any], template: str, media: str, positions: int) -> Prompt:
    """The text NeMo's `preprocess_<template>` tokenizes for `record` (RecordError when it cannot format
    it); `positions` is `media_positions(...)`."""
    turns = turns_of(record)
    values = [str(t["value"]) for t in turns]
    placeholder = PLACEHOLDER[media]
    expands = bool(record.get(media))  # NeMo expands only when the record carries its media
    if template == "plain":
        if len(values) != 2:
            raise RecordError("no length", "plain needs exactly 2 turns")
        if expands:
            if placeholder not in values[0]:
                raise RecordError("no length", f"plain needs {placeholder} in turn 0")
            values[0] = placeholder
    count = sum(v.count(placeholder) for v in values) if expands else 0
    if expands:
        values = [v.replace(placeholder, MEDIA_START + MEDIA_END) for v in values]
    patches = count * (positions - 2)
    if template == "plain":
        return Prompt(values[0] + values[1] + "\n", patches)
    if template == "llama_2":
        return Prompt(_llama_2(values), patches)
    if template == "v1":
        return Prompt(_v1(values), patches)
    if template in ("nvgpt", "nv_steerlm", "nv_dpo"):
        system = record.get("system", NV_DPO_SYSTEM if template == "nv_dpo" else NVGPT_SYSTEM)
        if not isinstance(system, str):
            raise RecordError("no length", "'system' is not a string")
        labels = None if template == "nv_dpo" else [t.get("label", NVGPT_LABEL) for t in turns]
        if labels is not None and not all(isinstance(x, str) for x in labels):
            raise RecordError("no length", "a 'label' is not a string")
        return Prompt(_nvgpt(values, system, labels), patches)
    raise ValueError(f"unknown template {template!r}")


def _llama_2(values: list[str]) -> str:
    """`Conversation.get_prompt`, style LLAMA_2, of `conv_llava_llama_2` (sep BOS_TOKEN, sep2 EOS_TOKEN)."""
    out = ""
    for i, message in enumerate(values):
        if not message:
            continue
        if i == 0:
            message = f"<<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\n" + message
        if i % 2 == 0:
            out += BOS_TOKEN + " " + f"[INST] {message} [/INST]"
        else:
            out += " " + message + " " + EOS_TOKEN
    return out.lstrip(BOS_TOKEN)  # NeMo's str.lstrip: a character set, stops at the space


def _v1(values: list[str]) -> str:
    """`Conversation.get_prompt`, style TWO, of `conv_vicuna_v1` (sep " ", sep2 <extra_id_7>)."""
    out = V1_SYSTEM + " "
    for i, message in enumerate(values):
        role = ("USER", "ASSISTANT")[i % 2]
        if message:
            out += role + ": " + message + (" ", EOS_TOKEN)[i % 2]
            if i % 2 == 1 and i != len(values) - 1:
                out += " "
        else:
            out += role + ":"
    return out


def _nvgpt(values: list[str], system: str, labels: list[str] | None) -> str:
    """`Conversation.get_prompt`, style NVGPT, as `preprocess_nvgpt` (labels) / `preprocess_nv_dpo` use it."""
    out = SYSTEM_TOKEN + "System\n" + system + SEPARATOR_TOKEN
    strip_end = False
    for i, value in enumerate(values):
        role = ("User", "Assistant")[i % 2]
        message = value
        if i % 2 == 1:
            if labels is not None:
                message = LABELS_TOKEN + labels[i] + "\n" + value
            strip_end = strip_end or not value
        if message:
            out += role + "\n" + message + "\n" + SEPARATOR_TOKEN
        else:
            out += role + "\n"
    if strip_end:  # NeMo's inference path: an empty answer drops the trailing separator
        if labels is not None:
            out = out.rstrip("\n" + SEPARATOR_TOKEN) + "\n"
        elif out.endswith("\n" + SEPARATOR_TOKEN):
            out = out[: -len("\n" + SEPARATOR_TOKEN)] + "\n"
    return out
