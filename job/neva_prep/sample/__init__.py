"""The built-in sample: a tiny random LLaMA in Hugging Face layout, a real SentencePiece tokenizer,
a WebVid-style CSV and a LLaVA-style JSON, plus a plan that runs them all (`make run`).

The same generators make the tiny models the tests convert and compare against transformers: they write
exactly what `LlamaForCausalLM.save_pretrained` and a LLaMA tokenizer repo look like, without a hub.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import sentencepiece as spm
import torch
import yaml
from safetensors.torch import save_file

from neva_prep import storage
from neva_prep.errors import BadInput


@dataclass(frozen=True)
class TinyLlama:
    """Shape of a generated LLaMA; the defaults are a 2-layer multi-head model."""

    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02


def _corpus() -> list[str]:
    text = resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def train_tokenizer(path: str | os.PathLike[str], vocab_size: int = 384) -> None:
    """Train a LLaMA-like SentencePiece model (BPE, byte fallback, unk/bos/eos = 0/1/2) on the sample text."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    Path(path).write_bytes(buf.getvalue())


def hf_config(spec: TinyLlama, dtype: torch.dtype = torch.float16) -> dict[str, object]:
    """The `config.json` transformers writes for a LLaMA of this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **asdict(spec),
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_scaling": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def llama_state_dict(
    spec: TinyLlama, dtype: torch.dtype = torch.float16, seed: int = 0, inv_freq: bool = False
) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face's names, deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    h, f, v = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    d = h // spec.num_attention_heads
    kv = spec.num_key_value_heads * d

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * spec.initializer_range * 4).to(dtype)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(h, generator=g)).to(dtype)

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": w(v, h)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = w(h, h)
        sd[p + "self_attn.k_proj.weight"] = w(kv, h)
        sd[p + "self_attn.v_proj.weight"] = w(kv, h)
        sd[p + "self_attn.o_proj.weight"] = w(h, h)
        if inv_freq:  # real Llama-2 repos carry this buffer; converters must ignore it
            sd[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (
                spec.rope_theta ** (torch.arange(0, d, 2).float() / d)
            )
        sd[p + "mlp.gate_proj.weight"] = w(f, h)
        sd[p + "mlp.up_proj.weight"] = w(f, h)
        sd[p + "mlp.down_proj.weight"] = w(h, f)
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "post_attention_layernorm.weight"] = norm()
    sd["model.norm.weight"] = norm()
    sd["lm_head.weight"] = w(v, h)
    return sd


def _split(names: list[str], shards: int) -> list[list[str]]:
    size = -(-len(names) // shards)
    return [names[i : i + size] for i in range(0, len(names), size)]


def write_llama(
    directory: str | os.PathLike[str],
    spec: TinyLlama = TinyLlama(),
    *,
    dtype: torch.dtype = torch.float16,
    weights: str = "safetensors",
    shards: int = 1,
    seed: int = 0,
    inv_freq: bool = False,
    tokenizer: bool = True,
) -> Path:
    """Write a Hugging Face LLaMA directory: config.json, tokenizer.model, weights (safetensors or .bin)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(hf_config(spec, dtype), indent=2) + "\n")
    if tokenizer:
        train_tokenizer(root / "tokenizer.model", spec.vocab_size)
    sd = llama_state_dict(spec, dtype, seed, inv_freq)
    groups = _split(list(sd), shards)
    ext, stem = ("safetensors", "model") if weights == "safetensors" else ("bin", "pytorch_model")
    weight_map: dict[str, str] = {}
    for i, names in enumerate(groups, start=1):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
        part = {n: sd[n].contiguous() for n in names}
        if weights == "safetensors":
            save_file(part, root / fname, metadata={"format": "pt"})
        else:
            torch.save(part, root / fname)
        weight_map.update(dict.fromkeys(names, fname))
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root


MARKER = ".neva-prep-sample"
"""Written first into a sample folder: its `input/` and `plan.yaml` are the tool's own to replace."""
_PLAN_HEADER = "# The built-in sample plan (`neva-prep sample DIR`); run it with `neva-prep launch local`.\n"


def _is_sample(root: Path) -> bool:
    """A previous sample: our marker, or the plan header samples wrote before there was a marker."""
    if (root / MARKER).is_file():
        return True
    try:
        with open(root / "plan.yaml", encoding="utf-8") as f:
            return f.readline() == _PLAN_HEADER
    except OSError:
        return False


def write_sample(directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write the built-in sample (tiny model, data, plan) under `directory`; returns the plan path.

    It replaces only what a previous sample made (`input/`, `plan.yaml`): a non-empty folder that is not a
    sample is refused (BadInput) unless `force`, so a mistyped DIR never loses a user's files."""
    root = Path(directory).resolve()
    storage.ensure_writable(str(root))
    if root.exists() and not root.is_dir():
        raise BadInput(f"{root}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not force and not _is_sample(root):
        raise BadInput(
            f"{root}: not empty and not a previous sample (no {MARKER}); "
            "choose an empty or new folder, or pass --force to write the sample into it"
        )
    storage.makedirs(str(root))
    (root / MARKER).write_text("neva-prep sample: input/ and plan.yaml are re-made by `neva-prep sample`\n")
    shutil.rmtree(root / "input", ignore_errors=True)
    write_llama(root / "input" / "llama-tiny", TinyLlama(), shards=2)
    data = root / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("webvid.csv", "llava.json"):
        shutil.copyfile(str(resources.files(__package__).joinpath(name)), data / name)
    return _write_plan(root)


def _write_plan(root: Path) -> Path:
    """Write `root/plan.yaml` running the model step and both sample datasets into `root/output`.

    Paths are absolute so that the plan runs from any directory; the model step asks for no GPU so that
    `make run` works on any machine."""
    data = root / "input" / "data"
    plan = {
        "name": "neva-sample",
        "output": str(root / "output"),
        "image": "neva-prep:latest",
        "model": {"source": str(root / "input" / "llama-tiny"), "name": "llama-tiny", "gpus": 0},
        "datasets": [
            {
                "name": "webvid",
                "source": str(data / "webvid.csv"),
                "from": "webvid",
                "media": "video",
                "shards": 3,
            },
            {
                "name": "llava",
                "source": str(data / "llava.json"),
                "from": "llava",
                "media": "image",
                "shards": 2,
            },
        ],
    }
    path = root / "plan.yaml"
    path.write_text(
        _PLAN_HEADER + yaml.safe_dump(plan, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path
