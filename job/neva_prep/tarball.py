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


def _ustar_template() -> tuple[bytes, int]:
    """A regular file's ustar header with the name and size fields zeroed, and the checksum of the rest."""
    block = bytearray(_full_header("", 0, directory=False))
    block[124:136] = bytes(12)
    block[148:156] = b" " * 8  # the checksum field counts as spaces (POSIX)
    return bytes(block), sum(block)


_NUMBER_LIMIT = 8**11  # the largest size a 12-byte ustar field holds; beyond it tarfile writes a PAX record
_LENGTH_NAME = 100


def header(name: str, size: int, *, directory: bool = False) -> bytes:
    """The header block(s) of one member; its `size` bytes and `padding(size)` follow.

    A regular file with an ASCII name of at most 100 bytes and a size below 8 GiB needs no PAX record, and its
    header is the template with name, size and checksum filled in: the bytes `tarfile` makes
    (`tests/test_tarball.py` compares them), without its ~40 µs of Python per member, which the Energon export
    pays twice a sample."""
    if directory or not name.isascii() or len(name) > _LENGTH_NAME or size >= _NUMBER_LIMIT or "\0" in name:
        return _full_header(name, size, directory=directory)
    raw = name.encode("ascii")
    number = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(raw) + sum(number)  # the template holds zeros there
    block = bytearray(_TEMPLATE)
    block[: len(raw)] = raw
    block[124:136] = number
    block[148:155] = b"%06o\0" % checksum
    return bytes(block)


def _full_header(name: str, size: int, *, directory: bool) -> bytes:
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


_TEMPLATE, _TEMPLATE_SUM = _ustar_template()
