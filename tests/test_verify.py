"""`checkpoint verify`: agrees on a faithful conversion, names the first difference on a tampered one."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from conftest import neva
from neva_prep.errors import BadInput, CheckFailed
from neva_prep.model.convert import convert_checkpoint
from neva_prep.model.verify import verify_checkpoint
from neva_prep.sample import TinyLlama, write_llama

GQA = TinyLlama(num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    src = write_llama(root / "hf", GQA, dtype=torch.float32, shards=2)
    dst = root / "gqa.nemo"
    convert_checkpoint(str(src), str(dst), precision="16")
    return src, dst


def _tamper(nemo: Path, member: str, out: Path) -> None:
    """Copy `nemo` with one byte of `member`'s data changed (the fp16 value's high byte)."""
    data = bytearray(nemo.read_bytes())
    with tarfile.open(nemo) as tar:
        m = tar.getmember(member)
    data[m.offset_data + 5] ^= 0x40
    out.write_bytes(bytes(data))


def test_verify_agrees_with_a_faithful_conversion(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    result = verify_checkpoint(str(src), str(dst))
    assert result.tensors == 3 + 6 * GQA.num_hidden_layers and result.layout == "mcore"
    assert result.max_logit_diff is not None and result.max_logit_diff < 1e-3


def test_verify_names_the_first_difference(converted: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = converted
    bad = tmp_path / "bad.nemo"
    _tamper(dst, "./model_weights/model.decoder.layers.self_attention.linear_qkv.weight/1.0.0", bad)
    with pytest.raises(
        CheckFailed, match=r"model\.decoder\.layers\.1\.self_attention\.linear_qkv\.weight: differs"
    ):
        verify_checkpoint(str(src), str(bad), logits=False)


def test_verify_against_another_source_fails(converted: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = converted
    other = write_llama(tmp_path / "other", GQA, dtype=torch.float32, seed=7)
    with pytest.raises(CheckFailed, match="differs"):
        verify_checkpoint(str(other), str(dst), logits=False)
    not_nemo = tmp_path / "x.nemo"
    not_nemo.write_bytes(b"not a tar" * 100)
    with pytest.raises(BadInput, match=r"not a \.nemo"):
        verify_checkpoint(str(src), str(not_nemo))


def test_verify_cli_exit_codes(converted: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = converted
    ok = neva("checkpoint", "verify", str(src), str(dst), "--no-logits")  # logits: checked in-process above
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK ") and "15 tensors equal" in ok.stdout
    bad = tmp_path / "bad.nemo"
    _tamper(dst, "./model_weights/model.output_layer.weight/0.0", bad)
    p = neva("checkpoint", "verify", str(src), str(bad), "--no-logits")
    assert p.returncode == 3  # a check that found a difference: not retryable
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.output_layer.weight: differs from the source at index" in lines[0]
