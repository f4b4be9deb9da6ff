"""Deterministic tar headers: the one place that fixes a member's metadata.

Both tar writers (the `.nemo` checkpoint and the Energon WebDataset shards) stream members into a
forward-only file, so they build headers themselves instead of going through `tarfile.TarFile`. Fixed
metadata (PAX format, mtime 0, uid/gid 0 with no names, mode 644 / 755) makes the same members give the
same bytes on any machine, at any time, as any user.
"""

from __future__ import annotations

import tarfile
from typing import Literal

MTIME = 0
FORMAT: Literal[0, 1, 2] = tarfile.PAX_FORMAT  # type: ignore[assignment]


def header(name: str, size: int, *, directory: bool = False) -> bytes:
    """The header block(s) of one member; its `size` bytes and `padding(size)` follow."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o644
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """Zeros that pad a member's data of `size` bytes to the 512-byte block."""
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def trailer(written: int) -> bytes:
    """The end-of-archive blocks, padded to a whole record as `tarfile` pads it, after `written` bytes."""
    end = 2 * tarfile.BLOCKSIZE
    return b"\0" * (end + (-(written + end) % tarfile.RECORDSIZE))
