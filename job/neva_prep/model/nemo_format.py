"""The one place that knows the `.nemo` file: its tar members (names, order, bytes) for both layouts.

The writer and the reader behind `verify` both use these functions. What NeMo itself writes is described
in shared/nemo-format.md (§1 mcore zarr checkpoint, §5 legacy `model_weights.ckpt`):

- an uncompressed tar whose first member is `.`, then members in the order `tarfile.add` visits a directory
  (sorted names, recursively) — what NeMo's `save_to` produces;
- our tar headers are fixed so output is byte-identical for the same input: PAX format, mtime 0, uid/gid 0,
  empty user/group names, mode 0644 for files and 0755 for directories;
- the legacy `model_weights.ckpt` is a `torch.save` zip written by hand so that it can stream: `data.pkl`
  (which only references storages by key) first, then one record per tensor, 64-byte aligned, with data
  descriptors, as torch's own writer does.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import tarfile
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import IO, Any

import torch

from neva_prep import tarball
from neva_prep.errors import StepFailed
from neva_prep.model import mapping
from neva_prep.model.digest import StreamDigest
from neva_prep.model.hf import FileRange

ZARR_DTYPES = {torch.float16: "<f2", torch.float32: "<f4", torch.bfloat16: "bfloat16"}
ZARR_TORCH = {v: k for k, v in ZARR_DTYPES.items()}
METADATA_JSON = json.dumps(
    {
        "sharded_backend": "zarr",
        "sharded_backend_version": 1,
        "common_backend": "torch",
        "common_backend_version": 1,
    }
).encode()
WEIGHTS_DIR = "./model_weights"
LEGACY_CKPT = "./model_weights.ckpt"
CONFIG_MEMBER = "./model_config.yaml"


@dataclass(frozen=True)
class Part:
    """Bytes of a member that come from source tensors: `copy` one HF tensor, or `qkv` fuse three."""

    op: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Member:
    """One tar member. `blob` for small files, `parts` for tensor data, `ckpt` for the legacy zip."""

    name: str
    size: int = 0
    is_dir: bool = False
    blob: bytes | None = None
    parts: tuple[Part, ...] = ()
    ckpt: TorchZip | None = None


# --- zarr (mcore) -----------------------------------------------------------------------------------------


def zarray(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: torch.dtype) -> bytes:
    """A zarr v2 `.zarray` exactly as zarr 2 writes it (4-space indent, sorted keys, no newline)."""
    meta = {
        "chunks": list(chunks),
        "compressor": None,
        "dtype": ZARR_DTYPES[dtype],
        "fill_value": None,
        "filters": None,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }
    return json.dumps(meta, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": ")).encode()


def _torch_save_as(obj: object, filename: str) -> bytes:
    """`torch.save(obj, path)` bytes; torch names the archive after the file, so save under NeMo's name."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        torch.save(obj, path)
        with open(path, "rb") as f:
            return f.read()


@cache
def extra_state_shard(layer: int, layers: int) -> bytes:
    """`shard_<l>_<L>.pt`: torch.save of a BytesIO holding torch.save(None), positioned at its end."""
    inner = io.BytesIO()
    torch.save(None, inner)
    buf = io.BytesIO(inner.getvalue())
    buf.seek(0, io.SEEK_END)
    return _torch_save_as(buf, f"shard_{layer}_{layers}.pt")


@cache
def common_pt() -> bytes:
    return _torch_save_as({}, "common.pt")


def _chunk_name(index: tuple[int, ...]) -> str:
    return ".".join(str(i) for i in index)


def _dir(name: str) -> Member:
    return Member(name, is_dir=True)


def _blob(name: str, data: bytes) -> Member:
    return Member(name, size=len(data), blob=data)


