"""Prompt lists for caption-derived records, and the rule that picks one prompt per record.

The lists are data files in the package (`neva_prep/prompts/<name>.txt`, one prompt per line) because copies
pasted into code drift (a curly apostrophe, a lost comma that merges two prompts). The choice is a pure
function of the record's id, so the same record gets the same prompt whatever the shard count or the run.
"""

from __future__ import annotations

import functools
import re
import zlib
from importlib import resources

from neva_prep import storage
from neva_prep.errors import BadInput

DEFAULT = {"image": "image_brief", "video": "video_brief"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # no '/', '.' or scheme: a built-in list, never a file
PLACEHOLDERS = ("<image>", "<video>")


def builtin_names() -> list[str]:
    """Names of the prompt lists shipped in the package."""
    files = resources.files("neva_prep").joinpath("prompts")
    return sorted(p.name[: -len(".txt")] for p in files.iterdir() if p.name.endswith(".txt"))


def check_builtin(name: str) -> str | None:
    """None when `name` is a URL/path or a built-in list; otherwise why it is neither (for early checks)."""
    if not _NAME.match(name) or name in builtin_names():
        return None
    return f"no such built-in prompt list {name!r} (have: {', '.join(builtin_names())}; or give a file path)"


def parse_prompts(text: str, source: str) -> tuple[str, ...]:
    """One prompt per line; blank lines, placeholders and stray whitespace are refused, not fixed."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    prompts: list[str] = []
    for n, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.strip():
            raise BadInput(f"{source}, line {n}: empty prompt")
        if line != line.strip():
            raise BadInput(f"{source}, line {n}: prompt has leading or trailing whitespace")
        if any(p in line for p in PLACEHOLDERS):
            raise BadInput(f"{source}, line {n}: prompt must not contain a placeholder (it is added)")
        prompts.append(line)
    if not prompts:
        raise BadInput(f"{source}: no prompts")
    return tuple(prompts)


@functools.lru_cache(maxsize=32)
def load_prompts(name_or_url: str | None, media: str) -> tuple[str, ...]:
    """A built-in list by name (`image_brief`, `video_brief`) or a list file at a URL; None: default."""
    name = name_or_url or DEFAULT[media]
    if _NAME.match(name):
        problem = check_builtin(name)
        if problem:
            raise BadInput(f"--prompts: {problem}")
        path = resources.files("neva_prep").joinpath("prompts", f"{name}.txt")
        return parse_prompts(path.read_text(encoding="utf-8"), f"prompts/{name}.txt")
    try:
        text = storage.read_text(name)
    except UnicodeDecodeError:
        raise BadInput(f"{storage.redact(name)}: prompt list is not UTF-8") from None
    return parse_prompts(text, storage.redact(name))


def choose_prompt(prompts: tuple[str, ...], key: str) -> str:
    """The prompt for a record whose id is `key`: CRC-32 of its UTF-8 bytes modulo the list length.

    CRC-32 is stable across Python versions and processes (unlike `hash`) and costs well under a microsecond.
    """
    return prompts[zlib.crc32(key.encode("utf-8")) % len(prompts)]
