"""A small pure-torch LLaMA forward pass over NeMo-layout weights (fused QKV, fused fc1).

It reads the converted checkpoint as NeMo will, so comparing its logits with transformers' on the source
checks the whole mapping (QKV group order, gate/up order, RoPE convention) independently of the writer.
Computation is fp32; RoPE uses HF's half-rotation, which Megatron's fused QKV rows already follow.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from neva_prep.model.mapping import MCORE_PREFIX


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def rope(seq_len: int, head_dim: int, base: float, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, head_dim]; `scale` is linear RoPE scaling (positions divided by the factor)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    pos = torch.arange(seq_len, dtype=torch.float32) / scale
    freqs = torch.outer(pos, inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def forward(
    weights: Mapping[str, torch.Tensor],
    tokens: torch.Tensor,
    *,
    num_layers: int,
    num_heads: int,
    num_groups: int,
    eps: float,
    rotary_base: float = 10000.0,
    rope_scale: float = 1.0,
) -> torch.Tensor:
    """Logits [batch, seq, vocab] for token ids [batch, seq]; `weights` use mcore per-layer names."""

    def w(key: str) -> torch.Tensor:
        return weights[key].float()

    x = w("model.embedding.word_embeddings.weight")[tokens]
    batch, seq, hidden = x.shape
    d = hidden // num_heads
    per = num_heads // num_groups
    cos, sin = rope(seq, d, rotary_base, rope_scale)
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for layer in range(num_layers):
        p = f"{MCORE_PREFIX}{layer}."
        h = rms_norm(x, w(p + "self_attention.linear_qkv.layer_norm_weight"), eps)
        qkv = (h @ w(p + "self_attention.linear_qkv.weight").T).view(batch, seq, num_groups, per + 2, d)
        q = qkv[:, :, :, :per].reshape(batch, seq, num_heads, d).transpose(1, 2)
        k = qkv[:, :, :, per].transpose(1, 2).repeat_interleave(per, dim=1)
        v = qkv[:, :, :, per + 1].transpose(1, 2).repeat_interleave(per, dim=1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        att = (q @ k.transpose(-1, -2)) / d**0.5 + mask
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
        x = x + out @ w(p + "self_attention.linear_proj.weight").T
        h = rms_norm(x, w(p + "mlp.linear_fc1.layer_norm_weight"), eps)
        gate, up = (h @ w(p + "mlp.linear_fc1.weight").T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w(p + "mlp.linear_fc2.weight").T
    x = rms_norm(x, w("model.decoder.final_layernorm.weight"), eps)
    return x @ w("model.output_layer.weight").T