def mcore_arrays(cfg: Any, dtype: torch.dtype) -> dict[str, tuple[bytes, dict[str, tuple[Part, ...]]]]:
    """zarr arrays by key: (`.zarray` bytes, {chunk name: parts}). `cfg` is an `hf.LlamaConfig`."""
    L, h, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    shapes = {
        "self_attention.linear_qkv.layer_norm_weight": (h,),
        "self_attention.linear_qkv.weight": (qkv_rows, h),
        "self_attention.linear_proj.weight": (h, h),
        "mlp.linear_fc1.layer_norm_weight": (h,),
        "mlp.linear_fc1.weight": (2 * f, h),
        "mlp.linear_fc2.weight": (h, f),
    }
    arrays: dict[str, tuple[bytes, dict[str, tuple[Part, ...]]]] = {}
    for rule in mapping.MCORE_GLOBAL:
        shape = (
            (cfg.vocab_size, h) if rule.key.endswith("embeddings.weight") or "output" in rule.key else (h,)
        )
        chunk = _chunk_name((0,) * len(shape))
        arrays[rule.key] = (zarray(shape, shape, dtype), {chunk: (Part("copy", rule.sources),)})
    for rule in mapping.MCORE_LAYER:
        shape = shapes[rule.key]
        chunks: dict[str, tuple[Part, ...]] = {}
        # fc1 = [gate; up] is chunked in halves: gate is chunk l.0.0, up is l.1.0
        pieces = len(rule.sources) if rule.op == "cat" else 1
        chunk_shape = (1, shape[0] // pieces, *shape[1:])
        for layer in range(L):
            srcs = tuple(mapping.layer_source(layer, s) for s in rule.sources)
            for i in range(pieces):
                name = _chunk_name((layer, i, *([0] * (len(shape) - 1))))
                part = Part("qkv", srcs) if rule.op == "qkv" else Part("copy", (srcs[i],))
                chunks[name] = (part,)
        arrays[mapping.MCORE_PREFIX + rule.key] = (zarray((L, *shape), chunk_shape, dtype), chunks)
    return arrays


def _tensor_size(cfg: Any, parts: Iterable[Part], dtype: torch.dtype) -> int:
    shapes = cfg.hf_shapes()
    total = 0
    for part in parts:
        total += sum(math.prod(shapes[s]) for s in part.sources)
    return total * dtype.itemsize


def mcore_members(
    cfg: Any, tokenizer_name: str, tokenizer: bytes, yaml_text: bytes, dtype: torch.dtype
) -> list[Member]:
    """Every member of an mcore `.nemo`, in the order NeMo's `tar.add` writes them (see `in_read_order`)."""
    L = cfg.num_layers
    weights: dict[str, list[Member]] = {
        "common.pt": [_blob(f"{WEIGHTS_DIR}/common.pt", common_pt())],
        "metadata.json": [_blob(f"{WEIGHTS_DIR}/metadata.json", METADATA_JSON)],
    }
    for key, (meta, chunks) in mcore_arrays(cfg, dtype).items():
        base = f"{WEIGHTS_DIR}/{key}"
        entries = [_dir(base), _blob(f"{base}/.zarray", meta)]
        for chunk in sorted(chunks):
            entries.append(
                Member(f"{base}/{chunk}", size=_tensor_size(cfg, chunks[chunk], dtype), parts=chunks[chunk])
            )
        weights[key] = entries
    for module in mapping.MCORE_EXTRA_STATE:
        key = f"{mapping.MCORE_PREFIX}{module}._extra_state"
        base = f"{WEIGHTS_DIR}/{key}"
        shards = {f"shard_{i}_{L}.pt": extra_state_shard(i, L) for i in range(L)}
        weights[key] = [_dir(base)] + [_blob(f"{base}/{n}", shards[n]) for n in sorted(shards)]
    members = [_dir("."), *_top(tokenizer_name, tokenizer, yaml_text), _dir(WEIGHTS_DIR)]
    for key in sorted(weights):
        members.extend(weights[key])
    return members


def in_read_order(members: list[Member], position: Callable[[Part], Any]) -> list[Member]:
    """The same members, tensor chunks last, in the order of `position` (where their source bytes lie).

    NeMo's `tar.add` order visits every layer's q, k, v, then every layer's o_proj, and so on: over
    safetensors files on disk that is nine strided passes, measured 2x slower than reading the files in
    order. A tar's member order means nothing to NeMo, which extracts the file whole; everything else
    (directories before their contents, `.zarray`, metadata, extra state) keeps NeMo's order.
    """
    structure = [m for m in members if not m.parts]
    chunks = sorted((m for m in members if m.parts), key=lambda m: position(m.parts[0]))
    return structure + chunks


def _top(tokenizer_name: str, tokenizer: bytes, yaml_text: bytes) -> list[Member]:
    top = {tokenizer_name: tokenizer, "model_config.yaml": yaml_text}
    return [_blob(f"./{n}", top[n]) for n in sorted(top)]


def legacy_members(
    cfg: Any, tokenizer_name: str, tokenizer: bytes, yaml_text: bytes, dtype: torch.dtype
) -> list[Member]:
    """Every member of a legacy `.nemo` (`mcore_gpt: false`): config, tokenizer, `model_weights.ckpt`."""
    shapes = cfg.hf_shapes()
    entries: list[tuple[str, Part | torch.Tensor | None, tuple[int, ...]]] = []

    def add(rule: mapping.Rule, layer: int | None, key: str) -> None:
        if rule.op == "none":
            entries.append((key, None, ()))
            return
        srcs = tuple(mapping.layer_source(layer, s) if layer is not None else s for s in rule.sources)
        rows = sum(shapes[s][0] for s in srcs)
        shape = (rows, *shapes[srcs[0]][1:])
        entries.append((key, Part(rule.op, srcs), shape))

    add(mapping.LEGACY_EMBEDDING, None, mapping.LEGACY_EMBEDDING.key)
    inv = mapping.inv_freq(cfg.rope_theta, cfg.head_dim).to(dtype)
    entries.append((mapping.LEGACY_INV_FREQ, inv, tuple(inv.shape)))
    for layer in range(cfg.num_layers):
        for rule in mapping.LEGACY_LAYER:
            add(rule, layer, f"{mapping.LEGACY_PREFIX}{layer}.{rule.key}")
    for rule in mapping.LEGACY_TAIL:
        add(rule, None, rule.key)
    ckpt = TorchZip("model_weights", entries, dtype)
    return [
        _dir("."),
        *_top(tokenizer_name, tokenizer, yaml_text),
        Member(LEGACY_CKPT, size=ckpt.size, ckpt=ckpt),
    ]


# --- tar stream -----------------------------------------------------------------------------------------


class TarStream:
    """Write an uncompressed tar to a forward-only stream, member data streamed after its header.

    Tensor data that needs no conversion may come as a `FileRange` of a local source: into a local file it
    is copied by the kernel (`copy_file_range`, what `cp` does), never passing through our memory; the
    `digest` reads those bytes back from the page cache to hash and check them.
    """

    _BUFFER = 16 * 2**20

    def __init__(self, f: IO[bytes], digest: StreamDigest | None = None) -> None:
        self.f = f
        self.pos = 0
        self.digest = digest  # sees every write, in order (the sha256 of the file, NaN checks)
        try:
            self._fd: int | None = f.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._buf: bytearray | None = None

    def write(self, data: bytes | memoryview | FileRange) -> None:
        if isinstance(data, FileRange):
            self._copy_range(data)
        else:
            self.f.write(data)
        if self.digest is not None:
            self.digest.add(data)
        self.pos += len(data)

    def _copy_range(self, r: FileRange) -> None:
        done = 0
        if self._fd is not None:
            self.f.flush()
            try:
                while done < r.size:
                    n = os.copy_file_range(r.fd, self._fd, r.size - done, r.offset + done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                pass  # not supported between these files: copy through a buffer below
        if done < r.size:
            self._buf = self._buf or bytearray(self._BUFFER)
            view = memoryview(self._buf)
            while done < r.size:
                n = os.preadv(r.fd, [view[: min(len(view), r.size - done)]], r.offset + done)
                if n <= 0:
                    raise StepFailed(f"{r.file}: {r.name!r} ended early (truncated while converting?)")
                self.f.write(view[:n])
                done += n

    def header(self, member: Member) -> None:
        self.write(tarball.header(member.name, member.size, directory=member.is_dir))

    def end_member(self, size: int) -> None:
        pad = tarball.padding(size)
        if pad:
            self.write(pad)

    def close(self) -> None:
        self.write(tarball.trailer(self.pos))


# --- legacy torch.save zip ------------------------------------------------------------------------------

_STORAGE_TYPES = {
    torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage",
    torch.float32: "FloatStorage",
}


class _StorageRef:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorStub:
    """Pickles exactly like a contiguous CPU tensor whose storage is record `data/<key>`."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        stride = tuple(math.prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        hooks: OrderedDict[str, Any] = OrderedDict()  # a plain OrderedDict, pickled as torch does
        args = (self.storage, 0, self.shape, stride, False, hooks)
        return (torch._utils._rebuild_tensor_v2, args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _StorageRef):
            storage_type = getattr(torch, _STORAGE_TYPES[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


@dataclass
class _Record:
    name: str
    size: int
    offset: int = 0
    extra: bytes = b""
    crc: int = 0


@dataclass
class TorchZip:
    """A `torch.save` archive of one flat dict, laid out up front so its size is known before writing.

    `entries`: (key, Part | small tensor | None, shape). Tensor records come in dict order as `data/<n>`.
    """

    archive: str
    entries: list[tuple[str, Part | torch.Tensor | None, tuple[int, ...]]]
    dtype: torch.dtype
    records: list[_Record] = field(default_factory=list)
    pickle_bytes: bytes = b""
    sources: dict[str, Part | torch.Tensor] = field(default_factory=dict)
    size: int = 0

    _ALIGN = 64

    def __post_init__(self) -> None:
        state: dict[str, _TensorStub | None] = {}
        sizes: list[tuple[str, int]] = []
        for key, source, shape in self.entries:
            if source is None:
                state[key] = None
                continue
            skey = str(len(sizes))
            numel = math.prod(shape)
            state[key] = _TensorStub(_StorageRef(skey, self.dtype, numel), shape)
            sizes.append((skey, numel * self.dtype.itemsize))
            self.sources[skey] = source
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(state)
        self.pickle_bytes = buf.getvalue()
        small = {
            ".format_version": b"1",
            ".storage_alignment": b"64",
            "byteorder": b"little",
            "version": b"3\n",
        }
        names = [("data.pkl", len(self.pickle_bytes))]
        names += [(n, len(small[n])) for n in (".format_version", ".storage_alignment", "byteorder")]
        names += [(f"data/{k}", n) for k, n in sizes]
        names += [("version", len(small["version"]))]
        self._small = {**small, "data.pkl": self.pickle_bytes}
        pos = 0
        for name, size in names:
            full = f"{self.archive}/{name}"
            base = pos + 30 + len(full.encode()) + 4
            pad = -base % self._ALIGN
            rec = _Record(full, size, pos, struct.pack("<HH", 0x4246, pad) + b"Z" * pad)
            self.records.append(rec)
            pos += 30 + len(full.encode()) + len(rec.extra) + size + self._descriptor_size(rec)
        self._cd_offset = pos
        self._cd_size = sum(46 + len(r.name.encode()) + len(self._cd_extra(r)) for r in self.records)
        self.size = pos + self._cd_size + 56 + 20 + 22

    def parts(self) -> tuple[Part, ...]:
        """The tensor parts, in the order `write` asks for them."""
        return tuple(s for s in self.sources.values() if isinstance(s, Part))

    @staticmethod
    def _big(rec: _Record) -> bool:
        return rec.size >= 0xFFFFFFFF

    def _descriptor_size(self, rec: _Record) -> int:
        return 24 if self._big(rec) else 16

    def _cd_extra(self, rec: _Record) -> bytes:
        fields = b""
        if self._big(rec):
            fields += struct.pack("<QQ", rec.size, rec.size)
        if rec.offset >= 0xFFFFFFFF:
            fields += struct.pack("<Q", rec.offset)
        return struct.pack("<HH", 1, len(fields)) + fields if fields else b""

    def write(
        self,
        out: Callable[[bytes | memoryview], None],
        tensor_bytes: Callable[[Part], Iterator[memoryview | FileRange]],
    ) -> None:
        """Write the archive through `out`; `tensor_bytes(part)` streams one tensor's output bytes."""
        for rec in self.records:
            name = rec.name.encode()
            out(
                struct.pack(
                    "<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0, len(name), len(rec.extra)
                )
            )
            out(name)
            out(rec.extra)
            short = rec.name[len(self.archive) + 1 :]
            crc, written = 0, 0
            if short.startswith("data/"):
                source = self.sources[short[len("data/") :]]
                chunks: Iterable[bytes | memoryview | FileRange] = (
                    tensor_bytes(source) if isinstance(source, Part) else [tensor_data(source)]
                )
            else:
                chunks = [self._small[short]]
            for piece in chunks:
                chunk = read_range(piece) if isinstance(piece, FileRange) else piece
                crc = zlib.crc32(chunk, crc)
                written += len(chunk)
                out(chunk)
            if written != rec.size:
                raise RuntimeError(f"{rec.name}: wrote {written} bytes, expected {rec.size}")
            rec.crc = crc
            if self._big(rec):
                out(struct.pack("<IIQQ", 0x08074B50, crc, rec.size, rec.size))
            else:
                out(struct.pack("<IIII", 0x08074B50, crc, rec.size, rec.size))
        for rec in self.records:
            name, extra = rec.name.encode(), self._cd_extra(rec)
            size32 = 0xFFFFFFFF if self._big(rec) else rec.size
            off32 = min(rec.offset, 0xFFFFFFFF)
            out(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50, 0, 0, 0x0808, 0, 0, 0, rec.crc, size32, size32,
                    len(name), len(extra), 0, 0, 0, 0, off32,
                )
            )  # fmt: skip
            out(name)
            out(extra)
        n = len(self.records)
        eocd64 = self._cd_offset + self._cd_size
        out(
            struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, self._cd_size, self._cd_offset)
        )
        out(struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1))
        out(
            struct.pack(
                "<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                min(self._cd_size, 0xFFFFFFFF), min(self._cd_offset, 0xFFFFFFFF), 0,
            )
        )  # fmt: skip


