"""`checkpoint verify`: re-read a `.nemo` with our own reader and check it against the HF source.

Two independent checks: every tensor must equal the source through the mapping (exactly, after casting the
source to the output precision), and the logits of `llama.py` over the NeMo-layout weights must match
`transformers.LlamaForCausalLM` on the same tokens (the independent check of the mapping itself).
"""

from __future__ import annotations

import math
import tarfile
import time
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from neva_prep import storage
from neva_prep.errors import BadInput, CheckFailed, StepFailed
from neva_prep.model import finite, hf, llama, mapping, nemo_format
from neva_prep.model.convert import DTYPES
from neva_prep.model.hf import LlamaConfig

LOGITS_MAX_PARAMS = 2_000_000_000  # both models are held in fp32 for the logits check


@dataclass(frozen=True)
class VerifyResult:
    source: str
    nemo: str
    layout: str
    precision: str
    tensors: int
    max_logit_diff: float | None
    note: str
    seconds: float

    def summary(self) -> str:
        logits = (
            f"logits agree (max |diff| {self.max_logit_diff:.2e})"
            if self.max_logit_diff is not None
            else self.note
        )
        return (
            f"OK {storage.redact(self.nemo)} matches {storage.redact(self.source)} "
            f"({self.layout} layout, precision {self.precision}): {self.tensors:,} tensors equal; {logits}"
        )


def _rules(cfg: LlamaConfig, layout: str) -> dict[str, tuple[mapping.Rule, int | None]]:
    """Every NeMo key the layout holds -> (rule, layer)."""
    rules: dict[str, tuple[mapping.Rule, int | None]] = {}
    if layout == "mcore":
        for rule in mapping.MCORE_GLOBAL:
            rules[rule.key] = (rule, None)
        for layer in range(cfg.num_layers):
            for rule in mapping.MCORE_LAYER:
                rules[f"{mapping.MCORE_PREFIX}{layer}.{rule.key}"] = (rule, layer)
        return rules
    for rule in (mapping.LEGACY_EMBEDDING, *mapping.LEGACY_TAIL):
        rules[rule.key] = (rule, None)
    rules[mapping.LEGACY_INV_FREQ] = (mapping.Rule(mapping.LEGACY_INV_FREQ, "inv_freq"), None)
    for layer in range(cfg.num_layers):
        for rule in mapping.LEGACY_LAYER:
            rules[f"{mapping.LEGACY_PREFIX}{layer}.{rule.key}"] = (rule, layer)
    return rules


def _first_difference(key: str, got: torch.Tensor, want: torch.Tensor) -> str:
    """Name the first difference; NaN/Inf were reported before this, but never crash on them."""
    if got.shape != want.shape:
        return f"{key}: shape {list(got.shape)} != source {list(want.shape)}"
    if got.dtype != want.dtype:
        return f"{key}: dtype {got.dtype} != expected {want.dtype}"
    a, b = got.float().reshape(-1), want.float().reshape(-1)
    found = ((a != b) & ~(a.isnan() & b.isnan())).nonzero()
    if not len(found):
        return f"{key}: differs from the source"
    flat = int(found[0])
    return (
        f"{key}: differs from the source at index {finite.index(flat, tuple(got.shape))}: "
        f"{a[flat].item()} != {b[flat].item()}"
    )


