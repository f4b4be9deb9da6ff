"""`data check` token lengths against counts worked out by hand from NeMo's formatting (NeMo v2.0.0rc0,
`neva_dataset.py` preprocess_* / preprocess_multimodal, `conversation.py` get_prompt).

Every expected prompt below is written out literally, placeholders expanded in full (start, patches, end),
and encoded with SentencePiece here; NeVA's item keeps len(ids) - 1 of them (add_extra_token = 1). Nothing
from neva_prep.data.check is imported: the test stands on NeMo's documented strings alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm

from conftest import neva
from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer

# conversation.py, conv_llava_llama_2.system / conv_vicuna_v1.system; preprocess_nvgpt's default label
LLAMA_2_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
V1_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LABEL = (
    "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,"
    "verbosity:4"
)


def media(positions: int) -> str:
    """preprocess_multimodal, use_im_start_end False: <extra_id_4> + <extra_id_3> x (P - 2) + <extra_id_5>."""
    return "<extra_id_4>" + "<extra_id_3>" * (positions - 2) + "<extra_id_5>"


IMG = media(256)  # 224-px crop, 14-px patches: (224 // 14) ** 2

RECORDS: list[dict[str, Any]] = [
    {
        "id": "first",
        "image": "a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": "A red bus on a street."},
        ],
    },
    {
        "id": "last",
        "image": "b.jpg",
        "conversations": [
            {"from": "human", "value": "Describe the photo.\n<image>"},
            {"from": "gpt", "value": "Two dogs."},
        ],
    },
    {
        "id": "multi",
        "image": "c.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "And the sky?"},
            {"from": "gpt", "value": "Grey and cloudy."},
        ],
    },
    {
        "id": "text",
        "conversations": [
            {"from": "human", "value": "Tell me a joke."},
            {"from": "gpt", "value": "No."},
        ],
    },
    {
        "id": "unicode",
        "image": "d.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nQu'est-ce que c'est ? 日本語 🚌"},
            {"from": "gpt", "value": "Ein Bus — ça roule. ü"},
        ],
    },
]

# The prompt each template makes of each record (None: NeMo asserts, no length).
EXPECTED_PROMPTS: dict[str, list[str | None]] = {
    # preprocess_plain: turn 0 becomes the placeholder alone, then turn0 + turn1 + "\n"
    "plain": [
        IMG + "A red bus on a street.\n",
        IMG + "Two dogs.\n",
        None,  # assert len(source) == 2
        "Tell me a joke.No.\n",
        IMG + "Ein Bus — ça roule. ü\n",
    ],
    # get_prompt LLAMA_2: "<extra_id_6> [INST] <<SYS>>...", lstrip(sep) leaves the leading space
    "llama_2": [
        f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\n{IMG}\nWhat is in the picture? [/INST]"
        " A red bus on a street. <extra_id_7>",
        f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\nDescribe the photo.\n{IMG} [/INST]"
        " Two dogs. <extra_id_7>",
        f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\n{IMG}\nWhat color? [/INST] Blue. <extra_id_7>"
        "<extra_id_6> [INST] And the sky? [/INST] Grey and cloudy. <extra_id_7>",
        f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\nTell me a joke. [/INST] No. <extra_id_7>",
        f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\n{IMG}\nQu'est-ce que c'est ? 日本語 🚌 [/INST]"
        " Ein Bus — ça roule. ü <extra_id_7>",
    ],
    # get_prompt TWO: system + " " + "USER: m ASSISTANT: m<extra_id_7>" (+ " " between rounds)
    "v1": [
        f"{V1_SYS} USER: {IMG}\nWhat is in the picture? ASSISTANT: A red bus on a street.<extra_id_7>",
        f"{V1_SYS} USER: Describe the photo.\n{IMG} ASSISTANT: Two dogs.<extra_id_7>",
        f"{V1_SYS} USER: {IMG}\nWhat color? ASSISTANT: Blue.<extra_id_7> USER: And the sky? ASSISTANT:"
        " Grey and cloudy.<extra_id_7>",
        f"{V1_SYS} USER: Tell me a joke. ASSISTANT: No.<extra_id_7>",
        f"{V1_SYS} USER: {IMG}\nQu'est-ce que c'est ? 日本語 🚌 ASSISTANT: Ein Bus — ça roule. ü<extra_id_7>",
    ],
    # get_prompt NVGPT: "<extra_id_0>System\n" + system + "<extra_id_1>" + role\nmessage\n<extra_id_1>...
    "nvgpt": [
        f"<extra_id_0>System\n{V1_SYS}\n\n<extra_id_1>User\n{IMG}\nWhat is in the picture?\n<extra_id_1>"
        f"Assistant\n<extra_id_2>{LABEL}\nA red bus on a street.\n<extra_id_1>",
        f"<extra_id_0>System\n{V1_SYS}\n\n<extra_id_1>User\nDescribe the photo.\n{IMG}\n<extra_id_1>"
        f"Assistant\n<extra_id_2>{LABEL}\nTwo dogs.\n<extra_id_1>",
        f"<extra_id_0>System\n{V1_SYS}\n\n<extra_id_1>User\n{IMG}\nWhat color?\n<extra_id_1>"
        f"Assistant\n<extra_id_2>{LABEL}\nBlue.\n<extra_id_1>User\nAnd the sky?\n<extra_id_1>"
        f"Assistant\n<extra_id_2>{LABEL}\nGrey and cloudy.\n<extra_id_1>",
        f"<extra_id_0>System\n{V1_SYS}\n\n<extra_id_1>User\nTell me a joke.\n<extra_id_1>"
        f"Assistant\n<extra_id_2>{LABEL}\nNo.\n<extra_id_1>",
        f"<extra_id_0>System\n{V1_SYS}\n\n<extra_id_1>User\n{IMG}\nQu'est-ce que c'est ? 日本語 🚌\n"
        f"<extra_id_1>Assistant\n<extra_id_2>{LABEL}\nEin Bus — ça roule. ü\n<extra_id_1>",
    ],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real SentencePiece model (BPE, byte fallback), patched as the model step patches it."""
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer(root / "tokenizer.model", 384)
    patch_tokenizer(str(root / "tokenizer.model"), str(root / "tokenizer_neva.model"))
    return root / "tokenizer_neva.model"