def read_range(r: FileRange) -> bytes:
    data = os.pread(r.fd, r.size, r.offset)
    if len(data) != r.size:
        raise StepFailed(f"{r.file}: {r.name!r} ended early (truncated while converting?)")
    return data


def tensor_data(t: torch.Tensor) -> memoryview:
    """The raw little-endian C-order bytes of a CPU tensor, without a copy when it is contiguous."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")  # type: ignore[arg-type]


# --- reading a .nemo back -------------------------------------------------------------------------------


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("collections", "OrderedDict"),
    *(("torch", n) for n in _STORAGE_TYPES.values()),
}
_STORAGE_DTYPE = {v: k for k, v in _STORAGE_TYPES.items()}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of a legacy checkpoint not yet read: storage record `key`."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int


def _lazy_rebuild(
    storage: tuple[str, torch.dtype], offset: int, shape: tuple[int, ...], *_: object
) -> LazyTensor:
    return LazyTensor(storage[0], storage[1], tuple(shape), offset)


class _LazyUnpickler(pickle.Unpickler):
    """Reads `data.pkl` of a torch zip without touching storages; only plain state-dict globals allowed."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a NeMo checkpoint")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _lazy_rebuild
        if module == "torch":
            return name
        return OrderedDict

    def persistent_load(self, pid: Any) -> Any:
        _, storage_type, key, _location, _numel = pid
        return (key, _STORAGE_DTYPE[storage_type])


