"""Read a Hugging Face LLaMA directory (local or object storage) one tensor, or one row range, at a time.

Safetensors files are read by byte offset from their own JSON header, so peak memory stays near the size of
the slice being converted instead of the size of a shard (no mmap: touched mmap pages count as RSS).
``pytorch_model*.bin`` shards are loaded with ``weights_only=True`` (mmap'd when local), never unpickled
freely.
Everything a user can get wrong is found before the first byte is written and reported as `BadInput`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import torch

from neva_prep import storage
from neva_prep.errors import BadInput, StepFailed

# safetensors dtype names -> torch dtypes (the ones a LLaMA checkpoint may use)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_MAX_HEADER = 100 * 2**20
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class LlamaConfig:
    """The parts of `config.json` that decide tensor shapes and the NeMo model config."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    initializer_range: float
    rope_scaling_factor: float | None = None
    dtype: str | None = None  # `torch_dtype` (transformers 4) or `dtype` (5): informational only
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grouped(self) -> bool:
        """True for grouped-query attention (Llama-2-70B), which the legacy NeMo layout cannot hold."""
        return self.num_kv_heads != self.num_heads

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight the converter needs, by HF name, with its shape."""
        h, f, v, kv = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_kv_heads * self.head_dim,
        )
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes[p + "self_attn.q_proj.weight"] = (h, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, h)
            shapes[p + "mlp.gate_proj.weight"] = (f, h)
            shapes[p + "mlp.up_proj.weight"] = (f, h)
            shapes[p + "mlp.down_proj.weight"] = (h, f)
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        shapes["lm_head.weight"] = (v, h)
        return shapes


def _config_int(cfg: dict[str, Any], key: str, url: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadInput(f"{url}: {key!r} must be a positive integer, got {value!r}")
    return value


# RoPE types NeMo's LLaMA can express: plain RoPE (`rotary_base`) and linear position interpolation
# (`seq_len_interpolation_factor`). dynamic, llama3, yarn, longrope… would convert to a different model.
ROPE_TYPES = ("default", "linear")
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class _Rope:
    theta: float | None
    kind: str
    factor: float | None


def _one_spelling(cfg: dict[str, Any], where: str, *keys: str) -> Any:
    """The value of a setting that has several spellings; refuse a config whose spellings disagree."""
    found = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    if len({json.dumps(v, sort_keys=True) for v in found.values()}) > 1:
        both = " and ".join(f"{k}={v!r}" for k, v in found.items())
        raise BadInput(f"{where}: {both} disagree; remove the stale one")
    return next(iter(found.values()), None)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _rope_spec(spec: dict[str, Any], theta: Any, where: str, key: str) -> _Rope:
    """One spelling's RoPE: type (`rope_type`, or `type` before transformers 4.45), factor, base."""
    kind = _one_spelling(spec, f"{where}: {key}", "rope_type", "type") or "default"
    if kind not in ROPE_TYPES:
        raise BadInput(
            f"{where}: {key} type {kind!r} is not supported; NeMo's LLaMA has only default and linear "
            "RoPE scaling (converting would silently change the model)"
        )
    if spec.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise BadInput(f"{where}: {key}.partial_rotary_factor is not supported by NeMo's LLaMA")
    if theta is not None and not _positive(theta):
        raise BadInput(f"{where}: rope_theta must be a positive number, got {theta!r}")
    factor: Any = spec.get("factor")
    if kind == "default":
        return _Rope(None if theta is None else float(theta), kind, None)
    if not _positive(factor):
        raise BadInput(f"{where}: {key}.factor must be a positive number, got {factor!r}")
    return _Rope(None if theta is None else float(theta), kind, float(factor))


