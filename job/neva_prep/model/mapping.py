"""Hugging Face LLaMA names and tensors -> NeMo names and tensors (pure functions, no I/O).

Both NeMo layouts are described here as tables, so the writer, the reader used by `verify` and the tests
share one mapping: `mcore` (megatron-core + Transformer Engine, `model.decoder.layers.{l}.…`) and `legacy`
(`mcore_gpt: false`, `model.language_model.encoder.layers.{l}.…`). See shared/nemo-format.md §1 and §5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

LAYOUTS = ("mcore", "legacy")


@dataclass(frozen=True)
class Rule:
    """One NeMo tensor: `op` over HF tensors `sources` (per-layer names lack the `model.layers.{l}.` prefix).

    ops: `copy` (one tensor), `cat` (rows of each source in order: fc1 = gate then up), `qkv` (fused
    attention, see `fuse_qkv`), `none` (a Transformer Engine `_extra_state` entry, stored as None).
    """

    key: str
    op: str
    sources: tuple[str, ...] = ()


_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_FC1 = ("mlp.gate_proj.weight", "mlp.up_proj.weight")

# mcore: keys under `model.decoder.layers.`; stacked on a layer axis in the zarr checkpoint
MCORE_LAYER: tuple[Rule, ...] = (
    Rule("self_attention.linear_qkv.layer_norm_weight", "copy", ("input_layernorm.weight",)),
    Rule("self_attention.linear_qkv.weight", "qkv", _QKV),
    Rule("self_attention.linear_proj.weight", "copy", ("self_attn.o_proj.weight",)),
    Rule("mlp.linear_fc1.layer_norm_weight", "copy", ("post_attention_layernorm.weight",)),
    Rule("mlp.linear_fc1.weight", "cat", _FC1),
    Rule("mlp.linear_fc2.weight", "copy", ("mlp.down_proj.weight",)),
)
MCORE_GLOBAL: tuple[Rule, ...] = (
    Rule("model.embedding.word_embeddings.weight", "copy", ("model.embed_tokens.weight",)),
    Rule("model.decoder.final_layernorm.weight", "copy", ("model.norm.weight",)),
    Rule("model.output_layer.weight", "copy", ("lm_head.weight",)),
)
MCORE_PREFIX = "model.decoder.layers."
# Transformer Engine modules whose `_extra_state` NeMo's loader expects (one shard per layer)
MCORE_EXTRA_STATE = (
    "self_attention.linear_qkv",
    "self_attention.linear_proj",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)

# legacy: the flat state dict of `model_weights.ckpt`, in NeMo's key order
LEGACY_PREFIX = "model.language_model.encoder.layers."
LEGACY_LAYER: tuple[Rule, ...] = (
    Rule("input_layernorm.weight", "copy", ("input_layernorm.weight",)),
    Rule("self_attention.query_key_value.weight", "qkv", _QKV),
    Rule("self_attention.query_key_value._extra_state", "none"),
    Rule("self_attention.dense.weight", "copy", ("self_attn.o_proj.weight",)),
    Rule("self_attention.dense._extra_state", "none"),
    Rule("post_attention_layernorm.weight", "copy", ("post_attention_layernorm.weight",)),
    Rule("mlp.dense_h_to_4h.weight", "cat", _FC1),
    Rule("mlp.dense_h_to_4h._extra_state", "none"),
    Rule("mlp.dense_4h_to_h.weight", "copy", ("mlp.down_proj.weight",)),
    Rule("mlp.dense_4h_to_h._extra_state", "none"),
)
LEGACY_EMBEDDING = Rule(
    "model.language_model.embedding.word_embeddings.weight", "copy", ("model.embed_tokens.weight",)
)
LEGACY_INV_FREQ = "model.language_model.rotary_pos_emb.inv_freq"
LEGACY_TAIL: tuple[Rule, ...] = (
    Rule("model.language_model.encoder.final_layernorm.weight", "copy", ("model.norm.weight",)),
    Rule("model.language_model.output_layer.weight", "copy", ("lm_head.weight",)),
    Rule("model.language_model.output_layer._extra_state", "none"),
)

# legacy key suffix -> mcore key suffix, so one forward pass (llama.py) serves both layouts
LEGACY_TO_MCORE = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "self_attention.query_key_value.weight": "self_attention.linear_qkv.weight",
    "self_attention.dense.weight": "self_attention.linear_proj.weight",
    "post_attention_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "mlp.dense_h_to_4h.weight": "mlp.linear_fc1.weight",
    "mlp.dense_4h_to_h.weight": "mlp.linear_fc2.weight",
}


def layer_source(layer: int, name: str) -> str:
    """The full HF name of a per-layer source."""
    return f"model.layers.{layer}.{name}"


def qkv_blocks(num_heads: int, num_groups: int, head_dim: int) -> list[tuple[int, int, int]]:
    """Megatron's fused QKV row order as (source 0=q 1=k 2=v, first row, end row) blocks: for each query
    group g, its num_heads/num_groups q heads, then k head g, then v head g.

    Multi-head models give q0,k0,v0,q1,k1,v1,…; HF's rows already use Megatron's RoPE order (no permutation).
    Each block is a contiguous row range of one source, so the writer can stream (or kernel-copy) them.
    """
    per = num_heads // num_groups
    blocks: list[tuple[int, int, int]] = []
    for g in range(num_groups):
        blocks.append((0, g * per * head_dim, (g + 1) * per * head_dim))
        blocks.append((1, g * head_dim, (g + 1) * head_dim))
        blocks.append((2, g * head_dim, (g + 1) * head_dim))
    return blocks


def fuse_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int
) -> torch.Tensor:
    """The fused `linear_qkv` weight from HF's q, k, v projections (rows in `qkv_blocks` order)."""
    sources = (q, k, v)
    blocks = qkv_blocks(num_heads, num_groups, q.shape[0] // num_heads)
    return torch.cat([sources[i][a:b] for i, a, b in blocks])


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of `fuse_qkv` (used to check a written checkpoint against its source)."""
    hidden = qkv.shape[-1]
    per = num_heads // num_groups
    d = qkv.shape[0] // (num_heads + 2 * num_groups)
    g = qkv.reshape(num_groups, per + 2, d, hidden)
    q = g[:, :per].reshape(-1, hidden)
    k = g[:, per].reshape(-1, hidden)
    v = g[:, per + 1].reshape(-1, hidden)
    return q, k, v


def apply(rule: Rule, tensors: list[torch.Tensor], num_heads: int, num_groups: int) -> torch.Tensor:
    """The NeMo tensor for `rule` from its source tensors (in `rule.sources` order)."""
    if rule.op == "copy":
        return tensors[0]
    if rule.op == "cat":
        return torch.cat(tensors, dim=0)
    if rule.op == "qkv":
        q, k, v = tensors
        return fuse_qkv(q, k, v, num_heads, num_groups)
    raise ValueError(f"rule {rule.key!r} has no tensor")


def inv_freq(rotary_base: float, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies as NeMo's legacy model computes them (fp32; cast by the caller)."""
    return 1.0 / (rotary_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def nemo_state_dict(
    hf: Mapping[str, torch.Tensor],
    *,
    num_layers: int,
    num_heads: int,
    num_groups: int,
    layout: str = "mcore",
    rotary_base: float = 10000.0,
) -> dict[str, torch.Tensor | None]:
    """The NeMo state dict (per-layer keys, NeMo's order) for HF tensors: the reference for tests and verify.

    mcore keys are the unstacked `model.decoder.layers.{l}.…` names of NeMo's in-memory model.
    """

    def get(rule: Rule, layer: int | None) -> torch.Tensor:
        names = [layer_source(layer, s) if layer is not None else s for s in rule.sources]
        return apply(rule, [hf[n] for n in names], num_heads, num_groups)

    out: dict[str, torch.Tensor | None] = {}
    if layout == "mcore":
        out[MCORE_GLOBAL[0].key] = get(MCORE_GLOBAL[0], None)
        for layer in range(num_layers):
            for rule in MCORE_LAYER:
                out[f"{MCORE_PREFIX}{layer}.{rule.key}"] = get(rule, layer)
        for rule in MCORE_GLOBAL[1:]:
            out[rule.key] = get(rule, None)
        return out
    if layout != "legacy":
        raise ValueError(f"unknown layout {layout!r}")
    emb = get(LEGACY_EMBEDDING, None)
    out[LEGACY_EMBEDDING.key] = emb
    d = hf["model.layers.0.self_attn.q_proj.weight"].shape[0] // num_heads
    out[LEGACY_INV_FREQ] = inv_freq(rotary_base, d).to(emb.dtype)
    for layer in range(num_layers):
        for rule in LEGACY_LAYER:
            out[f"{LEGACY_PREFIX}{layer}.{rule.key}"] = None if rule.op == "none" else get(rule, layer)
    for rule in LEGACY_TAIL:
        out[rule.key] = None if rule.op == "none" else get(rule, None)
    return out


def to_mcore_names(state: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Rename a legacy state dict to mcore's per-layer names (drops None entries and inv_freq)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value is None or key == LEGACY_INV_FREQ:
            continue
        if key.startswith(LEGACY_PREFIX):
            layer, _, suffix = key[len(LEGACY_PREFIX) :].partition(".")
            out[f"{MCORE_PREFIX}{layer}.{LEGACY_TO_MCORE[suffix]}"] = value
        elif key.startswith("model.language_model."):
            tail = {
                LEGACY_EMBEDDING.key: MCORE_GLOBAL[0].key,
                LEGACY_TAIL[0].key: MCORE_GLOBAL[1].key,
                LEGACY_TAIL[1].key: MCORE_GLOBAL[2].key,
            }
            out[tail[key]] = value
        else:
            out[key] = value
    return out
