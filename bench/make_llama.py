"""Write a synthetic Llama-2-shaped Hugging Face checkpoint for benchmarking, one tensor at a time.

    python bench/make_llama.py OUT [--shape 7b|70b-slice] [--layers N]

- `7b`: Llama-2-7B (13.5 GB fp16), the real repo's shard split: embeddings + layers 0-23 in shard 1, the
  rest in shard 2, plus per-layer `self_attn.rotary_emb.inv_freq` buffers (fp32) as old repos carry.
- `70b-slice`: Llama-2-70B's widths (hidden 8192, 64 heads, 8 KV heads, ffn 28672, vocab 32000) with a few
  layers (default 4): the largest tensors a 70B conversion meets.

Weights are deterministic fp16 noise: a 32 MiB pool of N(0, 0.02) values, each tensor a different rotation
of it (generating 6.7 B fresh normals would dominate the run; the converter does not care about values).
The tokenizer is a real SentencePiece model trained on the sample corpus, then padded with synthetic
pieces to exactly 32000 (sentencepiece cannot learn 32000 pieces from a few KB): the piece count must
match `vocab_size` or the converter refuses it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPES = {
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "70b-slice": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 4,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
    },
}
VOCAB = 32000
POOL = 16 * 2**20  # values


def config(shape: str, layers: int | None) -> dict[str, object]:
    cfg: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **SHAPES[shape],
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "rope_scaling": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def tensors(cfg: dict[str, int]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) in the order of HF's LlamaForCausalLM state dict."""
    h, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", "F16", (VOCAB, h))]
    for i in range(n):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", "F16", (h, h)),
            (p + "self_attn.k_proj.weight", "F16", (kv, h)),
            (p + "self_attn.v_proj.weight", "F16", (kv, h)),
            (p + "self_attn.o_proj.weight", "F16", (h, h)),
            (p + "self_attn.rotary_emb.inv_freq", "F32", (d // 2,)),
            (p + "mlp.gate_proj.weight", "F16", (f, h)),
            (p + "mlp.up_proj.weight", "F16", (f, h)),
            (p + "mlp.down_proj.weight", "F16", (h, f)),
            (p + "input_layernorm.weight", "F16", (h,)),
            (p + "post_attention_layernorm.weight", "F16", (h,)),
        ]
    return [*out, ("model.norm.weight", "F16", (h,)), ("lm_head.weight", "F16", (VOCAB, h))]


def shard_of(name: str, layers: int) -> int:
    """The real Llama-2-7b split: embeddings + the first 3/4 of the layers in shard 1."""
    if name.startswith("model.layers."):
        return 1 if int(name.split(".")[2]) < layers * 3 // 4 else 2
    return 1 if name.startswith("model.embed_tokens") else 2


def write_safetensors(path: Path, items: list[tuple[str, str, tuple[int, ...]]], pool: np.ndarray) -> int:
    """A safetensors file written tensor by tensor (header first, sorted names as `save_file` does)."""
    items = sorted(items)
    size = {"F16": 2, "F32": 4}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dt, shape in items:
        n = int(np.prod(shape)) * size[dt]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, (name, dt, shape) in enumerate(items):
            count = int(np.prod(shape))
            if dt == "F32":  # inv_freq
                d = shape[0] * 2
                f.write((1.0 / 10000.0 ** (np.arange(0, d, 2, dtype=np.float32) / d)).astype("<f4").tobytes())
                continue
            if name.endswith("norm.weight"):
                f.write(np.ones(count, dtype="<f2").tobytes())
                continue
            start = (k * 7919) % POOL
            rolled = np.concatenate((pool[start:], pool[:start]))
            while count > 0:
                chunk = rolled[: min(count, POOL)]
                f.write(chunk.tobytes())
                count -= len(chunk)
    return offset


def write_tokenizer(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "job"))
    from sentencepiece import sentencepiece_model_pb2 as pb

    from neva_prep.sample import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(Path(tmp) / "t.model", 384)
        proto = pb.ModelProto()
        proto.ParseFromString((Path(tmp) / "t.model").read_bytes())
    i = 0
    while len(proto.pieces) < VOCAB:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = (
            f"\u2581synthetic{i}",
            -1000.0 - i,
            pb.ModelProto.SentencePiece.NORMAL,
        )
        i += 1
    path.write_bytes(proto.SerializeToString())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = config(args.shape, args.layers)
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    write_tokenizer(args.out / "tokenizer.model")
    pool = (np.random.default_rng(0).standard_normal(POOL, dtype=np.float32) * 0.02).astype("<f2")
    layers = int(cfg["num_hidden_layers"])  # type: ignore[call-overload]
    items = tensors(cfg)  # type: ignore[arg-type]
    names = {1: "model-00001-of-00002.safetensors", 2: "model-00002-of-00002.safetensors"}
    total = 0
    for s, fname in names.items():
        total += write_safetensors(args.out / fname, [t for t in items if shard_of(t[0], layers) == s], pool)
    weight_map = {name: names[shard_of(name, layers)] for name, _, _ in items}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {args.out} ({args.shape}, {layers} layers, {total / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
