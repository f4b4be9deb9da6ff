"""Does a record's media file exist under `--media-root`? One directory listing per directory.

WebVid copies are usually partial, so the check runs on every row; a request per file (a HEAD on S3)
would cost more than the conversion. Instead each directory is listed once and its names kept in a
small LRU cache: rows are usually grouped by directory (WebVid's `page_dir`), so a bounded cache of
directories lists each one once in practice while memory stays bounded on 10M-file datasets.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict

from neva_prep import storage
from neva_prep.data.records import RecordError


class MediaRoot:
    """Answers `exists(relative_path)` for files under `root` with cached directory listings."""

    def __init__(self, root: str, *, max_dirs: int = 256) -> None:
        self.root = root
        self.max_dirs = max_dirs
        self.listings = 0
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()

    def _names(self, directory: str) -> frozenset[str]:
        names = self._cache.get(directory)
        if names is not None:
            self._cache.move_to_end(directory)
            return names
        url = storage.join(self.root, directory) if directory else self.root
        names = frozenset(storage.listdir(url))
        self.listings += 1
        self._cache[directory] = names
        if len(self._cache) > self.max_dirs:
            self._cache.popitem(last=False)
        return names

    def exists(self, relative: str) -> bool:
        """True when `relative` (a validated relative path, no `..`) names a file under the root."""
        directory, name = posixpath.split(posixpath.normpath(relative))
        directory = "" if directory == "." else directory
        return bool(name) and name in self._names(directory)

    def check(self, paths: list[str], media: str) -> None:
        """Raise `RecordError("media missing")` naming the first of `paths` absent under the root."""
        missing = [p for p in paths if not self.exists(p)]
        if missing:
            detail = f"{media} {missing[0]!r} not found under {storage.redact(self.root)}"
            if len(missing) > 1:
                detail += f" (and {len(missing) - 1} more)"
            raise RecordError("media missing", detail)
