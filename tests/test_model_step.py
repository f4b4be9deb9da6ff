"""`neva-prep model SRC OUT`: the .nemo, the patched tokenizer, and the manifest that makes retries free."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm

from conftest import neva
from neva_prep import storage
from neva_prep.errors import BadInput
from neva_prep.model.step import check_name, default_name, fingerprint, prepare_model
from neva_prep.model.tokenizer import DEFAULT_TOKENS
from neva_prep.sample import TinyLlama, write_llama

VOCAB = TinyLlama().vocab_size


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "model-manifest.json").read_text())  # type: ignore[no-any-return]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny sharded LLaMA shared by the tests that only read it."""
    return write_llama(tmp_path_factory.mktemp("src") / "llama-tiny", TinyLlama(), shards=2)


# --- pure helpers ------------------------------------------------------------------------------------


def test_default_name_is_the_source_basename() -> None:
    assert default_name("/models/Llama-2-7b-chat-hf/") == "Llama-2-7b-chat-hf"
    assert default_name("s3://bucket/hf/vicuna-7b-v1.5") == "vicuna-7b-v1.5"
    assert default_name(".") == os.path.basename(os.getcwd())


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "x y"])
def test_names_that_could_escape_the_checkpoint_folder_are_refused(bad: str) -> None:
    with pytest.raises(BadInput, match="--name"):
        check_name(bad)


def test_fingerprint_lists_only_what_the_conversion_reads(hf: Path, tmp_path: Path) -> None:
    src = tmp_path / "copy"
    write_llama(src, TinyLlama(), shards=2)
    (src / "README.md").write_text("model card\n")
    found = fingerprint(str(src))
    assert sorted(found) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
    ]
    assert found["config.json"]["size"] == (src / "config.json").stat().st_size
    assert found["config.json"]["mtime"] == pytest.approx((src / "config.json").stat().st_mtime)
    with pytest.raises(BadInput, match="no such directory"):
        fingerprint(str(tmp_path / "missing"))


# --- the command, end to end ---------------------------------------------------------------------------


def test_model_step_writes_the_guide_layout_and_a_true_manifest(hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = neva("model", str(hf), str(out))
    assert proc.returncode == 0, proc.stderr
    nemo = out / "checkpoints" / "llama-tiny.nemo"
    tok = out / "tokenizers" / "tokenizer_neva.model"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "checkpoints/llama-tiny.nemo",
        "model-manifest.json",
        "tokenizers/tokenizer_neva.model",
    ]
    with tarfile.open(nemo, "r:") as tar:
        assert "./model_config.yaml" in tar.getnames()

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    ids = [sp.piece_to_id(t) for t in DEFAULT_TOKENS]
    assert ids == list(range(VOCAB, VOCAB + 8))

    m = _manifest(out)
    assert m["source"] == str(hf)
    assert m["options"] == {
        "name": "llama-tiny",
        "precision": "16",
        "layout": "mcore",
        "tokens": list(DEFAULT_TOKENS),
        "control": False,
    }
    assert m["inputs"] == fingerprint(str(hf))
    assert m["outputs"]["nemo"]["path"] == "checkpoints/llama-tiny.nemo"
    assert m["outputs"]["nemo"]["size"] == nemo.stat().st_size
    assert m["outputs"]["nemo"]["sha256"] == _sha256(nemo)
    assert m["outputs"]["tokenizer"]["size"] == tok.stat().st_size
    assert m["outputs"]["tokenizer"]["sha256"] == _sha256(tok)
    assert m["tokens"] == dict(zip(DEFAULT_TOKENS, ids, strict=True))
    assert m["outputs"]["nemo"]["sha256"] in proc.stdout


