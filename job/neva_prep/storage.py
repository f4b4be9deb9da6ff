"""One storage layer over fsspec: local paths, ``s3://`` (s3fs), ``gs://`` (gcsfs).

Every write to a destination is atomic: local files are written under a temporary name in the same
directory and renamed; object-store files are one streamed (multipart) upload that is aborted when the
writer fails, so a failed run leaves nothing at the destination. Credentials come only from the
environment and fsspec's own configuration; URLs are redacted before they reach a message.

The S3 endpoint may be set with ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), as for the AWS CLI.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import fsspec
from fsspec.spec import AbstractFileSystem

from neva_prep.errors import BadInput

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")
BLOCK_SIZE = 16 * 2**20


def redact(url: str) -> str:
    """Drop any ``user:secret@`` from a URL so that it can be printed."""
    return _USERINFO.sub(r"\1***@", url)


def protocol(url: str) -> str:
    """``s3``, ``gs``, ``file``, …"""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else "file"


def is_local(url: str) -> bool:
    return protocol(url) == "file"


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def local_path(url: str) -> str:
    """The filesystem path of a local URL (`file://` stripped); for code that needs an OS file descriptor."""
    return _local_path(url)


def filesystem(url: str) -> AbstractFileSystem:
    """The fsspec filesystem for `url`, configured from the environment only."""
    proto = protocol(url)
    kwargs: dict[str, Any] = {}
    if proto in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        kwargs["default_block_size"] = BLOCK_SIZE
    try:
        if proto in ("s3", "s3a", "gs", "gcs"):
            kwargs["use_listings_cache"] = False
        return fsspec.filesystem(proto, **kwargs)
    except (ImportError, ValueError) as exc:
        raise BadInput(f"{redact(url)}: unsupported storage protocol {proto!r} ({exc})") from None


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL."""
    if is_local(base):
        return os.path.join(_local_path(base), *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def _path(url: str, fs: AbstractFileSystem) -> str:
    return _local_path(url) if is_local(url) else url


def exists(url: str) -> bool:
    """Whether `url` exists; a local path that cannot be looked at is bad input, never "missing"."""
    if is_local(url):
        try:
            os.stat(_local_path(url))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except PermissionError:
            raise BadInput(f"{redact(url)}: permission denied") from None
        return True
    fs = filesystem(url)
    return bool(fs.exists(_path(url, fs)))


def isdir(url: str) -> bool:
    fs = filesystem(url)
    return bool(fs.isdir(_path(url, fs)))


def size(url: str) -> int:
    fs = filesystem(url)
    return int(fs.size(_path(url, fs)))


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under `url`; empty when it does not exist."""
    fs = filesystem(url)
    path = _path(url, fs)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        raise BadInput(f"{redact(url)}: permission denied") from None
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


def entries(url: str) -> dict[str, dict[str, Any]]:
    """Files directly under `url`, by name, with the store's metadata (``size``, and ``mtime`` locally or
    ``ETag`` on object stores): one listing call, cheap enough to fingerprint a source before reading it."""
    fs = filesystem(url)
    try:
        found = fs.ls(_path(url, fs), detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except PermissionError:
        raise BadInput(f"{redact(url)}: permission denied") from None
    return {
        posixpath.basename(str(e["name"]).rstrip("/")): dict(e)
        for e in sorted(found, key=lambda e: str(e["name"]))
        if e.get("type") == "file"
    }


def glob(pattern: str) -> list[str]:
    """Expand a glob into sorted URLs (local paths stay paths); a plain path expands to itself."""
    fs = filesystem(pattern)
    if not any(c in pattern for c in "*?["):
        return [pattern]
    found = sorted(str(p) for p in fs.glob(_path(pattern, fs)))
    if is_local(pattern):
        return found
    proto = protocol(pattern)
    return [p if _SCHEME.match(p) else f"{proto}://{p}" for p in found]


_READ_POSITIONS: contextvars.ContextVar[Callable[[str, int], None] | None] = contextvars.ContextVar(
    "neva_prep_read_positions", default=None
)


@contextlib.contextmanager
def reporting_reads(callback: Callable[[str, int], None]) -> Iterator[None]:
    """While active, files opened with `open_read` call `callback(url, position)` after every read.

    This is how a step whose readers only hand out rows shows progress in bytes: the readers read in
    large chunks, so the call costs nothing measurable."""
    token = _READ_POSITIONS.set(callback)
    try:
        yield
    finally:
        _READ_POSITIONS.reset(token)


class _ReportingFile:
    """A read-only file that reports its position after each read; everything else is the file's own."""

    def __init__(self, f: IO[Any], url: str, callback: Callable[[str, int], None]) -> None:
        self._f = f
        self._url = url
        self._callback = callback

    def read(self, *args: Any) -> Any:
        data = self._f.read(*args)
        self._callback(self._url, self._f.tell())
        return data

    def readinto(self, buffer: Any) -> Any:
        n = self._f.readinto(buffer)  # type: ignore[attr-defined]
        self._callback(self._url, self._f.tell())
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._f)

    def __enter__(self) -> _ReportingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def open_read(url: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """Open `url` for reading; a missing or unreadable source is bad input (exit 2)."""
    fs = filesystem(url)
    try:
        f = fs.open(_path(url, fs), mode, **kwargs)
        callback = _READ_POSITIONS.get()
        return _ReportingFile(f, url, callback) if callback else f  # type: ignore[return-value]
    except FileNotFoundError:
        raise BadInput(f"{redact(url)}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{redact(url)}: is a directory, expected a file") from None
    except PermissionError:
        raise BadInput(f"{redact(url)}: permission denied") from None


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()  # type: ignore[no-any-return]


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def _missing_folders(directory: str) -> list[str]:
    """The folders `os.makedirs(directory)` would create, deepest first."""
    missing = []
    while directory and not os.path.lexists(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return missing


def _remove_empty(folders: list[str]) -> None:
    """Remove the folders a failed write made (deepest first), stopping at one that holds something."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator[IO[bytes]]:
    """Yield a binary file that appears at `url` only if the block finishes without an exception."""
    if is_local(url):
        path = _local_path(url)
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
        created = _missing_folders(directory)
        try:
            os.makedirs(directory, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115 - closed below, renamed only on success
        except OSError as exc:
            _remove_empty(created)
            raise unwritable(path, exc) from None
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _remove_empty(created)  # a failed write leaves no folders behind either
            raise
        return

    fs = filesystem(url)
    try:
        remote = fs.open(url, "wb", block_size=BLOCK_SIZE)
    except (PermissionError, OSError, ValueError) as exc:
        raise BadInput(f"{redact(url)}: cannot write destination ({type(exc).__name__})") from None
    try:
        yield remote
    except BaseException:
        # fsspec's close() would complete the upload: discard aborts the multipart upload instead.
        with contextlib.suppress(Exception):
            remote.discard()
        with contextlib.suppress(Exception):
            remote.closed = True
        raise
    try:
        remote.close()
    except (PermissionError, OSError) as exc:
        raise BadInput(f"{redact(url)}: cannot write destination ({type(exc).__name__})") from None


def publish_copy(source: str, url: str) -> None:
    """Make `url` a copy of the finished file `source` at once, without moving its bytes through Python where
    it can: locally a hard link (both names then share the bytes, which nothing writes in place: every write
    here is a new file renamed over the old), on one object store a server-side copy, else a streamed copy."""
    if is_local(url) and is_local(source) and _link(_local_path(source), _local_path(url)):
        return
    if not is_local(url) and protocol(source) == protocol(url):
        fs = filesystem(url)
        try:
            fs.copy(_path(source, fs), _path(url, fs))
        except (PermissionError, OSError) as exc:
            raise BadInput(f"{redact(url)}: cannot write destination ({type(exc).__name__})") from None
        return
    with atomic_write(url) as f, open_read(source) as src:
        shutil.copyfileobj(src, f, BLOCK_SIZE)


def _link(source: str, path: str) -> bool:
    """Hard-link `source` as `path` (replacing it atomically); False where the file system has no links."""
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}"
    )
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or one without hard links
        return False
    try:
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise unwritable(path, exc) from None
    return True


def write_bytes(url: str, data: bytes) -> None:
    """Atomically write `data` to `url`."""
    with atomic_write(url) as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def unwritable(url: str, exc: OSError | None = None) -> BadInput:
    """The one message for a destination that cannot be written: bad input, a retry cannot help."""
    why = f" ({exc.strerror or type(exc).__name__})" if exc is not None else ""
    return BadInput(f"{redact(url)}: cannot write destination{why}")


def remove(url: str, *, recursive: bool = False) -> None:
    """Remove `url` if it exists (a path under a regular file does not)."""
    fs = filesystem(url)
    path = _path(url, fs)
    try:
        fs.rm(path, recursive=recursive)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        raise unwritable(url, exc) from None


def makedirs(url: str) -> None:
    """Create a local directory (object stores need none); one that cannot be made is bad input."""
    if is_local(url):
        try:
            os.makedirs(_local_path(url), exist_ok=True)
        except OSError as exc:
            raise unwritable(url, exc) from None


def ensure_writable(url: str) -> None:
    """Fail early, creating nothing, when a local destination cannot be made or written.

    Walks up to the nearest existing ancestor: a regular file there, or a directory the process may not
    write into, makes the whole destination unusable. Object stores are checked by the first write."""
    if not is_local(url):
        return
    path = os.path.abspath(_local_path(url))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if probe != path and not os.path.isdir(probe):
        raise unwritable(url, NotADirectoryError(20, f"{probe} is not a directory"))
    if os.path.isdir(probe) and not os.access(probe, os.W_OK | os.X_OK):
        raise unwritable(url, PermissionError(13, "Permission denied"))
