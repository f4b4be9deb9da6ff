"""The model step: one HF LLaMA directory in, the layout of NeMo's NeVA guide out.

    OUT/checkpoints/NAME.nemo               what NeMo's converter writes (`convert_checkpoint`)
    OUT/tokenizers/tokenizer_neva.model     SRC/tokenizer.model with NeVA's special tokens (`patch_tokenizer`)
    OUT/model-manifest.json                 written LAST: the completion marker

Batch schedulers retry tasks, so the step is idempotent: when OUT already holds a manifest for the same
inputs (file names, sizes, ETag or mtime) and options, and the outputs it names still have their recorded
sizes, the step does nothing and says so. The manifest is removed before anything is rewritten, so a run
that dies half-way never leaves a manifest that describes outputs it did not finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neva_prep import __version__, storage
from neva_prep.errors import BadInput
from neva_prep.model.tokenizer import DEFAULT_TOKENS, check_tokens, patch_tokenizer_bytes

MANIFEST = "model-manifest.json"
TOKENIZER = posixpath.join("tokenizers", "tokenizer_neva.model")
MANIFEST_VERSION = 1
# The files a conversion reads; anything else in an HF repo (README, generation_config.json) is ignored.
_INPUT = re.compile(r"^(config\.json|tokenizer\.model|.+\.safetensors|.+\.bin|.+\.index\.json)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class ModelResult:
    """Where the step's outputs are, and whether this run made them or found them complete."""

    nemo: str
    tokenizer: str
    manifest: str
    skipped: bool
    nemo_bytes: int
    nemo_sha256: str
    token_ids: tuple[int, ...]
    seconds: float = 0.0
    replaced: str = ""  # what this run replaced in OUT, and why ("" when OUT held no result)

    def summary(self) -> str:
        ids = "token ids " + ", ".join(map(str, self.token_ids))
        head = "already complete" if self.skipped else f"done in {self.seconds:.1f}s"
        lines = [
            f"model step {head}: {storage.redact(self.manifest)}",
            f"  checkpoint: {storage.redact(self.nemo)} ({self.nemo_bytes:,} bytes)",
            f"  sha256:     {self.nemo_sha256}",
            f"  tokenizer:  {storage.redact(self.tokenizer)} ({ids})",
        ]
        if self.replaced:
            lines.append(f"  replaced:   {self.replaced}")
        return "\n".join(lines)


def default_name(source: str) -> str:
    """The checkpoint name NeMo's guide uses: the source directory's basename (`Llama-2-7b-chat-hf`)."""
    path = os.path.abspath(source) if storage.is_local(source) else source
    return posixpath.basename(path.rstrip("/\\")) or "model"


def check_name(name: str) -> str:
    """NAME becomes a file name under OUT/checkpoints: refuse anything that could leave that folder."""
    if not _NAME.match(name) or name in (".", ".."):
        raise BadInput(
            f"--name {name!r}: use letters, digits and . _ + - only (it names OUT/checkpoints/NAME.nemo)"
        )
    return name


def fingerprint(source: str) -> dict[str, dict[str, Any]]:
    """Name -> size (+ ETag or mtime) of every file the conversion reads, from one listing of SRC."""
    found = storage.entries(source)
    if not found:
        raise BadInput(f"{storage.redact(source)}: no such directory, or it is empty")
    inputs: dict[str, dict[str, Any]] = {}
    for name, info in found.items():
        if not _INPUT.match(name):
            continue
        entry: dict[str, Any] = {"size": int(info["size"])}
        etag = info.get("ETag") or info.get("etag")
        if etag:
            entry["etag"] = str(etag).strip('"')
        elif info.get("mtime") is not None:
            entry["mtime"] = float(info["mtime"])
        inputs[name] = entry
    return inputs


# manifest option -> the command-line option a user changes
_FLAGS = {"name": "--name", "precision": "--precision", "layout": "--layout", "tokens": "--token"}