def test_rerun_skips_changed_option_redoes_and_force_redoes(hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert neva("model", str(hf), str(out), "--name", "tiny").returncode == 0
    nemo = out / "checkpoints" / "tiny.nemo"
    first = nemo.read_bytes()
    first_manifest = (out / "model-manifest.json").read_bytes()
    stamp = nemo.stat().st_mtime_ns

    again = neva("model", str(hf), str(out), "--name", "tiny")
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert nemo.stat().st_mtime_ns == stamp

    # The rest calls the same function in-process: one torch import instead of one per run.
    forced = prepare_model(str(hf), str(out), name="tiny", force=True)
    assert not forced.skipped
    assert nemo.stat().st_mtime_ns != stamp
    assert nemo.read_bytes() == first  # deterministic: the redo is byte-identical
    assert (out / "model-manifest.json").read_bytes() == first_manifest

    changed = prepare_model(str(hf), str(out), name="tiny", precision="32")
    assert not changed.skipped
    m = _manifest(out)
    assert m["options"]["precision"] == "32"
    assert m["outputs"]["nemo"]["sha256"] == _sha256(nemo) == changed.nemo_sha256
    assert nemo.stat().st_size > len(first)
    assert prepare_model(str(hf), str(out), name="tiny", precision="32").skipped
    assert not prepare_model(str(hf), str(out), name="tiny", tokens=["<x>"]).skipped


def test_damaged_marker_or_missing_output_means_redo(hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not prepare_model(str(hf), str(out)).skipped
    tok = out / "tokenizers" / "tokenizer_neva.model"
    tok.unlink()
    assert not prepare_model(str(hf), str(out)).skipped
    assert tok.exists()

    (out / "model-manifest.json").write_text('{"manifest_version": 1, "inputs": ')
    assert not prepare_model(str(hf), str(out)).skipped
    assert _manifest(out)["outputs"]["tokenizer"]["sha256"] == _sha256(tok)

    nemo = out / "checkpoints" / "llama-tiny.nemo"
    nemo.write_bytes(nemo.read_bytes()[:-512])  # a truncated checkpoint is not a complete one
    assert not prepare_model(str(hf), str(out)).skipped
    assert _manifest(out)["outputs"]["nemo"]["sha256"] == _sha256(nemo)
    assert prepare_model(str(hf), str(out)).skipped


def test_changed_source_is_converted_again(tiny_llama: Callable[..., Path], tmp_path: Path) -> None:
    src = tiny_llama(TinyLlama(), seed=1)
    out = tmp_path / "out"
    before = prepare_model(str(src), str(out)).nemo_sha256
    write_llama(src, TinyLlama(), seed=2)  # same names and sizes, new weights (new mtimes)
    after = prepare_model(str(src), str(out))
    assert not after.skipped
    assert after.nemo_sha256 != before


def test_custom_tokens_and_control(hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = prepare_model(str(hf), str(out), tokens=["<video>", "<image>"], control=True)
    assert result.token_ids == (VOCAB, VOCAB + 1)
    m = _manifest(out)
    assert m["tokens"] == {"<video>": VOCAB, "<image>": VOCAB + 1}
    assert m["options"]["control"] is True
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizers" / "tokenizer_neva.model"))
    assert VOCAB not in sp.encode("a <video> b")


def test_missing_source_exits_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = neva("model", str(tmp_path / "nope"), str(out))
    assert proc.returncode == 2, proc.stderr
    assert "no such directory" in proc.stderr and str(tmp_path / "nope") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("no-tokenizer", "tokenizer.model"),
        ("no-weights", "weights"),
        ("bad-name", "--name"),
        ("bad-token", "twice"),
        ("conflicting-token", "already exists"),
    ],
)
def test_bad_input_leaves_nothing_written(
    case: str, expect: str, tiny_llama: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {}
    src = tiny_llama(TinyLlama(), tokenizer=case != "no-tokenizer")
    if case == "no-weights":
        (src / "model.safetensors").unlink()
    elif case == "bad-name":
        kwargs["name"] = "../escape"
    elif case == "bad-token":
        kwargs["tokens"] = ["<a>", "<a>"]
    elif case == "conflicting-token":
        kwargs["tokens"] = ["<s>"]  # the BOS piece, a CONTROL piece
    with pytest.raises(BadInput, match=expect):
        prepare_model(str(src), str(out), **kwargs)
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.s3
def test_s3_source_and_output(hf: Path, s3: str) -> None:
    src = f"{s3}/hf/llama-tiny"
    for path in sorted(hf.iterdir()):
        storage.write_bytes(f"{src}/{path.name}", path.read_bytes())
    out = f"{s3}/runs/one"
    proc = neva("model", src, out)
    assert proc.returncode == 0, proc.stderr
    assert "testing-secret" not in proc.stdout + proc.stderr
    m = json.loads(storage.read_text(f"{out}/model-manifest.json"))
    nemo = storage.read_bytes(f"{out}/checkpoints/llama-tiny.nemo")
    assert m["outputs"]["nemo"]["sha256"] == hashlib.sha256(nemo).hexdigest()
    assert all("etag" in entry for entry in m["inputs"].values())
    tok = storage.read_bytes(f"{out}/tokenizers/tokenizer_neva.model")
    assert spm.SentencePieceProcessor(model_proto=tok).piece_to_id("<extra_id_0>") == VOCAB

    again = neva("model", src, out)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_legacy_layout_and_bf16_are_recorded(hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = prepare_model(str(hf), str(out), name="neva-llm", layout="legacy", precision="bf16")
    nemo = out / "checkpoints" / "neva-llm.nemo"
    with tarfile.open(nemo, "r:") as tar:
        assert "./model_weights.ckpt" in tar.getnames()
    recorded = _manifest(out)["outputs"]["nemo"]
    assert (recorded["layout"], recorded["precision"]) == ("legacy", "bf16")
    assert recorded["sha256"] == result.nemo_sha256 == _sha256(nemo)
    # the other layout is a different job, not a finished one
    assert not prepare_model(str(hf), str(out), name="neva-llm", precision="bf16").skipped


def test_sha256_is_taken_while_writing_not_by_reading_the_file_back(
    hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the .nemo back for its hash was a second full download on s3://."""
    opened: list[str] = []
    real_open = storage.open_read

    def recording_open(url: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(url)
        return real_open(url, *args, **kwargs)

    monkeypatch.setattr(storage, "open_read", recording_open)
    out = tmp_path / "out"
    result = prepare_model(str(hf), str(out))
    nemo = out / "checkpoints" / "llama-tiny.nemo"
    assert not [url for url in opened if url.endswith(".nemo")], opened
    assert result.nemo_sha256 == _sha256(nemo) == _manifest(out)["outputs"]["nemo"]["sha256"]
    assert result.nemo_bytes == nemo.stat().st_size


def test_replacing_a_result_says_what_is_replaced_and_why(
    hf: Path, tiny_llama: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert prepare_model(str(hf), str(out), name="tiny").replaced == ""
    assert prepare_model(str(hf), str(out), name="tiny").replaced == ""  # complete: nothing replaced

    p = neva("model", str(hf), str(out), "--name", "tiny", "--precision", "bf16")
    assert p.returncode == 0, p.stderr
    why = "the previous result (--precision 16 -> bf16)"
    assert f"  replaced:   {why}" in p.stdout.splitlines()
    assert f"model step: replacing {why}" in p.stderr  # said before the work starts, in the log

    renamed = prepare_model(str(hf), str(out), name="other", precision="bf16", tokens=["<video>"])
    assert renamed.replaced == (
        "the previous result (--name tiny -> other; --token "
        + ",".join(DEFAULT_TOKENS)
        + " -> <video>); checkpoints/tiny.nemo is left in place, no longer in the manifest"
    )
    forced = prepare_model(str(hf), str(out), name="other", precision="bf16", tokens=["<video>"], force=True)
    assert forced.replaced == "the previous result (--force)"

    src = tiny_llama(TinyLlama())
    out2 = tmp_path / "out2"
    prepare_model(str(src), str(out2))
    os.utime(src / "config.json", ns=(1, 1))
    assert prepare_model(str(src), str(out2)).replaced == (
        "the previous result (input files changed since: config.json)"
    )
    (out2 / "model-manifest.json").unlink()  # an interrupted run: outputs without their manifest
    assert prepare_model(str(src), str(out2)).replaced.endswith(
        "without a manifest (an earlier run did not finish)"
    )