def nemo_tokens(tokenizer: Path, prompt: str) -> int:
    """NeVA's `tokens` length: encode (no BOS/EOS: sentencepiece_legacy False), drop one (add_extra_token)."""
    return len(spm.SentencePieceProcessor(model_file=str(tokenizer)).encode(prompt)) - 1


def run_check(
    tmp_path: Path, tokenizer: Path, records: list[dict[str, Any]], *args: str
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    report = tmp_path / "report"
    proc = neva("data", "check", str(data), "--tokenizer", str(tokenizer), "--report", str(report), *args)
    assert proc.returncode in (0, 3), proc.stderr
    lengths = [json.loads(line) for line in (report / "lengths.jsonl").read_text().splitlines()]
    findings = [json.loads(line) for line in (report / "findings.jsonl").read_text().splitlines()]
    return proc.returncode, lengths, findings, proc.stdout


@pytest.mark.parametrize("template", sorted(EXPECTED_PROMPTS))
def test_image_token_lengths_match_nemo_formatting(template: str, tokenizer: Path, tmp_path: Path) -> None:
    _, lengths, findings, _ = run_check(
        tmp_path, tokenizer, RECORDS, "--media", "image", "--template", template, "--seq-length", "100000"
    )
    expected = [None if p is None else nemo_tokens(tokenizer, p) for p in EXPECTED_PROMPTS[template]]
    assert [line["tokens"] for line in lengths] == expected
    assert [line["id"] for line in lengths] == [r["id"] for r in RECORDS]
    assert [line["row"] for line in lengths] == [1, 2, 3, 4, 5]
    # an image is 256 positions: the same record without its image is 256 - 1 (the "<image>" text) shorter
    if template != "plain":
        assert expected[0] is not None and expected[0] > 256
    reasons = {(f["row"], f["reason"]) for f in findings}
    assert reasons == ({(3, "plain: not 2 turns")} if template == "plain" else set())


def test_video_counts_frames_times_image_tokens(tokenizer: Path, tmp_path: Path) -> None:
    videos = [
        {
            "id": "v1",
            "video": "a/1.mp4",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat happens?"},
                {"from": "gpt", "value": "A dog runs across a field."},
            ],
        },
        {
            "id": "v2",
            "video": "a/2.mp4",
            "conversations": [
                {"from": "human", "value": "Summarize.\n<video>"},
                {"from": "gpt", "value": "Rain."},
                {"from": "human", "value": "Where?"},
                {"from": "gpt", "value": "In Paris."},
            ],
        },
    ]
    vid = media(8 * 256)  # num_frames x image_token_len, one start and one end token
    args = ("--media", "video", "--num-frames", "8", "--seq-length", "100000")
    _, lengths, _, _ = run_check(tmp_path / "llama", tokenizer, videos, *args, "--template", "llama_2")
    assert [line["tokens"] for line in lengths] == [
        nemo_tokens(
            tokenizer,
            f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\n{vid}\nWhat happens? [/INST]"
            " A dog runs across a field. <extra_id_7>",
        ),
        nemo_tokens(
            tokenizer,
            f" [INST] <<SYS>>\n{LLAMA_2_SYS}\n<</SYS>>\n\nSummarize.\n{vid} [/INST] Rain. <extra_id_7>"
            "<extra_id_6> [INST] Where? [/INST] In Paris. <extra_id_7>",
        ),
    ]
    _, lengths, findings, _ = run_check(tmp_path / "plain", tokenizer, videos, *args, "--template", "plain")
    assert lengths[0]["tokens"] == nemo_tokens(tokenizer, vid + "A dog runs across a field.\n")
    assert lengths[1]["tokens"] is None
    assert [f["reason"] for f in findings] == ["plain: not 2 turns"]


