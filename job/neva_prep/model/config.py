"""The `model_config.yaml` NeMo's LLaMA converter writes, from our shipped template and `config.json`.

The template (`conf/megatron_llama.yaml`) is the `model:` section of NeMo 24.05's megatron_llama_config.yaml;
overrides follow `convert_llama_hf_to_nemo.py` (shared/nemo-format.md §2), appended keys in the order the
converter and `save_to` add them, so NeMo builds exactly the model it would have built itself.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from neva_prep.model.hf import LlamaConfig

NEMO_VERSION = "2.0.0rc0"
TARGET = "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel"
PRECISIONS = ("16", "bf16", "32")


def precision_value(precision: str) -> int | str:
    """What the YAML records: 16 and 32 as integers, `bf16` as a string (as NeMo's converter does)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    return precision if precision == "bf16" else int(precision)


def vocab_divisor(vocab_size: int) -> int:
    """The largest power of two <= 128 that divides the vocabulary (so NeMo pads nothing)."""
    base = 128
    while vocab_size % base:
        base //= 2
    return base


def template() -> dict[str, Any]:
    text = resources.files("neva_prep").joinpath("conf/megatron_llama.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def model_config(
    cfg: LlamaConfig, *, tokenizer_member: str, precision: str, layout: str = "mcore"
) -> dict[str, Any]:
    """The `model:` mapping for a converted checkpoint; `tokenizer_member` is `<hex>_tokenizer.model`."""
    conf = template()
    conf["encoder_seq_length"] = cfg.max_position_embeddings
    conf["num_layers"] = cfg.num_layers
    conf["hidden_size"] = cfg.hidden_size
    conf["ffn_hidden_size"] = cfg.intermediate_size
    conf["num_attention_heads"] = cfg.num_heads
    conf["max_position_embeddings"] = cfg.max_position_embeddings
    conf["init_method_std"] = cfg.initializer_range
    conf["layernorm_epsilon"] = cfg.rms_norm_eps
    conf["num_query_groups"] = cfg.num_kv_heads
    conf["use_cpu_initialization"] = False
    conf["activation"] = "fast-swiglu"
    conf["tokenizer"]["model"] = f"nemo:{tokenizer_member}"
    conf["make_vocab_size_divisible_by"] = vocab_divisor(cfg.vocab_size)
    conf["data"]["seq_length"] = cfg.max_position_embeddings
    if layout == "legacy":
        conf["mcore_gpt"] = False
        conf["transformer_engine"] = False
    conf["rotary_base"] = cfg.rope_theta
    if cfg.rope_scaling_factor is not None:
        conf["seq_len_interpolation_factor"] = cfg.rope_scaling_factor
    conf["precision"] = precision_value(precision)
    conf["target"] = TARGET
    conf["nemo_version"] = NEMO_VERSION
    return conf


def dump(conf: dict[str, Any]) -> bytes:
    """YAML as OmegaConf writes it: block style, keys in insertion order."""
    return yaml.safe_dump(conf, sort_keys=False, default_flow_style=False, allow_unicode=True).encode("utf-8")
