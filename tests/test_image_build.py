"""The image's build and run commands, checked without a container engine.

`make image-test` (.ci/run) builds the Dockerfile with podman and runs the sample job in the image; these are
the quick checks of what it found broken: a file the Dockerfile copies left out of the build context, the job
run as root by `make docker-run`, and the host's pip configuration handed to the build.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parent.parent


def _in_build_context(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(candidate, glob) for candidate in candidates):
            included = keep
    return included


def _copy_sources() -> list[str]:
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = _copy_sources()
    assert "constraints.txt" in sources  # pip inside the build must not backtrack through botocore releases
    tracked = subprocess.run(
        ["git", "ls-files", *sources], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = [path for path in tracked if not _in_build_context(path, patterns)]
    assert tracked and not missing, f"copied by the Dockerfile, left out by .dockerignore: {missing}"


def _make_n(target: str, *variables: str) -> list[str]:
    """The container engine's command line that `make -n TARGET` prints (the recipe's last command)."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target, *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    last = out.replace("\\\n", " ").strip().splitlines()[-1]
    return shlex.split(last.replace("<(", "").replace(")", ""))


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_docker_run_never_runs_the_job_as_root(engine: str, tmp_path: Path) -> None:
    argv = _make_n("docker-run", f"CONTAINER={engine}", f"PLAN={tmp_path}/plan.yaml")
    assert argv[:2] == [engine, "run"]
    user = argv[argv.index("--user") + 1]
    expected = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    assert user == expected
    # as the Kubernetes manifests run it
    for flag in ("--read-only", "--tmpfs", "--cap-drop", "--security-opt"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"


def test_docker_run_refuses_root_asked_for_by_name(tmp_path: Path) -> None:
    for user in ("0:0", "0", "root"):
        run = subprocess.run(
            ["make", "docker-run", "CONTAINER=true", f"CONTAINER_USER={user}", f"PLAN={tmp_path}/plan.yaml"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode != 0 and "never runs as root" in run.stderr


def test_podman_builds_in_docker_format() -> None:
    """In OCI format podman ignores SHELL, and the Dockerfile's pipelines would lose pipefail."""
    assert "--format" in _make_n("docker-build", "CONTAINER=podman")
    assert "--format" not in _make_n("docker-build", "CONTAINER=docker")


def test_pip_configuration_handed_to_the_build(tmp_path: Path) -> None:
    """Files and PIP_* variables merge as pip merges them (the variables win); local paths become mounts."""
    (tmp_path / "wheels").mkdir()
    (tmp_path / "index" / "simple").mkdir(parents=True)
    (tmp_path / "ca.pem").write_text("")
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nfind-links = /nowhere\nextra-index-url = file://{tmp_path}/index/simple\n"
        f"cert = {tmp_path}/ca.pem\n[install]\nno-compile = yes\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS=str(tmp_path / "wheels"), HOME=str(tmp_path))
    out = tmp_path / "merged.conf"
    mounts = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "pip-for-build.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    merged = out.read_text()
    assert f"find-links = {tmp_path}/wheels" in merged and "/nowhere" not in merged
    assert "[install]\nno-compile = yes" in merged
    assert mounts[0] == f"-v={out}:/etc/pip.conf:ro"
    # (this machine's own /etc/pip.conf, if any, is read too: pip has no way to skip it)
    assert {f"-v={p}:{p}:ro" for p in (tmp_path / "wheels", tmp_path / "index", tmp_path / "ca.pem")} <= set(
        mounts[1:]
    )
    assert not any("/nowhere" in m for m in mounts)
