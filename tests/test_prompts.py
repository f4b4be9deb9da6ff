"""The prompt lists are data: exact content, exact length, and a choice that depends on the record only."""

from __future__ import annotations

from pathlib import Path

import pytest

from neva_prep.data.prompts import builtin_names, choose_prompt, load_prompts, parse_prompts
from neva_prep.errors import BadInput

# The LLaVA paper's brief-description prompts, typed from shared/data-sources.md (straight apostrophe).
LLAVA_BRIEF = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)


def test_image_list_is_the_eleven_llava_prompts() -> None:
    prompts = load_prompts("image_brief", "image")
    assert len(prompts) == 11
    assert prompts == LLAVA_BRIEF
    assert all(p.isascii() for p in prompts)  # no curly apostrophes


def test_video_list_starts_with_the_guide_prompt() -> None:
    prompts = load_prompts(None, "video")
    assert prompts[0] == "Write a terse but informative summary of the following video clip."
    assert len(prompts) == len(set(prompts)) >= 4
    assert all("video" in p and p.endswith(".") and p.isascii() for p in prompts)


def test_defaults_and_names() -> None:
    assert load_prompts(None, "image") == LLAVA_BRIEF
    assert builtin_names() == ["image_brief", "video_brief"]
    with pytest.raises(BadInput, match="no such built-in prompt list 'nope'"):
        load_prompts("nope", "image")
    with pytest.raises(BadInput, match="no such built-in prompt list 'llava-brief'"):
        load_prompts("llava-brief", "image")  # a name, not a file path: never looked up as a file


def test_prompt_list_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("Say what you see.\nDescribe it.\n", encoding="utf-8")
    assert load_prompts(str(path), "image") == ("Say what you see.", "Describe it.")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n\nb\n", "line 2: empty prompt"),
        (" a\n", "whitespace"),
        ("<image>\nDescribe.\n", "line 1"),
        ("", "no prompts"),
    ],
)
def test_bad_prompt_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_prompts(text, "x.txt")


def test_choice_is_a_stable_function_of_the_key() -> None:
    prompts = load_prompts("image_brief", "image")
    picks = [choose_prompt(prompts, f"{i:09d}") for i in range(2000)]
    assert picks == [choose_prompt(prompts, f"{i:09d}") for i in range(2000)]
    assert set(picks) == set(prompts)  # every prompt gets used
    # CRC-32 is fixed by the algorithm (crc32(b"abc") == 891568578), so this holds on every machine.
    assert (
        choose_prompt(prompts, "abc")
        == prompts[891568578 % 11]
        == "Create a compact narrative representing the image presented."
    )
