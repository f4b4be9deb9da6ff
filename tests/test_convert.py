"""`checkpoint convert` on real tiny LLaMA checkpoints: the `.nemo` tar, its zarr arrays and YAML, checked
against an independent re-implementation of NeMo's converter loop (numpy/torch here, not our mapping)."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import neva
from neva_prep.errors import BadInput
from neva_prep.model import config as nemo_config
from neva_prep.model.convert import convert_checkpoint
from neva_prep.model.hf import LlamaConfig
from neva_prep.sample import TinyLlama, write_llama

GQA = TinyLlama(num_attention_heads=4, num_key_value_heads=2)
NP_DTYPES = {"<f2": np.float16, "<f4": np.float32}


def hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.iterdir()):
        if f.suffix == ".safetensors":
            out.update(load_file(f))
        elif f.suffix == ".bin":
            out.update(torch.load(f, weights_only=True))
    return out


def nemo_converter_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int
) -> torch.Tensor:
    """NeMo's own loop (convert_llama_hf_to_nemo.py), restated: per group, its q heads, then k, then v."""
    h = q.shape[1]
    d = h // heads
    q, k, v = q.view(heads, d, h), k.view(groups, d, h), v.view(groups, d, h)
    per = heads // groups
    out = torch.empty((0, d, h), dtype=q.dtype)
    for i in range(groups):
        out = torch.cat((out, q[i * per : (i + 1) * per], k[i : i + 1], v[i : i + 1]))
    return out.reshape(-1, h)


def decode(data: bytes, zarray: dict[str, object]) -> torch.Tensor:
    """A zarr chunk as numpy would read it (raw little-endian C order)."""
    dt = zarray["dtype"]
    if dt == "bfloat16":
        return torch.from_numpy(np.frombuffer(data, dtype="<i2").copy()).view(torch.bfloat16)
    return torch.from_numpy(np.frombuffer(data, dtype=NP_DTYPES[str(dt)]).copy())


def expected_arrays(
    hf: dict[str, torch.Tensor], spec: TinyLlama, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Stacked mcore arrays for a checkpoint, built the way NeMo's converter + megatron-core do."""
    L = spec.num_hidden_layers

    def layer(name: str, i: int) -> torch.Tensor:
        return hf[f"model.layers.{i}.{name}"].to(dtype)

    stack: dict[str, list[torch.Tensor]] = {}
    for i in range(L):
        qkv = nemo_converter_qkv(
            layer("self_attn.q_proj.weight", i),
            layer("self_attn.k_proj.weight", i),
            layer("self_attn.v_proj.weight", i),
            spec.num_attention_heads,
            spec.num_key_value_heads,
        )
        per = {
            "self_attention.linear_qkv.layer_norm_weight": layer("input_layernorm.weight", i),
            "self_attention.linear_qkv.weight": qkv,
            "self_attention.linear_proj.weight": layer("self_attn.o_proj.weight", i),
            "mlp.linear_fc1.layer_norm_weight": layer("post_attention_layernorm.weight", i),
            "mlp.linear_fc1.weight": torch.cat(
                (layer("mlp.gate_proj.weight", i), layer("mlp.up_proj.weight", i))
            ),
            "mlp.linear_fc2.weight": layer("mlp.down_proj.weight", i),
        }
        for k, v in per.items():
            stack.setdefault("model.decoder.layers." + k, []).append(v)
    out = {k: torch.stack(v) for k, v in stack.items()}
    out["model.embedding.word_embeddings.weight"] = hf["model.embed_tokens.weight"].to(dtype)
    out["model.decoder.final_layernorm.weight"] = hf["model.norm.weight"].to(dtype)
    out["model.output_layer.weight"] = hf["lm_head.weight"].to(dtype)
    return out


CHUNK = re.compile(r"^\./model_weights/[^/]+/[0-9.]+$")


def tar_walk_order(names: list[str]) -> list[str]:
    """The order `tarfile.add(dir, arcname='.')` visits a tree: a directory, then its sorted entries."""
    tree: dict[str, list[str]] = {}
    for n in names:
        if n == ".":
            continue
        parent = n.rsplit("/", 1)[0]
        tree.setdefault(parent, []).append(n)

    def walk(node: str) -> list[str]:
        out = [node]
        for child in sorted(tree.get(node, []), key=lambda c: c.rsplit("/", 1)[1]):
            out += walk(child)
        return out

    return walk(".")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "mha": write_llama(root / "mha", TinyLlama(), shards=2, inv_freq=True),
        "gqa": write_llama(root / "gqa", GQA, dtype=torch.float32),
        "bf16": write_llama(root / "bf16", TinyLlama(), dtype=torch.bfloat16, weights="bin", shards=2),
    }


