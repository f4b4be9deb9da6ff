"""`--layout legacy` (issue 5): `model_weights.ckpt` as NeMo's converter writes it with `mcore_gpt: false`."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import neva
from neva_prep import storage
from neva_prep.model.convert import convert_checkpoint
from neva_prep.model.verify import verify_checkpoint
from neva_prep.sample import TinyLlama, write_llama
from test_convert import hf_tensors, nemo_converter_qkv

SPEC = TinyLlama()


def legacy_keys(layers: int) -> list[str]:
    """shared/nemo-format.md §5, spelled out."""
    keys = [
        "model.language_model.embedding.word_embeddings.weight",
        "model.language_model.rotary_pos_emb.inv_freq",
    ]
    for i in range(layers):
        p = f"model.language_model.encoder.layers.{i}."
        keys += [
            p + "input_layernorm.weight",
            p + "self_attention.query_key_value.weight",
            p + "self_attention.query_key_value._extra_state",
            p + "self_attention.dense.weight",
            p + "self_attention.dense._extra_state",
            p + "post_attention_layernorm.weight",
            p + "mlp.dense_h_to_4h.weight",
            p + "mlp.dense_h_to_4h._extra_state",
            p + "mlp.dense_4h_to_h.weight",
            p + "mlp.dense_4h_to_h._extra_state",
        ]
    return [
        *keys,
        "model.language_model.encoder.final_layernorm.weight",
        "model.language_model.output_layer.weight",
        "model.language_model.output_layer._extra_state",
    ]


def expected_state(hf: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    d = SPEC.hidden_size // SPEC.num_attention_heads
    inv = 1.0 / (SPEC.rope_theta ** (torch.arange(0, d, 2).float() / d))
    out: dict[str, torch.Tensor | None] = {
        "model.language_model.embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "model.language_model.rotary_pos_emb.inv_freq": inv,
    }
    for i in range(SPEC.num_hidden_layers):
        p, s = f"model.language_model.encoder.layers.{i}.", f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = hf[s + "input_layernorm.weight"]
        out[p + "self_attention.query_key_value.weight"] = nemo_converter_qkv(
            hf[s + "self_attn.q_proj.weight"],
            hf[s + "self_attn.k_proj.weight"],
            hf[s + "self_attn.v_proj.weight"],
            SPEC.num_attention_heads,
            SPEC.num_key_value_heads,
        )
        out[p + "self_attention.dense.weight"] = hf[s + "self_attn.o_proj.weight"]
        out[p + "post_attention_layernorm.weight"] = hf[s + "post_attention_layernorm.weight"]
        out[p + "mlp.dense_h_to_4h.weight"] = torch.cat(
            (hf[s + "mlp.gate_proj.weight"], hf[s + "mlp.up_proj.weight"])
        )
        out[p + "mlp.dense_4h_to_h.weight"] = hf[s + "mlp.down_proj.weight"]
    out["model.language_model.encoder.final_layernorm.weight"] = hf["model.norm.weight"]
    out["model.language_model.output_layer.weight"] = hf["lm_head.weight"]
    return {k: (v.to(dtype) if v is not None else None) for k, v in out.items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("legacy")
    return {
        "safetensors": write_llama(root / "st", SPEC, shards=2, inv_freq=True),
        "bin": write_llama(root / "bin", SPEC, dtype=torch.bfloat16, weights="bin"),
    }


def _members(nemo: Path) -> dict[str, bytes]:
    with tarfile.open(nemo, "r:") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("source", "precision", "dtype"),
    [
        ("safetensors", "16", torch.float16),
        ("bin", "32", torch.float32),
        ("safetensors", "bf16", torch.bfloat16),
    ],
)
def test_legacy_checkpoint_equals_nemo_converter(
    sources: dict[str, Path], tmp_path: Path, source: str, precision: str, dtype: torch.dtype
) -> None:
    dst = tmp_path / "legacy.nemo"
    result = convert_checkpoint(str(sources[source]), str(dst), precision=precision, layout="legacy")
    files = _members(dst)
    assert list(files) == [".", f"./{result.tokenizer_member}", "./model_config.yaml", "./model_weights.ckpt"]
    ckpt = files["./model_weights.ckpt"]
    state = torch.load(io.BytesIO(ckpt), weights_only=True)
    assert list(state) == legacy_keys(SPEC.num_hidden_layers)
    want = expected_state(hf_tensors(sources[source]), dtype)
    for key, value in want.items():
        got = state[key]
        if value is None:
            assert got is None, key
        else:
            assert got.dtype == dtype and torch.equal(got, value), key
    # torch.save of the same dict pickles identically: the only difference is the archive's file name
    ref = io.BytesIO()
    torch.save(state, ref)
    with zipfile.ZipFile(ref) as a, zipfile.ZipFile(io.BytesIO(ckpt)) as b:
        assert a.read("archive/data.pkl") == b.read("model_weights/data.pkl")
        names = [n.removeprefix("model_weights/") for n in b.namelist()]
        assert names == [n.removeprefix("archive/") for n in a.namelist() if "serialization_id" not in n]

    conf = yaml.safe_load(files["./model_config.yaml"])
    assert conf["mcore_gpt"] is False and conf["transformer_engine"] is False
    mcore = tmp_path / "mcore.nemo"
    convert_checkpoint(str(sources[source]), str(mcore), precision=precision)
    other = yaml.safe_load(_members(mcore)["./model_config.yaml"])
    assert {k: v for k, v in conf.items() if conf[k] != other[k]} == {
        "mcore_gpt": False,
        "transformer_engine": False,
    }


def test_legacy_records_are_64_byte_aligned(sources: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "legacy.nemo"
    convert_checkpoint(str(sources["safetensors"]), str(dst), layout="legacy")
    ckpt = _members(dst)["./model_weights.ckpt"]
    with zipfile.ZipFile(io.BytesIO(ckpt)) as z:
        for info in z.infolist():
            name_len = int.from_bytes(ckpt[info.header_offset + 26 : info.header_offset + 28], "little")
            extra_len = int.from_bytes(ckpt[info.header_offset + 28 : info.header_offset + 30], "little")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED


def test_legacy_verify_and_logits(sources: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "legacy.nemo"
    convert_checkpoint(str(sources["bin"]), str(dst), layout="legacy", precision="bf16")
    result = verify_checkpoint(str(sources["bin"]), str(dst))
    assert result.layout == "legacy" and result.tensors == 4 + 6 * SPEC.num_hidden_layers
    assert result.max_logit_diff is not None and result.max_logit_diff < 1e-3


def test_legacy_refuses_grouped_query_attention(tmp_path: Path) -> None:
    src = write_llama(tmp_path / "gqa", TinyLlama(num_key_value_heads=2))
    dst = tmp_path / "out" / "gqa.nemo"
    p = neva("checkpoint", "convert", str(src), str(dst), "--layout", "legacy")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "grouped-query attention" in lines[0] and "--layout mcore" in lines[0]
    assert not (tmp_path / "out").exists()


def test_legacy_to_s3_equals_local(s3: str, sources: dict[str, Path], tmp_path: Path) -> None:
    local = tmp_path / "legacy.nemo"
    convert_checkpoint(str(sources["safetensors"]), str(local), layout="legacy")
    convert_checkpoint(str(sources["safetensors"]), f"{s3}/legacy.nemo", layout="legacy")
    assert storage.read_bytes(f"{s3}/legacy.nemo") == local.read_bytes()