class NemoReader:
    """Random access to the members of a `.nemo` tar (local or object storage) without extracting it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        with tarfile.open(fileobj=f, mode="r:") as tar:
            self.members = {m.name: m for m in tar.getmembers()}
        self.names = list(self.members)

    @property
    def layout(self) -> str:
        return "legacy" if LEGACY_CKPT in self.members else "mcore"

    def read(self, name: str, start: int = 0, size: int | None = None) -> bytes:
        m = self.members[name]
        size = m.size - start if size is None else size
        self.f.seek(m.offset_data + start)
        data = self.f.read(size)
        if len(data) != size:
            raise EOFError(f"{name}: truncated")
        return data  # type: ignore[no-any-return]

    def tokenizer_member(self) -> str:
        return next(n for n in self.names if n.endswith("_tokenizer.model"))

    def mcore_tensors(self, num_layers: int) -> Iterator[tuple[str, torch.Tensor]]:
        """(per-layer NeMo key, tensor) for every array, decoded from its zarr chunks."""
        arrays = sorted(
            n[len(WEIGHTS_DIR) + 1 : -len("/.zarray")] for n in self.names if n.endswith("/.zarray")
        )
        for key in arrays:
            base = f"{WEIGHTS_DIR}/{key}"
            meta = json.loads(self.read(f"{base}/.zarray"))
            dtype, shape, chunks = ZARR_TORCH[meta["dtype"]], tuple(meta["shape"]), tuple(meta["chunks"])
            if not key.startswith(mapping.MCORE_PREFIX):
                yield key, self._chunk(f"{base}/{_chunk_name((0,) * len(shape))}", dtype, shape)
                continue
            pieces = shape[1] // chunks[1] if len(shape) > 2 else 1
            for layer in range(num_layers):
                parts = [
                    self._chunk(
                        f"{base}/{_chunk_name((layer, i, *([0] * (len(shape) - 2))))}", dtype, chunks[1:]
                    )
                    for i in range(pieces)
                ]
                name = f"{mapping.MCORE_PREFIX}{layer}.{key[len(mapping.MCORE_PREFIX) :]}"
                yield name, parts[0] if pieces == 1 else torch.cat(parts)

    def _chunk(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return bytes_to_tensor(self.read(name), dtype, shape)

    def legacy_tensors(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        """(key, tensor or None) of `model_weights.ckpt` in file order, reading one record at a time."""
        import zipfile

        m = self.members[LEGACY_CKPT]
        view = _Window(self.f, m.offset_data, m.size)
        with zipfile.ZipFile(view) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            archive = pkl[: -len("data.pkl")]
            state = _LazyUnpickler(io.BytesIO(z.read(pkl))).load()
            for key, value in state.items():
                if isinstance(value, LazyTensor):
                    raw = z.read(f"{archive}data/{value.key}")
                    numel = math.prod(value.shape)
                    start = value.offset * value.dtype.itemsize
                    yield (
                        key,
                        bytes_to_tensor(
                            raw[start : start + numel * value.dtype.itemsize], value.dtype, value.shape
                        ),
                    )
                else:
                    yield key, value


def bytes_to_tensor(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


class _Window(io.RawIOBase):
    """A read-only seekable view of bytes [start, start+size) of another file (a tar member)."""

    def __init__(self, f: IO[bytes], start: int, size: int) -> None:
        self.f, self.start, self.size_, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size_}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.size_ - self.pos))
        if not n:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)