CASES = [
    ("mha", TinyLlama(), "16", torch.float16),
    ("mha", TinyLlama(), "32", torch.float32),
    ("gqa", GQA, "bf16", torch.bfloat16),
    ("gqa", GQA, "16", torch.float16),
    ("bf16", TinyLlama(), "32", torch.float32),
]


@pytest.mark.parametrize(("model", "spec", "precision", "dtype"), CASES)
def test_mcore_nemo_matches_nemo_converter(
    models: dict[str, Path], tmp_path: Path, model: str, spec: TinyLlama, precision: str, dtype: torch.dtype
) -> None:
    dst = tmp_path / "out.nemo"
    result = convert_checkpoint(str(models[model]), str(dst), precision=precision)
    assert result.layout == "mcore" and result.bytes_written == dst.stat().st_size
    raw = dst.read_bytes()
    assert raw[257:262] == b"ustar"  # an uncompressed tar: the first header is right at byte 0
    with tarfile.open(dst, "r:") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[0] == "." and members[0].isdir()
        assert all(n.startswith("./") for n in names[1:])
        # NeMo's order (a directory, then its sorted entries) for all but the tensor chunks, which follow
        # in the order their bytes lie in the source files (read sequentially, not in nine passes)
        walk = tar_walk_order(names)
        structure = [n for n in walk if not CHUNK.match(n)]
        assert names[: len(structure)] == structure and sorted(names) == sorted(walk)
        assert len(names) > len(structure)
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    if precision == "16" and model == "mha":  # chunks copied unchanged: find each one's bytes in the source
        shards = [p.read_bytes() for p in sorted(models[model].glob("*.safetensors"))]
        found = []
        for name in names[len(structure) :]:
            hits = [(i, shard.find(files[name])) for i, shard in enumerate(shards) if files[name] in shard]
            found += hits[:1]  # a fused QKV chunk is not one source range; every other chunk is
        assert len(found) > len(names[len(structure) :]) // 2
        assert found == sorted(found)
    tok = f"./{result.tokenizer_member}"
    assert len(result.tokenizer_member) == len("_tokenizer.model") + 32
    assert files[tok] == (models[model] / "tokenizer.model").read_bytes()
    conf = yaml.safe_load(files["./model_config.yaml"])
    assert conf["tokenizer"]["model"] == f"nemo:{result.tokenizer_member}"
    assert conf["precision"] == (precision if precision == "bf16" else int(precision))
    assert (conf["num_layers"], conf["num_query_groups"], conf["mcore_gpt"]) == (
        spec.num_hidden_layers,
        spec.num_key_value_heads,
        True,
    )
    assert json.loads(files["./model_weights/metadata.json"]) == {
        "sharded_backend": "zarr",
        "sharded_backend_version": 1,
        "common_backend": "torch",
        "common_backend_version": 1,
    }
    assert torch.load(io.BytesIO(files["./model_weights/common.pt"]), weights_only=True) == {}

    hf = hf_tensors(models[model])
    L = spec.num_hidden_layers
    arrays = expected_arrays(hf, spec, dtype)
    zarr_dirs = sorted({n.split("/")[2] for n in names if n.endswith("/.zarray")})
    assert zarr_dirs == sorted(arrays)
    for key, want in arrays.items():
        base = f"./model_weights/{key}"
        meta_bytes = files[f"{base}/.zarray"]
        meta = json.loads(meta_bytes)
        assert meta_bytes == json.dumps(meta, indent=4, sort_keys=True).encode()
        zdtype = {torch.float16: "<f2", torch.float32: "<f4", torch.bfloat16: "bfloat16"}[dtype]
        assert meta == {
            "chunks": meta["chunks"],
            "compressor": None,
            "dtype": zdtype,
            "fill_value": None,
            "filters": None,
            "order": "C",
            "shape": list(want.shape),
            "zarr_format": 2,
        }
        chunk_files = sorted(
            n[len(base) + 1 :] for n in files if n.startswith(base + "/") and "zarray" not in n
        )
        if key.startswith("model.decoder.layers."):
            halves = 2 if key.endswith("linear_fc1.weight") else 1
            assert meta["chunks"] == [1, want.shape[1] // halves, *want.shape[2:]]
            for i in range(L):
                for half, piece in enumerate(want[i].chunk(halves)):
                    name = ".".join(str(x) for x in (i, half, *([0] * (want.dim() - 2))))
                    got = decode(files[f"{base}/{name}"], meta).view(piece.shape)
                    assert torch.equal(got, piece), f"{key} chunk {name}"
            assert len(chunk_files) == L * halves
        else:
            assert meta["chunks"] == list(want.shape)
            assert chunk_files == [".".join("0" * want.dim())]
            assert torch.equal(decode(files[f"{base}/{chunk_files[0]}"], meta).view(want.shape), want)

    for module in (
        "self_attention.linear_qkv",
        "self_attention.linear_proj",
        "mlp.linear_fc1",
        "mlp.linear_fc2",
    ):
        base = f"./model_weights/model.decoder.layers.{module}._extra_state"
        shards = sorted(n[len(base) + 1 :] for n in files if n.startswith(base + "/"))
        assert shards == sorted(f"shard_{i}_{L}.pt" for i in range(L))
        for s in shards:
            buf = torch.load(io.BytesIO(files[f"{base}/{s}"]), weights_only=False)  # what NeMo does
            assert isinstance(buf, io.BytesIO) and buf.tell() == len(buf.getvalue())
            buf.seek(0)
            assert torch.load(buf, weights_only=False) is None
    assert not any("core_attention" in n or "output_layer._extra_state" in n for n in names)


def test_conversion_is_deterministic(models: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a.nemo", tmp_path / "b.nemo"
    convert_checkpoint(str(models["gqa"]), str(a))
    convert_checkpoint(str(models["gqa"]), str(b))
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nemo", "b.nemo"]  # no temporaries left


def test_yaml_for_llama2_7b_chat_is_exactly_nemos() -> None:
    """config.json values of meta-llama/Llama-2-7b-chat-hf give the YAML NeMo wrote (tests/data)."""
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.02,
    )
    member = "0123456789abcdef0123456789abcdef_tokenizer.model"
    got = nemo_config.dump(nemo_config.model_config(cfg, tokenizer_member=member, precision="16")).decode()
    text = (Path(__file__).parent / "data" / "model_config.llama-2-7b-chat.yaml").read_text()
    want = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert got == want.replace("<32 hex chars>_tokenizer.model", member)


def test_yaml_rope_scaling_and_vocab_divisor() -> None:
    cfg = LlamaConfig(64, 172, 2, 4, 2, 32032, 256, 1e-6, 500000.0, 0.01, rope_scaling_factor=4.0)
    conf = nemo_config.model_config(cfg, tokenizer_member="x_tokenizer.model", precision="bf16")
    keys = list(conf)
    assert keys[-5:] == ["rotary_base", "seq_len_interpolation_factor", "precision", "target", "nemo_version"]
    assert conf["seq_len_interpolation_factor"] == 4.0 and conf["rotary_base"] == 500000.0
    assert conf["make_vocab_size_divisible_by"] == 32 and conf["precision"] == "bf16"
    assert conf["data"]["seq_length"] == 256 and conf["num_query_groups"] == 2


def test_logits_of_converted_weights_match_transformers(models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from neva_prep.model import llama
    from neva_prep.model.nemo_format import NemoReader

    dst = tmp_path / "gqa.nemo"
    convert_checkpoint(str(models["gqa"]), str(dst), precision="32")
    with dst.open("rb") as f:
        weights = dict(NemoReader(f).mcore_tensors(GQA.num_hidden_layers))
    tokens = torch.randint(0, GQA.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    ref = LlamaForCausalLM.from_pretrained(models["gqa"], torch_dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(tokens).logits
        got = llama.forward(weights, tokens, num_layers=2, num_heads=4, num_groups=2, eps=GQA.rms_norm_eps)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_cli_convert_prints_summary(models: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "m.nemo"
    p = neva("checkpoint", "convert", str(models["mha"]), str(dst), "--precision", "bf16", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "mcore layout, precision bf16" in p.stdout and dst.is_file()


# --- bad input: exit 2, one line naming the file, nothing at the destination ----------------------------


def _copy(models: dict[str, Path], tmp_path: Path, name: str = "mha") -> Path:
    return Path(shutil.copytree(models[name], tmp_path / "src"))


def _edit_config(src: Path, **changes: object) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def _truncate(src: Path) -> None:
    shard = src / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


def _corrupt(src: Path) -> None:
    shard = src / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"\xff" * 8 + shard.read_bytes()[8:])


def _missing_shard(src: Path) -> None:
    (src / "model-00002-of-00002.safetensors").unlink()


def _no_weights(src: Path) -> None:
    for f in src.glob("model*"):
        f.unlink()


def _wrong_tokenizer(src: Path) -> None:
    from neva_prep.sample import train_tokenizer

    train_tokenizer(src / "tokenizer.model", 320)


def _wrong_shape(src: Path) -> None:
    _edit_config(src, intermediate_size=180)


def _pickled_bin(src: Path) -> None:
    _no_weights(src)
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Path("/etc")}, src / "pytorch_model.bin")


BAD = [
    ("missing", lambda s: shutil.rmtree(s), "no such checkpoint directory"),
    ("truncated", _truncate, "model-00002-of-00002.safetensors: truncated"),
    ("corrupt", _corrupt, "model-00001-of-00002.safetensors: corrupt safetensors header"),
    ("missing-shard", _missing_shard, "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    ("no-weights", _no_weights, "no weights"),
    (
        "not-llama",
        lambda s: _edit_config(s, model_type="mistral", architectures=["MistralForCausalLM"]),
        "not a LLaMA",
    ),
    (
        "rope",
        lambda s: _edit_config(s, rope_scaling={"type": "dynamic", "factor": 2.0}),
        "'dynamic' is not supp",
    ),
    ("no-tokenizer", lambda s: (s / "tokenizer.model").unlink(), "tokenizer.model: missing"),
    ("tokenizer-size", _wrong_tokenizer, "tokenizer.model: 320 pieces but config.json vocab_size is 384"),
    ("shape", _wrong_shape, "has shape [172, 64], config.json implies [180, 64]"),
    ("pickle", _pickled_bin, "pytorch_model.bin: holds Python objects other than tensors (a pickled path"),
]


@pytest.mark.parametrize(("case", "breaks", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_writing(
    models: dict[str, Path], tmp_path: Path, case: str, breaks: Callable[[Path], None], message: str
) -> None:
    src = _copy(models, tmp_path)
    breaks(src)
    dst = tmp_path / "out" / "model.nemo"
    with pytest.raises(BadInput) as err:
        convert_checkpoint(str(src), str(dst))
    text = str(err.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_input_cli_exits_2_with_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    src = _copy(models, tmp_path)
    _truncate(src)
    dst = tmp_path / "model.nemo"
    p = neva("checkpoint", "convert", str(src), str(dst))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated safetensors file" in lines[0] and "Traceback" not in p.stderr
    assert not dst.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["src"]


def test_unwritable_destination_is_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BadInput, match="cannot write destination"):
        convert_checkpoint(str(models["mha"]), str(blocker / "model.nemo"))
    with pytest.raises(BadInput, match="is a directory"):
        convert_checkpoint(str(models["mha"]), str(tmp_path))


def test_bad_options_are_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    for kwargs in ({"precision": "8"}, {"layout": "zarr"}, {"device": "tpu"}):
        with pytest.raises(BadInput):
            convert_checkpoint(str(models["mha"]), str(tmp_path / "x.nemo"), **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("heads", "groups"), [(4, 4), (4, 2), (8, 1), (64, 8)])
def test_qkv_fusion_is_nemos_loop_and_split_inverts_it(heads: int, groups: int) -> None:
    from neva_prep.model.mapping import fuse_qkv, split_qkv

    d = 3
    h = heads * d
    g = torch.Generator().manual_seed(heads * 100 + groups)
    q, k = torch.randn(heads * d, h, generator=g), torch.randn(groups * d, h, generator=g)
    v = torch.randn(groups * d, h, generator=g)
    fused = fuse_qkv(q, k, v, heads, groups)
    assert torch.equal(fused, nemo_converter_qkv(q, k, v, heads, groups))
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fused, heads, groups), (q, k, v), strict=True))


def test_bin_holding_objects_is_refused_in_our_words(models: dict[str, Path], tmp_path: Path) -> None:
    """A security refusal says what was found and what to do; it never suggests turning the check off
    (torch's own message suggests `weights_only=False`)."""
    import argparse

    from neva_prep.sample import llama_state_dict

    src = _copy(models, tmp_path)
    _no_weights(src)
    state = {**llama_state_dict(TinyLlama()), "args": argparse.Namespace(lr=1e-4)}  # as training scripts save
    torch.save(state, src / "pytorch_model.bin")
    dst = tmp_path / "out" / "model.nemo"
    p = neva("checkpoint", "convert", str(src), str(dst))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert (
        "pytorch_model.bin: holds Python objects other than tensors (a pickled argparse.Namespace)"
        in lines[0]
    )
    assert "safetensors" in lines[0] and "a tool you trust" in lines[0]
    assert "weights_only" not in p.stderr and "add_safe_globals" not in p.stderr
    assert not (tmp_path / "out").exists()