def test_crop_size_and_explicit_media_tokens(tokenizer: Path, tmp_path: Path) -> None:
    one = RECORDS[:1]
    base = ("--media", "image", "--template", "v1", "--seq-length", "100000")
    prompt = f"{V1_SYS} USER: {{}}\nWhat is in the picture? ASSISTANT: A red bus on a street.<extra_id_7>"
    _, lengths, _, _ = run_check(tmp_path / "336", tokenizer, one, *base, "--crop-size", "336")
    assert lengths[0]["tokens"] == nemo_tokens(tokenizer, prompt.format(media(576)))  # (336 // 14) ** 2
    _, lengths, _, _ = run_check(tmp_path / "k", tokenizer, one, *base, "--media-tokens", "64")
    assert lengths[0]["tokens"] == nemo_tokens(tokenizer, prompt.format(media(64)))


def test_exit_0_when_ready_and_3_when_a_record_is_cut(tokenizer: Path, tmp_path: Path) -> None:
    base = ("--media", "image", "--template", "llama_2")
    longest = max(nemo_tokens(tokenizer, p) for p in EXPECTED_PROMPTS["llama_2"] if p)
    code, _, findings, out = run_check(
        tmp_path / "fits", tokenizer, RECORDS, *base, "--seq-length", str(longest)
    )
    assert code == 0 and findings == [] and "ready to train" in out
    assert str(tmp_path / "fits" / "report" / "report.html") in out

    code, lengths, findings, out = run_check(
        tmp_path / "cut", tokenizer, RECORDS, *base, "--seq-length", str(longest - 1)
    )
    assert code == 3 and "over --seq-length" in out
    row = next(line["row"] for line in lengths if line["tokens"] == longest)
    assert [(f["row"], f["reason"]) for f in findings] == [(row, "over seq-length")]
    summary = json.loads((tmp_path / "cut" / "report" / "summary.json").read_text())
    assert summary["over_seq_length"] == 1 and summary["tokens"]["max"] == longest


def test_unpatched_or_control_tokenizer_is_bad_input(tokenizer: Path, tmp_path: Path) -> None:
    plain_model = tokenizer.parent / "tokenizer.model"
    control = tmp_path / "control.model"
    patch_tokenizer(str(plain_model), str(control), control=True)
    (tmp_path / "d.json").write_text(json.dumps(RECORDS))
    for model in (plain_model, control):
        proc = neva(
            "data", "check", str(tmp_path / "d.json"), "--media", "image", "--template", "v1",
            "--tokenizer", str(model), "--seq-length", "4096", "--report", str(tmp_path / "r"),
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "<extra_id_0> is not a user-defined piece" in proc.stderr
        assert not (tmp_path / "r" / "summary.json").exists()


def test_video_without_num_frames_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text("[]")
    proc = neva(
        "data", "check", str(tmp_path / "d.json"), "--media", "video", "--template", "plain",
        "--tokenizer", str(tokenizer), "--seq-length", "4096", "--report", str(tmp_path / "r"),
    )  # fmt: skip
    assert proc.returncode == 2 and "--num-frames" in proc.stderr
