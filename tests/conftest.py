"""Shared fixtures: the `neva-prep` command as users run it, a real S3 server (moto, HTTP on 127.0.0.1), a
real GCS server (gcp-storage-emulator), and tiny real LLaMA checkpoints generated on the fly."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neva_prep.sample import TinyLlama, write_llama
from slurm_cluster import SlurmCluster, SlurmUnavailable, start

REPO = Path(__file__).resolve().parent.parent


def neva(
    *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `neva-prep ARGS...` in a fresh process, as a user would; never raises on a non-zero exit."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "neva_prep.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _local_server(module: list[str], probe: str, what: str) -> Iterator[str]:
    """`python -m MODULE...` (formatted with `{port}`) as a server on a free port of 127.0.0.1, its URL once
    `probe` (a path) answers; stopped afterwards."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", *(arg.format(port=port) for arg in module)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + probe, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process, listening on 127.0.0.1."""
    server = ["moto.server", "-H", "127.0.0.1", "-p", "{port}"]
    with _local_server(server, "/moto-api/", "moto S3 server") as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty bucket; returns its URL (`s3://name`). The environment points s3fs at the server."""
    import boto3
    import s3fs

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-never-printed",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"neva-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """A GCS JSON-API server (gcp-storage-emulator, in memory) in its own process on 127.0.0.1."""
    server = ["gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", "{port}", "--in-memory"]
    with _local_server(server, "/storage/v1/b?project=test", "GCS emulator") as url:
        yield url


@pytest.fixture
def gcs(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty bucket; returns its URL (`gs://name`). `STORAGE_EMULATOR_HOST` points gcsfs (here and
    in `neva-prep` subprocesses) at the server, with anonymous access."""
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    gcsfs.GCSFileSystem.clear_instance_cache()
    bucket = f"neva-{uuid.uuid4().hex[:12]}"
    gcsfs.GCSFileSystem().mkdir(bucket)
    yield f"gs://{bucket}"
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `tiny_llama(spec=TinyLlama(...), dtype=..., weights='safetensors'|'bin', shards=N)`."""
    counter = iter(range(1_000_000))

    def make(spec: TinyLlama = TinyLlama(), **kwargs: object) -> Path:
        return write_llama(tmp_path / f"hf-{next(counter)}", spec, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """A running single-node Slurm cluster (tests/slurm_cluster.py), one per test module; clients and
    `neva-prep` subprocesses find it through $SLURM_CONF."""
    try:
        cluster = start()
    except SlurmUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise  # CI must run these tests, never skip them
        pytest.skip(f"no Slurm here: {exc}")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        yield cluster
    cluster.stop()