def read_rope(cfg: dict[str, Any], where: str) -> tuple[float, float | None]:
    """(rope_theta, linear factor or None) from either spelling of `config.json`.

    transformers <5 writes top-level `rope_theta` and `rope_scaling` ({type|rope_type, factor}); transformers
    5 writes `rope_parameters` ({rope_theta, rope_type, factor}). When both are present they must agree:
    transformers 5 itself prefers the old keys, older versions see only them, so a disagreement means the
    model depends on which transformers reads it.
    """
    scaling = cfg.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise BadInput(f"{where}: rope_scaling must be an object or null, got {scaling!r}")
    old = None
    if cfg.get("rope_theta") is not None or scaling is not None:
        old = _rope_spec(scaling or {}, cfg.get("rope_theta"), where, "rope_scaling")
    params = cfg.get("rope_parameters")
    new = None
    if params is not None:
        if not isinstance(params, dict):
            raise BadInput(f"{where}: rope_parameters must be an object, got {params!r}")
        if params and all(isinstance(v, dict) for v in params.values()):
            raise BadInput(
                f"{where}: rope_parameters per attention type ({', '.join(params)}) is not a LLaMA-2 layout"
            )
        new = _rope_spec(params, params.get("rope_theta"), where, "rope_parameters")
    if old is not None and new is not None:
        pairs: list[tuple[str, object, object]] = []
        if None not in (old.theta, new.theta):
            pairs.append(("rope_theta", old.theta, new.theta))
        if scaling is not None:  # `rope_scaling: null` is how transformers 4 writes "not given"
            pairs += [("type", old.kind, new.kind), ("factor", old.factor, new.factor)]
        clash = [f"{name} {a!r} vs {b!r}" for name, a, b in pairs if a != b]
        if clash:
            raise BadInput(
                f"{where}: rope_theta/rope_scaling and rope_parameters disagree ({'; '.join(clash)}); "
                "transformers versions would build different models from it: keep one spelling"
            )
    chosen = [r for r in (old, new) if r is not None]
    theta = next((r.theta for r in chosen if r.theta is not None), DEFAULT_ROPE_THETA)
    linear = [r for r in chosen if r.kind == "linear"]
    return theta, linear[0].factor if linear else None


