"""NaN and ±Inf weights: found while the bytes stream by, reported by tensor name and first index.

One NaN weight makes every activation after it NaN, and training finds out hours later; an fp32 value above
65504 becomes Inf when cast to fp16. Both convert without complaint unless someone looks, so the converter
looks at every byte it writes (`convert.py`), and `verify` reports them instead of comparing NaN with NaN.

`torch.aminmax` is the test: one pass, NaN propagates into it and ±Inf is an extreme. Measured on the
development VM's CPUs, one thread: 4 GB/s (fp16) to 7 GB/s (bf16, fp32), where `isfinite().all()` manages
0.1 GB/s for fp16. Only a slice that fails is searched again for the first bad index.
"""

from __future__ import annotations

import math

import torch


def first_bad(t: torch.Tensor) -> int | None:
    """The flat index of the first NaN or ±Inf in `t`, or None when every value is finite."""
    flat = t.reshape(-1)
    if not flat.numel() or not flat.dtype.is_floating_point:
        return None
    lo, hi = torch.aminmax(flat)
    if math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return None
    bad = (~torch.isfinite(flat)).nonzero()
    return int(bad[0]) if len(bad) else None


def index(flat: int, shape: tuple[int, ...]) -> list[int]:
    """`flat` as an index into a C-order tensor of `shape` (what a user types to look at the value)."""
    out = []
    for dim in reversed(shape):
        out.append(flat % dim)
        flat //= dim
    return out[::-1]


def non_finite(where: str, name: str, shape: tuple[int, ...], flat: int, value: float) -> str:
    """The one-line refusal for a NaN/Inf in a source tensor."""
    return (
        f"{where}: tensor {name!r} holds {value} at index {index(flat, shape)}; NaN or Inf weights "
        "cannot be trained (the checkpoint is damaged: re-export or re-download it)"
    )


def overflow(
    where: str, name: str, shape: tuple[int, ...], flat: int, value: float, dtype: torch.dtype
) -> str:
    """The one-line refusal for a finite source value that the output precision cannot hold."""
    kind = str(dtype).removeprefix("torch.")
    return (
        f"{where}: tensor {name!r} value {value} at index {index(flat, shape)} overflows {kind} "
        "(becomes Inf); convert with --precision bf16 or 32"
    )
