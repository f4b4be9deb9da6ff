"""`checkpoint convert`: HF LLaMA directory -> `.nemo`, streamed one tensor slice at a time.

Everything about the source is checked before the destination is opened; the tar is then written straight
to `storage.atomic_write(destination)` (no local temporary copy for object storage), so a failure at any
point leaves nothing at the destination. Every weight is checked for NaN/Inf on the way, and with
`sha256=True` (the model step, which records it) every byte written is hashed (`finite.py`, `digest.py`).
Memory stays near one slice (64 MiB) or one fused QKV weight.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from neva_prep import storage
from neva_prep.errors import BadInput
from neva_prep.model import config as nemo_config
from neva_prep.model import finite, hf, mapping, nemo_format
from neva_prep.model.digest import StreamDigest
from neva_prep.model.nemo_format import Member, Part, TarStream, tensor_data
from neva_prep.progress import Reporter

DTYPES = {"16": torch.float16, "bf16": torch.bfloat16, "32": torch.float32}
DEVICES = ("auto", "cpu", "cuda")
SLICE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ConvertResult:
    destination: str
    layout: str
    precision: str
    tensors: int
    bytes_written: int
    seconds: float
    tokenizer_member: str  # the ./<hex>_tokenizer.model member name
    sha256: str  # of the whole .nemo, computed while writing it ("" unless asked for)

    def summary(self) -> str:
        gib = self.bytes_written / 2**30
        return (
            f"wrote {storage.redact(self.destination)} ({self.layout} layout, precision {self.precision}): "
            f"{self.tensors:,} tensors, {gib:.2f} GiB in {self.seconds:.1f}s\n"
            f"tokenizer member: {self.tokenizer_member}" + (f"\nsha256: {self.sha256}" if self.sha256 else "")
        )


def tokenizer_member_name(tokenizer: bytes) -> str:
    """NeMo names the tokenizer `<uuid4 hex>_tokenizer.model`; we derive the uuid from its bytes so that
    converting the same input twice gives byte-identical output."""
    digest = hashlib.sha256(tokenizer).digest()[:16]
    return f"{uuid.UUID(bytes=digest, version=4).hex}_tokenizer.model"


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise BadInput(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available here")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def plan_members(
    cfg: hf.LlamaConfig, tokenizer: bytes, *, precision: str, layout: str
) -> tuple[list[Member], str]:
    """All tar members of the output and the tokenizer member name (no I/O)."""
    member = tokenizer_member_name(tokenizer)
    yaml_text = nemo_config.dump(
        nemo_config.model_config(cfg, tokenizer_member=member, precision=precision, layout=layout)
    )
    build = nemo_format.mcore_members if layout == "mcore" else nemo_format.legacy_members
    return build(cfg, member, tokenizer, yaml_text, DTYPES[precision]), member


class _ReadAhead:
    """Asks the kernel, from a helper thread, to read the sources of the parts to come (up to `WINDOW` bytes
    ahead of the part being written), so that reading the next tensors overlaps writing this one.

    `cp` gets that overlap from the kernel's sequential readahead; we read tensor by tensor, and a fused
    QKV chunk hops between q, k and v, which that readahead does not follow. Page cache only, never RSS.
    """

    WINDOW = 2 * 2**30

    def __init__(self, parts: list[Part], ranges: list[list[hf.FileRange]]) -> None:
        self._index = {part: i for i, part in enumerate(parts)}
        self._ranges = ranges
        self._ends = list(itertools.accumulate(sum(r.size for r in rs) for rs in ranges))
        self._current = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="neva-prep-readahead", daemon=True)

    def __enter__(self) -> _ReadAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def reached(self, part: Part) -> None:
        """The writer has started on `part`."""
        with self._cond:
            self._current = self._index.get(part, self._current)
            self._cond.notify()

    def _run(self) -> None:
        for i, ranges in enumerate(self._ranges):
            with self._cond:
                while not self._stop and self._ends[i] - self._ends[self._current] > self.WINDOW:
                    self._cond.wait()
                if self._stop:
                    return
            for r in ranges:
                r.prefetch()


class _Producer:
    """Turns a `Part` into output bytes: source slices cast to the output dtype (on the GPU if asked)."""

    def __init__(
        self, ckpt: hf.HFCheckpoint, dtype: torch.dtype, device: torch.device, *, ranges: bool = False
    ) -> None:
        self.ckpt, self.dtype, self.device = ckpt, dtype, device
        self.cfg = ckpt.config
        self.ranges = ranges  # may yield FileRange for data that is copied unchanged
        self.readahead: _ReadAhead | None = None

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == self.dtype:
            return t
        if self.device.type == "cuda":
            return t.to(self.device).to(self.dtype).cpu()
        return t.to(self.dtype)

    def _checked(self, name: str, src: torch.Tensor, start: int = 0) -> torch.Tensor:
        """`src` (rows start… of `name`) cast to the output dtype; bad input if any value is NaN or ±Inf."""
        out = self._cast(src)
        bad = finite.first_bad(out)
        if bad is None:
            return out
        ref = self.ckpt.refs[name]
        flat = start * math.prod(ref.shape[1:]) + bad
        value = float(src.reshape(-1)[bad])
        where = storage.redact(ref.file)
        if math.isfinite(value):
            raise BadInput(finite.overflow(where, name, ref.shape, flat, value, self.dtype))
        raise BadInput(finite.non_finite(where, name, ref.shape, flat, value))

    def inspect_range(self, r: hf.FileRange, pos: int, data: memoryview) -> None:
        """The NaN/Inf check of bytes copied unchanged (`data` is `r`'s bytes from `pos`, read back)."""
        ref = self.ckpt.refs[r.name]
        values = torch.frombuffer(data, dtype=ref.dtype)
        bad = finite.first_bad(values)
        if bad is not None:
            flat = (r.offset + pos - ref.offset) // ref.dtype.itemsize + bad
            where = storage.redact(ref.file)
            raise BadInput(finite.non_finite(where, r.name, ref.shape, flat, float(values[bad])))

    def source_ranges(self, part: Part) -> list[hf.FileRange]:
        """The local file ranges `part` reads (empty for `.bin` or remote sources): what to read ahead."""
        found = (self.ckpt.local_range(name) for name in part.sources)
        return [r for r in found if r is not None]

    def __call__(self, part: Part) -> Iterator[memoryview | hf.FileRange]:
        if self.readahead is not None:
            self.readahead.reached(part)
        if part.op == "qkv":  # streamed block by block in the fused order, never concatenated
            blocks = mapping.qkv_blocks(self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim)
            if self.ranges and all(self.ckpt.refs[n].dtype == self.dtype for n in part.sources):
                ranges = [self.ckpt.local_range(part.sources[i], start, stop) for i, start, stop in blocks]
                if all(r is not None for r in ranges):
                    yield from (r for r in ranges if r is not None)
                    return
            q, k, v = (self._checked(n, self.ckpt.read(n)) for n in part.sources)
            for i, start, stop in blocks:
                yield tensor_data((q, k, v)[i][start:stop])
            return
        for name in part.sources:  # copy, or cat (each source in order)
            ref = self.ckpt.refs[name]
            whole = self.ckpt.local_range(name) if self.ranges and ref.dtype == self.dtype else None
            if whole is not None:
                yield whole
                continue
            if len(ref.shape) < 2:
                yield tensor_data(self._checked(name, self.ckpt.read(name)))
                continue
            for start, stop in hf.iter_rows(ref.shape[0], ref.row_bytes, SLICE_BYTES):
                yield tensor_data(self._checked(name, self.ckpt.read_rows(name, start, stop), start))


def convert_checkpoint(
    source: str,
    destination: str,
    *,
    precision: str = "16",
    device: str = "auto",
    layout: str = "mcore",
    sha256: bool = False,
) -> ConvertResult:
    """Convert the HF LLaMA directory `source` into the `.nemo` file `destination` (local or URL); with
    `sha256`, hash the bytes as they are written (`ConvertResult.sha256`)."""
    start = time.monotonic()
    if precision not in DTYPES:
        raise BadInput(f"--precision must be one of 16, bf16, 32, got {precision!r}")
    if layout not in mapping.LAYOUTS:
        raise BadInput(f"--layout must be one of {', '.join(mapping.LAYOUTS)}, got {layout!r}")
    dev = resolve_device(device)
    cfg, tokenizer, ckpt = hf.open_checkpoint(source)
    with ckpt:
        if layout == "legacy" and cfg.grouped:
            raise BadInput(
                f"{storage.redact(source)}: grouped-query attention ({cfg.num_heads} heads, "
                f"{cfg.num_kv_heads} KV heads) cannot be stored in the legacy layout; use --layout mcore"
            )
        if storage.isdir(destination):
            raise BadInput(f"{storage.redact(destination)}: is a directory; give the .nemo file name")
        members, tok_member = plan_members(cfg, tokenizer, precision=precision, layout=layout)
        members = nemo_format.in_read_order(members, lambda part: ckpt.position(part.sources))
        # the legacy zip needs every byte for its CRCs; the mcore chunks can be copied by the kernel
        produce = _Producer(ckpt, DTYPES[precision], dev, ranges=layout == "mcore")
        parts = [p for m in members for p in (m.parts or (m.ckpt.parts() if m.ckpt else ()))]
        produce.readahead = _ReadAhead(parts, [produce.source_ranges(p) for p in parts])
        total = sum(m.size for m in members)
        tensors = sum(len(m.ckpt.sources) if m.ckpt else 0 for m in members) or (
            len(mapping.MCORE_GLOBAL) + len(mapping.MCORE_LAYER) * cfg.num_layers
        )
        with (
            Reporter(f"convert {storage.redact(source)}", total) as progress,
            storage.atomic_write(destination) as f,
            produce.readahead,
            StreamDigest(produce.inspect_range, sha256=sha256) as digest,
        ):
            tar = TarStream(f, digest)
            for m in members:
                tar.header(m)
                if m.is_dir:
                    continue
                before = tar.pos
                if m.blob is not None:
                    tar.write(m.blob)
                elif m.ckpt is not None:
                    m.ckpt.write(tar.write, produce)
                else:
                    for part in m.parts:
                        for chunk in produce(part):
                            tar.write(chunk)
                if tar.pos - before != m.size:
                    raise RuntimeError(f"{m.name}: wrote {tar.pos - before} bytes, planned {m.size}")
                tar.end_member(m.size)
                progress.advance(m.size, items=1 if m.parts else 0, what="tensors")
                digest.check()
            tar.close()
            written = tar.pos
            hexdigest = digest.hexdigest()  # waits for the NaN/Inf check of the last bytes: before the commit
    return ConvertResult(
        destination=destination,
        layout=layout,
        precision=precision,
        tensors=tensors,
        bytes_written=written,
        seconds=time.monotonic() - start,
        tokenizer_member=tok_member,
        sha256=hexdigest,
    )