def read_hf_config(source: str) -> LlamaConfig:
    """Parse and check `SRC/config.json`: a LLaMA causal LM whose RoPE scaling NeMo can express."""
    url = storage.join(source, "config.json")
    if not storage.exists(source):
        raise BadInput(f"{storage.redact(source)}: no such checkpoint directory")
    if not storage.exists(url):
        raise BadInput(f"{storage.redact(url)}: missing (not a Hugging Face model directory?)")
    try:
        cfg = json.loads(storage.read_text(url))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{storage.redact(url)}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{storage.redact(url)}: expected a JSON object")
    where = storage.redact(url)
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise BadInput(
            f"{where}: not a LLaMA model (model_type={cfg.get('model_type')!r}, architectures={archs!r}); "
            "only LlamaForCausalLM checkpoints (LLaMA-2, Vicuna) are supported"
        )
    if cfg.get("tie_word_embeddings"):
        raise BadInput(f"{where}: tie_word_embeddings=true is not a LLaMA-2 layout (NeMo never ties them)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise BadInput(f"{where}: attention/MLP biases are not supported by NeMo's LLaMA layout")
    if cfg.get("hidden_act", "silu") != "silu":
        raise BadInput(f"{where}: hidden_act={cfg.get('hidden_act')!r}; NeMo's LLaMA uses silu (SwiGLU)")
    theta, factor = read_rope(cfg, where)
    dtype = _one_spelling(cfg, where, "torch_dtype", "dtype")
    heads = _config_int(cfg, "num_attention_heads", where)
    kv_heads = cfg.get("num_key_value_heads") or heads
    hidden = _config_int(cfg, "hidden_size", where)
    if hidden % heads or not isinstance(kv_heads, int) or heads % kv_heads:
        raise BadInput(
            f"{where}: hidden_size {hidden}, num_attention_heads {heads} and num_key_value_heads {kv_heads} "
            "do not divide evenly"
        )
    if cfg.get("head_dim") not in (None, hidden // heads):
        raise BadInput(f"{where}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=_config_int(cfg, "intermediate_size", where),
        num_layers=_config_int(cfg, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=kv_heads,
        vocab_size=_config_int(cfg, "vocab_size", where),
        max_position_embeddings=_config_int(cfg, "max_position_embeddings", where),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        initializer_range=float(cfg.get("initializer_range", 0.02)),
        rope_scaling_factor=factor,
        dtype=dtype if isinstance(dtype, str) else None,
        raw=cfg,
    )


def tokenizer_url(source: str) -> str:
    """URL of `SRC/tokenizer.model`; bad input when it is missing."""
    url = storage.join(source, "tokenizer.model")
    if not storage.exists(url):
        raise BadInput(f"{storage.redact(url)}: missing (the SentencePiece tokenizer is required)")
    return url


def check_tokenizer(source: str, config: LlamaConfig) -> bytes:
    """Load `SRC/tokenizer.model` with sentencepiece; its piece count must equal `vocab_size`. Returns it."""
    import sentencepiece as spm

    url = tokenizer_url(source)
    data = storage.read_bytes(url)
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as exc:
        raise BadInput(f"{storage.redact(url)}: not a SentencePiece model ({exc})") from None
    pieces = sp.GetPieceSize()
    if pieces != config.vocab_size:
        raise BadInput(
            f"{storage.redact(url)}: {pieces} pieces but config.json vocab_size is {config.vocab_size}"
        )
    return data


@dataclass(frozen=True)
class FileRange:
    """`size` bytes at `offset` of an open local file: tensor data that needs no conversion."""

    fd: int
    offset: int
    size: int
    file: str
    name: str

    def __len__(self) -> int:
        return self.size

    def prefetch(self) -> None:
        """Ask the kernel to start reading the range now (asynchronously), in large requests."""
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self.fd, self.offset, self.size, os.POSIX_FADV_WILLNEED)


@dataclass(frozen=True)
class TensorRef:
    """Where one source tensor lives: a safetensors byte range, or a key of a `.bin` shard."""

    name: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = -1  # absolute byte offset in a safetensors file; -1 for .bin

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def _safetensors_header(url: str) -> dict[str, TensorRef]:
    where = storage.redact(url)
    total = storage.size(url)
    with storage.open_read(url) as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput(f"{where}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > total:
            raise BadInput(f"{where}: corrupt safetensors header (length {n}, file size {total})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(f"{where}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise BadInput(f"{where}: corrupt safetensors header")
    header.pop("__metadata__", None)
    refs: dict[str, TensorRef] = {}
    end = 0
    for name, info in header.items():
        try:
            dtype_name, shape, (start, stop) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{where}: corrupt safetensors header entry {name!r}") from None
        if dtype_name not in SAFETENSORS_DTYPES:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise BadInput(f"{where}: tensor {name!r} has unsupported dtype {dtype_name}")
        ref = TensorRef(name, url, SAFETENSORS_DTYPES[dtype_name], shape, 8 + n + start)
        if stop - start != ref.nbytes:
            raise BadInput(
                f"{where}: corrupt safetensors header: {name!r} byte range does not match its shape"
            )
        end = max(end, stop)
        refs[name] = ref
    if 8 + n + end > total:
        raise BadInput(f"{where}: truncated safetensors file ({total} bytes, header promises {8 + n + end})")
    return refs


class HFCheckpoint:
    """The weights of an HF LLaMA directory; `read_rows` returns one row range of one tensor at a time."""

    def __init__(self, source: str, config: LlamaConfig) -> None:
        self.source = source
        self.config = config
        self.refs: dict[str, TensorRef] = {}
        self._files: dict[str, IO[bytes]] = {}
        self._bin: dict[str, dict[str, torch.Tensor]] = {}
        self._fds: dict[str, int] = {}
        self._find_weights()
        self._check_shapes()

    def _find_weights(self) -> None:
        names = storage.listdir(self.source)
        for kind, single, index in (
            ("safetensors", "model.safetensors", "model.safetensors.index.json"),
            ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
        ):
            files: list[str] = []
            if index in names:
                files = self._index_files(storage.join(self.source, index))
            elif single in names:
                files = [single]
            else:
                files = sorted(n for n in names if n.endswith("." + kind))
            if files:
                for name in files:
                    url = storage.join(self.source, name)
                    if kind == "safetensors":
                        self.refs.update(_safetensors_header(url))
                    else:
                        self._open_bin(url)
                return
        raise BadInput(
            f"{storage.redact(self.source)}: no weights (*.safetensors or pytorch_model*.bin) found"
        )

    def _index_files(self, index_url: str) -> list[str]:
        where = storage.redact(index_url)
        try:
            weight_map = json.loads(storage.read_text(index_url))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{where}: not a valid weight index (no weight_map)") from None
        for name in files:
            if "/" in name or name.startswith(".") or not storage.exists(storage.join(self.source, name)):
                raise BadInput(f"{where}: names shard {name!r}, which does not exist")
        return list(files)

    def _open_bin(self, url: str) -> None:
        where = storage.redact(url)
        try:
            if storage.is_local(url):
                sd = torch.load(url, map_location="cpu", weights_only=True, mmap=True)
            else:  # object storage: no mmap; the shard is held while the conversion runs
                import io

                sd = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise BadInput(refusal(where, exc)) from None
        except pickle_errors():
            raise BadInput(f"{where}: not a readable PyTorch checkpoint (truncated or corrupt?)") from None
        if not isinstance(sd, dict):
            raise BadInput(f"{where}: expected a state dict, got {type(sd).__name__}")
        self._bin[url] = sd
        for name, t in sd.items():
            if not isinstance(t, torch.Tensor) or name.endswith("rotary_emb.inv_freq"):
                continue
            self.refs[name] = TensorRef(name, url, t.dtype, tuple(t.shape))

    def _check_shapes(self) -> None:
        where = storage.redact(self.source)
        for name, shape in self.config.hf_shapes().items():
            ref = self.refs.get(name)
            if ref is None:
                raise BadInput(f"{where}: weight {name!r} is missing from the checkpoint")
            if ref.shape != shape:
                raise BadInput(
                    f"{storage.redact(ref.file)}: {name!r} has shape {list(ref.shape)}, "
                    f"config.json implies {list(shape)}"
                )
            if ref.dtype not in SAFETENSORS_DTYPES.values() or ref.dtype == torch.float64:
                raise BadInput(f"{storage.redact(ref.file)}: {name!r} has unsupported dtype {ref.dtype}")

    @property
    def nbytes(self) -> int:
        """Bytes of the weights the converter reads."""
        return sum(self.refs[n].nbytes for n in self.config.hf_shapes())

    def read(self, name: str) -> torch.Tensor:
        ref = self.refs[name]
        return self.read_rows(name, 0, ref.shape[0] if ref.shape else 1)

    def position(self, names: Iterable[str]) -> tuple[str, int]:
        """Where the first of these tensors lies in the checkpoint, (file, offset): to read in file order."""
        return min((self.refs[n].file, self.refs[n].offset) for n in names)

    def local_range(self, name: str, start: int = 0, stop: int | None = None) -> FileRange | None:
        """Rows [start, stop) of `name` as a local file range (for a kernel-side copy), if they are one."""
        ref = self.refs[name]
        if ref.offset < 0 or not storage.is_local(ref.file):
            return None
        fd = self._fds.get(ref.file)
        if fd is None:
            fd = self._fds[ref.file] = os.open(storage.local_path(ref.file), os.O_RDONLY)
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if len(ref.shape) < 2:
            return FileRange(fd, ref.offset, ref.nbytes, ref.file, name)
        stop = ref.shape[0] if stop is None else stop
        return FileRange(
            fd, ref.offset + start * ref.row_bytes, (stop - start) * ref.row_bytes, ref.file, name
        )

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `name`, as a fresh CPU tensor in its stored dtype."""
        ref = self.refs[name]
        if ref.offset < 0:
            t = self._bin[ref.file][name]
            return t[start:stop].clone() if t.dim() else t.clone()
        f = self._files.get(ref.file)
        if f is None:
            f = self._files[ref.file] = storage.open_read(ref.file)
        count = (stop - start) * ref.row_bytes if len(ref.shape) > 1 else ref.nbytes
        f.seek(ref.offset + start * ref.row_bytes)
        buf = bytearray(count)
        got = f.readinto(buf) if hasattr(f, "readinto") else 0
        while got < count:
            more = f.read(count - got)
            if not more:
                raise StepFailed(
                    f"{storage.redact(ref.file)}: {name!r} ended early (truncated while converting?)"
                )
            buf[got : got + len(more)] = more
            got += len(more)
        t = torch.frombuffer(buf, dtype=ref.dtype) if count else torch.empty(0, dtype=ref.dtype)
        shape = (stop - start, *ref.shape[1:]) if len(ref.shape) > 1 else ref.shape
        return t.view(shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._bin.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refusal(where: str, exc: BaseException) -> str:
    """Why a `.bin` shard is refused and what to do, in our words: torch's own text suggests turning the
    check off (`weights_only=False`), which would let the file run code on this machine."""
    found = _GLOBAL.search(str(exc))
    what = f" (a pickled {found.group(1)})" if found else ""
    return (
        f"{where}: holds Python objects other than tensors{what}; neva-prep does not load those, because "
        "unpickling them can run code. Use the repository's *.safetensors files if it has them, or convert "
        "this file to safetensors with a tool you trust"
    )


def pickle_errors() -> tuple[type[BaseException], ...]:
    """What `torch.load(weights_only=True)` raises for files that are not plain tensor dicts."""
    import pickle
    import zipfile

    return (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError)


def open_checkpoint(source: str) -> tuple[LlamaConfig, bytes, HFCheckpoint]:
    """Validate everything about SRC up front; returns (config, tokenizer bytes, weights)."""
    config = read_hf_config(source)
    tokenizer = check_tokenizer(source, config)
    return config, tokenizer, HFCheckpoint(source, config)


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def iter_rows(total: int, row_bytes: int, limit: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most `limit` bytes (at least one row) covering `total` rows."""
    step = max(1, limit // max(1, row_bytes))
    for start in range(0, total, step):
        yield start, min(total, start + step)
