"""The input files of a dataset: which files a source names, what kind each is, which version it is."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from neva_prep import storage
from neva_prep.errors import BadInput

FORMATS = ("webvid", "captions", "llava")


def file_kind(url: str, fmt: str) -> str:
    """`csv`, `jsonl`, `json` (a JSON array, or JSON lines if it does not start with `[`) or `parquet`."""
    if fmt not in FORMATS:
        raise BadInput(f"--from must be one of {', '.join(FORMATS)}, got {fmt!r}")
    name = posixpath.basename(url.rstrip("/")).lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            raise BadInput(f"{storage.redact(url)}: compressed inputs are not supported; decompress first")
    ext = posixpath.splitext(name)[1]
    if fmt == "webvid":
        if ext not in (".csv", ".txt", ""):
            raise BadInput(f"{storage.redact(url)}: --from webvid reads CSV files")
        return "csv"
    kinds = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
    if fmt == "llava":
        kinds = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
    try:
        return kinds[ext]
    except KeyError:
        raise BadInput(
            f"{storage.redact(url)}: cannot tell the file type from {ext or 'no extension'!r} "
            f"(--from {fmt} reads {', '.join(sorted(kinds))})"
        ) from None


def expand_sources(src: str) -> list[str]:
    """The input files: a glob (sorted), a directory's files (sorted), or one file; BadInput if none."""
    if any(c in src for c in "*?["):
        found = [u for u in storage.glob(src) if not storage.isdir(u)]
    elif storage.isdir(src):
        found = [storage.join(src, n) for n in storage.listdir(src) if not n.startswith(".")]
        found = [u for u in found if not storage.isdir(u)]
    elif storage.exists(src):
        found = [src]
    else:
        raise BadInput(f"{storage.redact(src)}: no such file")
    if not found:
        raise BadInput(f"{storage.redact(src)}: matches no input files")
    return sorted(found)


_VERSION_KEYS = ("VersionId", "generation", "ETag", "etag", "md5Hash")
"""Object-store metadata that changes whenever an object's bytes do (S3, GCS), in order of preference."""


def file_identity(url: str) -> dict[str, Any]:
    """Which version of `url` this is, in one metadata request: redacted URL, size, and locally the
    modification time in ns, on object stores the version id / ETag. A file rewritten in place to the
    same size still gets a new identity (unless its mtime is restored by hand)."""
    identity: dict[str, Any] = {"source": storage.redact(url)}
    try:
        if storage.is_local(url):
            st = os.stat(storage.local_path(url))
            identity.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            return identity
        info = storage.filesystem(url).info(url)
    except FileNotFoundError:
        raise BadInput(f"{storage.redact(url)}: no such file") from None
    except PermissionError:
        raise BadInput(f"{storage.redact(url)}: permission denied") from None
    identity["size"] = int(info["size"])
    versions = {k: str(info[k]) for k in _VERSION_KEYS if info.get(k)}
    if not versions:  # a store without versions or ETags: its modification time is the best there is
        versions = {k: str(info[k]) for k in ("mtime", "LastModified", "updated") if info.get(k)}
    identity.update(versions)
    return identity
