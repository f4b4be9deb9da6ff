"""`checkpoint convert` / `verify` against a real S3 server (moto, HTTP on 127.0.0.1) through s3fs."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import torch

from neva_prep import storage
from neva_prep.errors import StepFailed
from neva_prep.model import hf
from neva_prep.model.convert import convert_checkpoint
from neva_prep.model.verify import verify_checkpoint
from neva_prep.sample import TinyLlama, write_llama

pytestmark = pytest.mark.s3


def _upload(local: Path, url: str) -> None:
    for f in sorted(local.iterdir()):
        storage.write_bytes(storage.join(url, f.name), f.read_bytes())


def _client() -> object:
    import os

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def test_s3_source_and_destination_equal_local_output(s3: str, tmp_path: Path) -> None:
    local = write_llama(tmp_path / "hf", TinyLlama(num_key_value_heads=2), shards=2, inv_freq=True)
    _upload(local, f"{s3}/models/tiny")
    convert_checkpoint(str(local), str(tmp_path / "local.nemo"), precision="bf16")
    result = convert_checkpoint(f"{s3}/models/tiny", f"{s3}/out/tiny.nemo", precision="bf16")
    assert storage.read_bytes(f"{s3}/out/tiny.nemo") == (tmp_path / "local.nemo").read_bytes()
    assert result.bytes_written == storage.size(f"{s3}/out/tiny.nemo")
    checked = verify_checkpoint(f"{s3}/models/tiny", f"{s3}/out/tiny.nemo")
    assert checked.tensors == 3 + 6 * 2 and checked.max_logit_diff is None  # tensors only for an s3 source


def test_failure_mid_upload_leaves_nothing(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source shard is cut short while the output (several multipart parts) is being uploaded."""
    spec = TinyLlama(hidden_size=192, intermediate_size=512, num_hidden_layers=4)
    local = write_llama(tmp_path / "hf", spec, shards=2)
    monkeypatch.setattr(storage, "BLOCK_SIZE", 5 * 2**20)  # S3's smallest part: the output is ~7.7 MB
    bucket = s3.removeprefix("s3://")
    client = _client()
    seen_parts: list[int] = []
    real_read_rows = hf.HFCheckpoint.read_rows

    def read_rows(self: hf.HFCheckpoint, name: str, start: int, stop: int) -> torch.Tensor:
        if not seen_parts:  # once a part of the output is uploaded, truncate the shard being read
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[attr-defined]
            assert len(uploads) <= 1  # s3fs starts the one multipart upload when the first part is full
            parts = (
                client.list_parts(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])  # type: ignore[attr-defined]
                if uploads
                else {}
            )
            if parts.get("Parts"):
                seen_parts.append(len(parts["Parts"]))
                ref = self.refs[name]
                with open(ref.file, "r+b") as f:
                    f.truncate(ref.offset + 10)
        return real_read_rows(self, name, start, stop)

    monkeypatch.setattr(hf.HFCheckpoint, "read_rows", read_rows)
    dst = f"{s3}/out/model.nemo"
    with pytest.raises(StepFailed, match="ended early"):
        convert_checkpoint(str(local), dst, precision="32")
    assert seen_parts == [1]  # a part had been uploaded when it failed
    assert not storage.exists(dst)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # type: ignore[attr-defined]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # type: ignore[attr-defined]
