"""Hand the host's pip configuration to a container build, so pip inside it reaches packages as the host does.

CI machines reach the package index through whatever their pip is configured with: extra indexes and wheel
folders on local disk, a constraint file, a CA bundle for a TLS-intercepting proxy. None of that exists in a
freshly made base image, and none of it may be baked into the image we ship. So: merge what
`pip config list` shows (files and PIP_* variables; the variables win, as in pip) into one pip.conf for the
build's /etc/pip.conf, and list the local files and folders it names as read-only bind mounts at the same
paths. Build-time mounts are not part of the image.

Usage: pip-for-build.py PIP_CONF_OUT  -> writes PIP_CONF_OUT, prints one `-v SRC:DST:ro` argument per line.
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

PATH_KEYS = {"cert", "client-cert", "constraint", "build-constraint", "find-links"}
INDEX_KEYS = {"index-url", "extra-index-url"}


def host_config() -> dict[str, dict[str, str]]:
    """Sections -> options as pip itself resolves them (PIP_* variables override the files)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section == ":env:":
            env[name] = ast.literal_eval(value)
        else:
            files.setdefault(section, {})[name] = ast.literal_eval(value)
    files.setdefault("global", {}).update(env)
    return files


def local_paths(config: dict[str, dict[str, str]]) -> set[Path]:
    """Files and folders on this machine the config points at; an index on disk comes with its parent,
    because PEP 503 pages usually link their files beside the `simple/` folder (`../../files/...`)."""
    paths: set[Path] = set()
    for options in config.values():
        for name, value in options.items():
            if name not in PATH_KEYS | INDEX_KEYS:
                continue
            for token in value.split():
                url = urlparse(token)
                if url.scheme not in ("", "file"):
                    continue
                path = Path(unquote(url.path))
                if name in INDEX_KEYS:
                    path = path.parent
                if path.is_absolute() and path.exists():
                    paths.add(path)
    return paths


def main() -> None:
    out = Path(sys.argv[1])
    config = host_config()
    parser = configparser.ConfigParser(interpolation=None)
    for section, options in config.items():
        parser[section] = options
    with out.open("w") as f:
        parser.write(f)
    os.chmod(out, 0o644)
    print(f"-v={out}:/etc/pip.conf:ro")
    for path in sorted(local_paths(config)):
        print(f"-v={path.resolve()}:{path}:ro")  # a symlink's target, at the path pip was given


if __name__ == "__main__":
    main()
