"""The tar header fast path gives exactly the bytes `tarfile` gives, and both read back."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from neva_prep import tarball

_NAMES = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1, max_size=120)
_SIZES = st.one_of(
    st.integers(0, 4096),
    st.integers(0, 8**11 + 10),
    st.sampled_from([0, 511, 512, 513, 8**11 - 1, 8**11, 2**40]),
)


@settings(max_examples=3000, deadline=None)
@given(_NAMES, _SIZES, st.booleans())
def test_header_is_tarfiles(name: str, size: int, directory: bool) -> None:
    """Every name (ASCII or not, up to and past 100 bytes) and size (up to and past 8 GiB) gives the bytes
    `tarfile.TarInfo.tobuf` makes with the fixed metadata."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o644
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    assert tarball.header(name, size, directory=directory) == info.tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
    )


def test_members_read_back() -> None:
    """A tar written from the headers reads back with the names, sizes and bytes put in."""
    members = [("a.json", b"{}"), ("0000000001-x.jpg", b"\xff\xd8" * 300), ("d" * 100, b""), ("é.txt", b"x")]
    out = io.BytesIO()
    for name, data in members:
        out.write(tarball.header(name, len(data)) + data + tarball.padding(len(data)))
    out.write(tarball.trailer(out.tell()))
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        got = [(m.name, m.size, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    assert got == [(n, len(d), d) for n, d in members]