def _source_tensor(ckpt: hf.HFCheckpoint, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A source tensor in the output dtype; NaN/Inf there is the source's fault (bad input, as in convert)."""
    src = ckpt.read(name)
    out = src.to(dtype)
    bad = finite.first_bad(out)
    if bad is not None:
        ref = ckpt.refs[name]
        value = float(src.reshape(-1)[bad])
        where = storage.redact(ref.file)
        if math.isfinite(value):
            raise BadInput(finite.overflow(where, name, ref.shape, bad, value, dtype))
        raise BadInput(finite.non_finite(where, name, ref.shape, bad, value))
    return out


def _check_config(conf: dict[str, Any], cfg: LlamaConfig, nemo: str) -> None:
    expected = {
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_query_groups": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
    }
    for key, value in expected.items():
        if conf.get(key) != value:
            raise CheckFailed(
                f"{storage.redact(nemo)}: model_config.yaml {key} is {conf.get(key)!r}, source has {value!r}"
            )


def verify_checkpoint(source: str, nemo: str, *, logits: bool = True) -> VerifyResult:
    """Exit 0 when `nemo` holds exactly `source` (exit 3, CheckFailed, names the first difference)."""
    start = time.monotonic()
    cfg = hf.read_hf_config(source)
    tokenizer = storage.read_bytes(hf.tokenizer_url(source))
    with hf.HFCheckpoint(source, cfg) as ckpt, storage.open_read(nemo) as f:
        try:
            reader = nemo_format.NemoReader(f)
            conf = yaml.safe_load(reader.read(nemo_format.CONFIG_MEMBER))
        except (tarfile.TarError, KeyError, yaml.YAMLError, EOFError):
            raise BadInput(
                f"{storage.redact(nemo)}: not a .nemo file (no readable model_config.yaml)"
            ) from None
        _check_config(conf, cfg, nemo)
        precision = str(conf.get("precision"))
        dtype = DTYPES[precision]
        layout = reader.layout
        if reader.read(reader.tokenizer_member()) != tokenizer:
            raise CheckFailed(
                f"{storage.redact(nemo)}: {reader.tokenizer_member()} differs from the source tokenizer"
            )
        rules = _rules(cfg, layout)
        stream = reader.mcore_tensors(cfg.num_layers) if layout == "mcore" else reader.legacy_tensors()
        seen: dict[str, torch.Tensor | None] = {}
        for key, got in stream:
            if key not in rules:
                raise CheckFailed(f"{storage.redact(nemo)}: unexpected tensor {key!r}")
            rule, layer = rules[key]
            if rule.op == "none":
                if got is not None:
                    raise CheckFailed(f"{key}: expected None (Transformer Engine extra state)")
            else:
                if got is None:
                    raise CheckFailed(f"{key}: is None, expected a tensor")
                if rule.op == "inv_freq":
                    want = mapping.inv_freq(float(conf["rotary_base"]), cfg.head_dim).to(dtype)
                else:
                    names = [mapping.layer_source(layer, s) if layer is not None else s for s in rule.sources]
                    srcs = [_source_tensor(ckpt, n, dtype) for n in names]
                    want = mapping.apply(rule, srcs, cfg.num_heads, cfg.num_kv_heads)
                bad = finite.first_bad(got)
                if bad is not None:
                    raise CheckFailed(
                        f"{storage.redact(nemo)}: {key} holds {float(got.reshape(-1)[bad])} at index "
                        f"{finite.index(bad, tuple(got.shape))}, where the source is finite"
                    )
                if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got, want):
                    raise CheckFailed(_first_difference(key, got, want))
            seen[key] = got if logits else None
        missing = [k for k in rules if k not in seen]
        if missing:
            raise CheckFailed(
                f"{storage.redact(nemo)}: tensor {missing[0]!r} is missing ({len(missing)} missing)"
            )
        tensors = sum(1 for k in seen if rules[k][0].op != "none")
    diff, note = None, "logits not checked (--no-logits)"
    if logits:
        diff, note = _compare_logits(source, cfg, mapping.to_mcore_names(seen), dtype)
    return VerifyResult(source, nemo, layout, precision, tensors, diff, note, time.monotonic() - start)


def _compare_logits(
    source: str, cfg: LlamaConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[float | None, str]:
    params = sum(t.numel() for t in weights.values())
    if not storage.is_local(source):
        return None, "logits not checked (source is not a local directory; tensors were checked)"
    if params > LOGITS_MAX_PARAMS:
        return (
            None,
            f"logits not checked ({params / 1e9:.1f} B parameters is too large to hold twice in fp32)",
        )
    try:
        import transformers
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise StepFailed(
            "the logits check needs transformers (pip install transformers), or use --no-logits"
        ) from None
    hf_logging.disable_progress_bar()
    major = int(transformers.__version__.split(".")[0])
    fp32: dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype": torch.float32}  # 5 renamed it
    model = LlamaForCausalLM.from_pretrained(source, **fp32)
    _same_rope(model.config, cfg, source, transformers.__version__)
    # compare on the same weight values: round the reference to the output precision first
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    model.eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(tokens).logits.float()
        got = llama.forward(
            weights,
            tokens,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_groups=cfg.num_kv_heads,
            eps=cfg.rms_norm_eps,
            rotary_base=cfg.rope_theta,
            rope_scale=cfg.rope_scaling_factor or 1.0,
        )
    diff = float((got - want).abs().max())
    scale = float(want.abs().max())
    if not diff <= 1e-3 * max(1.0, scale):  # NaN compares false: NaN logits are a difference
        raise CheckFailed(
            f"logits differ from transformers': max |diff| {diff:.3e} (logit scale {scale:.2f})"
        )
    return diff, ""


def _same_rope(hf_config: Any, cfg: LlamaConfig, source: str, version: str) -> None:
    """transformers before 5 does not read `rope_parameters` (and falls back to rope_theta 10000): then it
    builds another model than the config describes, and comparing logits would blame the .nemo."""
    params: Any = getattr(hf_config, "rope_parameters", None)
    theta: Any
    factor: Any
    if int(version.split(".")[0]) >= 5 and isinstance(params, dict):  # (4.x keeps unknown keys as is)
        theta, kind, factor = params.get("rope_theta"), params.get("rope_type"), params.get("factor")
    else:
        scaling = getattr(hf_config, "rope_scaling", None) or {}
        theta = getattr(hf_config, "rope_theta", None)
        kind, factor = scaling.get("rope_type", scaling.get("type")), scaling.get("factor")
    theirs = (float(theta or hf.DEFAULT_ROPE_THETA), float(factor) if kind == "linear" else None)
    ours = (cfg.rope_theta, cfg.rope_scaling_factor)
    if theirs != ours:
        raise BadInput(
            f"{storage.redact(source)}/config.json: the installed transformers {version} reads RoPE as "
            f"rope_theta {theirs[0]}, linear factor {theirs[1]}, where the config says rope_theta {ours[0]}, "
            f"linear factor {ours[1]} (written by a newer transformers?): install transformers>=5 to "
            "compare logits, or use --no-logits"
        )