def _option_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`--option old -> new` for every option the recorded result was made with differently."""
    return [
        f"{_FLAGS.get(key, '--' + key)} {_show(old.get(key))} -> {_show(value)}"
        for key, value in new.items()
        if old.get(key) != value
    ]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return f"size {value.get('size')}" + (f", etag {value['etag']}" if "etag" in value else "")
    return "(none)" if value is None else str(value)


def replacement(
    output: str, source: str, inputs: dict[str, Any], options: dict[str, Any], *, force: bool
) -> str:
    """What a run is about to replace in OUT and why: the options, source or inputs that changed since the
    recorded result ("" when OUT holds no result). Results are never replaced without saying so."""
    url = storage.join(output, MANIFEST)
    nemo_url = storage.join(output, *nemo_path(options["name"]).split("/"))
    if not storage.exists(url):
        if storage.exists(nemo_url):
            return f"{nemo_path(options['name'])} without a manifest (an earlier run did not finish)"
        return ""
    try:
        manifest = json.loads(storage.read_text(url))
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        return f"the result described by a damaged {MANIFEST}"
    old_options = _mapping(manifest.get("options"))
    why = _option_changes(old_options, options)
    if manifest.get("source") != storage.redact(source):
        why.append(f"source {manifest.get('source')} -> {storage.redact(source)}")
    old_inputs = _mapping(manifest.get("inputs"))
    changed = sorted(set(old_inputs) | set(inputs), key=str)
    changed = [n for n in changed if old_inputs.get(n) != inputs.get(n)]
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        why.append(f"input files changed since: {shown}")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        why.append(f"manifest version {manifest.get('manifest_version')} -> {MANIFEST_VERSION}")
    if not why:
        why.append("--force" if force else "its outputs are missing or changed")
    old_name = old_options.get("name")
    left = (
        f"; {nemo_path(old_name)} is left in place, no longer in the manifest"
        if isinstance(old_name, str) and old_name != options["name"]
        else ""
    )
    return f"the previous result ({'; '.join(why)}){left}"


def completed(
    output: str, source: str, inputs: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any] | None:
    """The manifest in `output` when it describes this very job and its outputs are all still there."""
    url = storage.join(output, MANIFEST)
    if not storage.exists(url):
        return None
    try:
        manifest = json.loads(storage.read_text(url))
    except (ValueError, UnicodeDecodeError):
        return None  # a damaged marker means "not complete": redo
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    if (manifest.get("source"), manifest.get("inputs"), manifest.get("options")) != (
        storage.redact(source),
        inputs,
        options,
    ):
        return None
    recorded = manifest.get("tokens")
    if not isinstance(recorded, dict) or list(recorded) != options["tokens"]:
        return None
    outputs = manifest.get("outputs")
    expected = {"nemo": nemo_path(options["name"]), "tokenizer": TOKENIZER}
    if not isinstance(outputs, dict) or set(outputs) != set(expected):
        return None
    for key, path in expected.items():
        out = outputs[key]
        if not isinstance(out, dict) or out.get("path") != path or not isinstance(out.get("sha256"), str):
            return None
        target = storage.join(output, *path.split("/"))
        if not storage.exists(target) or storage.size(target) != out.get("size"):
            return None
    return manifest


def nemo_path(name: str) -> str:
    """Where the checkpoint goes, relative to OUT (the layout of NeMo's NeVA guide)."""
    return posixpath.join("checkpoints", f"{name}.nemo")


def prepare_model(
    source: str,
    output: str,
    *,
    name: str | None = None,
    precision: str = "16",
    tokens: Sequence[str] = DEFAULT_TOKENS,
    control: bool = False,
    layout: str = "mcore",
    device: str = "auto",
    force: bool = False,
) -> ModelResult:
    """Convert SRC to OUT/checkpoints/NAME.nemo, patch its tokenizer, then write the manifest; skip when
    OUT already holds the complete result for the same inputs and options (unless `force`)."""
    start = time.monotonic()
    tokens = check_tokens(tokens)
    name = check_name(name if name is not None else default_name(source))
    nemo_rel = nemo_path(name)
    nemo_url = storage.join(output, *nemo_rel.split("/"))
    tok_url = storage.join(output, *TOKENIZER.split("/"))
    manifest_url = storage.join(output, MANIFEST)
    # The device only decides where the arithmetic runs; the bytes written are the same.
    options = {
        "name": name,
        "precision": precision,
        "layout": layout,
        "tokens": list(tokens),
        "control": control,
    }
    inputs = fingerprint(source)

    if not force and (done := completed(output, source, inputs, options)) is not None:
        outs = done["outputs"]
        return ModelResult(
            nemo=nemo_url,
            tokenizer=tok_url,
            manifest=manifest_url,
            skipped=True,
            nemo_bytes=int(outs["nemo"]["size"]),
            nemo_sha256=str(outs["nemo"]["sha256"]),
            token_ids=tuple(int(i) for i in done["tokens"].values()),
        )

    # Imported only now: torch is slow to import, and a retry that finds the work done never needs it.
    from neva_prep.model.convert import convert_checkpoint
    from neva_prep.model.hf import tokenizer_url

    # Patch in memory first: a bad tokenizer or token list fails before hours of conversion.
    tok_src = tokenizer_url(source)
    patched, ids, _ = patch_tokenizer_bytes(
        storage.read_bytes(tok_src), tokens, control, source=storage.redact(tok_src)
    )
    replaced = replacement(output, source, inputs, options, force=force)
    if replaced:  # said before hours of work, and again in the summary
        print(f"model step: replacing {replaced}", file=sys.stderr, flush=True)
    storage.remove(manifest_url)
    converted = convert_checkpoint(
        source, nemo_url, precision=precision, device=device, layout=layout, sha256=True
    )
    storage.write_bytes(tok_url, patched)

    # hashed while it was written: reading the file back would be a second full download on s3://
    nemo_bytes, nemo_sha = converted.bytes_written, converted.sha256
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "neva_prep_version": __version__,
        "source": storage.redact(source),
        "inputs": inputs,
        "options": options,
        "outputs": {
            "nemo": {
                "path": nemo_rel,
                "size": nemo_bytes,
                "sha256": nemo_sha,
                "layout": converted.layout,
                "precision": converted.precision,
                "tensors": converted.tensors,
                "tokenizer_member": converted.tokenizer_member,
            },
            "tokenizer": {
                "path": TOKENIZER,
                "size": len(patched),
                "sha256": hashlib.sha256(patched).hexdigest(),
                "source": storage.redact(tok_src),
            },
        },
        "tokens": dict(zip(tokens, ids, strict=True)),
    }
    storage.write_text(manifest_url, json.dumps(manifest, indent=2) + "\n")
    return ModelResult(
        nemo=nemo_url,
        tokenizer=tok_url,
        manifest=manifest_url,
        skipped=False,
        nemo_bytes=nemo_bytes,
        nemo_sha256=nemo_sha,
        token_ids=ids,
        seconds=time.monotonic() - start,
        replaced=replaced,
    )
