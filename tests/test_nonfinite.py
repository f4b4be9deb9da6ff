"""NaN and ±Inf weights: `checkpoint convert` refuses them (exit 2, tensor and first bad index), whichever
path the bytes take (kernel copy, cast, fused QKV, `.bin`, legacy zip); `checkpoint verify` reports them and
never crashes."""

from __future__ import annotations

import math
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import neva
from neva_prep.errors import BadInput
from neva_prep.model.convert import convert_checkpoint
from neva_prep.model.digest import StreamDigest
from neva_prep.sample import TinyLlama, write_llama

SPEC = TinyLlama(num_key_value_heads=2)


def _poison(src: Path, name: str, index: tuple[int, ...], value: float) -> None:
    """Set one value of tensor `name` in whichever weight file of `src` holds it."""
    for path in sorted(src.glob("*.safetensors")):
        tensors = load_file(path)
        if name in tensors:
            tensors[name][index] = value
            save_file(tensors, path, metadata={"format": "pt"})
            return
    for path in sorted(src.glob("*.bin")):
        state = torch.load(path, weights_only=True)
        if name in state:
            state[name][index] = value
            torch.save(state, path)
            return
    raise AssertionError(f"{name} not found in {src}")


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


CASES = [
    # (id, weights, source dtype, precision, layout, tensor, index, value)
    ("copied-kernel-side", "safetensors", torch.float16, "16", "mcore",
     "model.layers.1.mlp.down_proj.weight", (5, 7), math.nan),
    ("fused-qkv-copied", "safetensors", torch.float16, "16", "mcore",
     "model.layers.0.self_attn.k_proj.weight", (31, 2), math.inf),
    ("cast-fp32-to-fp16", "safetensors", torch.float32, "16", "mcore",
     "model.embed_tokens.weight", (3, 4), -math.inf),
    ("norm-vector", "safetensors", torch.bfloat16, "bf16", "mcore", "model.norm.weight", (17,), math.nan),
    ("bin-shard", "bin", torch.float16, "16", "mcore", "lm_head.weight", (383, 63), math.nan),
    ("legacy-zip", "safetensors", torch.float16, "16", "legacy",
     "model.layers.1.self_attn.q_proj.weight", (0, 1), math.nan),
]  # fmt: skip


@pytest.mark.parametrize(
    ("weights", "dtype", "precision", "layout", "name", "index", "value"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_non_finite_weight_is_refused_naming_tensor_and_index(
    tmp_path: Path,
    weights: str,
    dtype: torch.dtype,
    precision: str,
    layout: str,
    name: str,
    index: tuple[int, ...],
    value: float,
) -> None:
    spec = TinyLlama() if layout == "legacy" else SPEC  # legacy cannot hold grouped-query attention
    src = write_llama(tmp_path / "hf", spec, dtype=dtype, weights=weights, shards=2)
    _poison(src, name, index, value)
    out = tmp_path / "out"
    with pytest.raises(BadInput) as err:
        convert_checkpoint(str(src), str(out / "model.nemo"), precision=precision, layout=layout)
    text = str(err.value)
    assert f"tensor {name!r} holds {value} at index {list(index)}" in text and "\n" not in text
    assert _nothing_written(out)


def test_index_is_right_past_the_first_read_back_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernel-copied bytes are checked in pieces: the index must count the pieces before the bad one."""
    monkeypatch.setattr(StreamDigest, "PIECE", 1024)
    src = write_llama(tmp_path / "hf", SPEC)
    _poison(src, "lm_head.weight", (300, 10), math.nan)  # byte 38420 of the tensor: piece 37
    with pytest.raises(BadInput, match=r"'lm_head\.weight' holds nan at index \[300, 10\]"):
        convert_checkpoint(str(src), str(tmp_path / "model.nemo"))
    assert not (tmp_path / "model.nemo").exists()


def test_value_the_output_precision_cannot_hold_is_refused(tmp_path: Path) -> None:
    src = write_llama(tmp_path / "hf", SPEC, dtype=torch.float32)
    _poison(src, "model.layers.0.self_attn.q_proj.weight", (2, 3), 1.0e5)  # > fp16's 65504
    with pytest.raises(BadInput, match=r"value 100000\.0 at index \[2, 3\] overflows float16"):
        convert_checkpoint(str(src), str(tmp_path / "fp16.nemo"), precision="16")
    convert_checkpoint(str(src), str(tmp_path / "bf16.nemo"), precision="bf16")  # bf16 holds it


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    src = write_llama(tmp_path / "hf", SPEC, shards=2)
    _poison(src, "model.layers.1.mlp.up_proj.weight", (100, 0), math.nan)
    out = tmp_path / "out"
    p = neva("checkpoint", "convert", str(src), str(out / "model.nemo"))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "model-00002-of-00002.safetensors" in lines[0] or "model-00001-of-00002.safetensors" in lines[0]
    assert "'model.layers.1.mlp.up_proj.weight' holds nan at index [100, 0]" in lines[0]
    assert _nothing_written(out)


# --- verify -------------------------------------------------------------------------------------------


def _set_in_nemo(nemo: Path, member: str, flat: int, value: float) -> None:
    """Write one fp16 value into a tensor chunk of a .nemo, in place."""
    with tarfile.open(nemo) as tar:
        offset = tar.getmember(member).offset_data
    with nemo.open("r+b") as f:
        f.seek(offset + 2 * flat)
        f.write(torch.tensor([value], dtype=torch.float16).view(torch.int16).numpy().tobytes())


OUTPUT = "./model_weights/model.output_layer.weight/0.0"


def test_verify_reports_nan_in_the_source_instead_of_crashing(tmp_path: Path) -> None:
    """NaN in the source and in the .nemo at the same place (a .nemo made before convert checked): once an
    IndexError in verify; now bad input naming the source tensor."""
    src = write_llama(tmp_path / "hf", SPEC)
    nemo = tmp_path / "model.nemo"
    convert_checkpoint(str(src), str(nemo))
    _poison(src, "lm_head.weight", (0, 5), math.nan)
    _set_in_nemo(nemo, OUTPUT, 5, math.nan)
    p = neva("checkpoint", "verify", str(src), str(nemo), "--no-logits")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "model.safetensors: tensor 'lm_head.weight' holds nan at index [0, 5]" in lines[0]


def test_verify_reports_nan_in_the_nemo_as_a_finding(tmp_path: Path) -> None:
    src = write_llama(tmp_path / "hf", SPEC)
    nemo = tmp_path / "model.nemo"
    convert_checkpoint(str(src), str(nemo))
    _set_in_nemo(nemo, OUTPUT, 64 + 2, math.inf)
    p = neva("checkpoint", "verify", str(src), str(nemo), "--no-logits")
    assert p.returncode == 3, p.stderr  # a check's finding
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "model.output_layer.weight holds inf at index [1, 2], where the source is finite" in lines[0]
