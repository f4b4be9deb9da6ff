"""gs:// end to end, through gcsfs against a real GCS JSON-API server on 127.0.0.1 (gcp-storage-emulator):
the model step and the data step read and write Google Cloud Storage as they do local files and s3://."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest
import sentencepiece as spm

from conftest import neva
from neva_prep import storage
from neva_prep.sample import TinyLlama, write_llama
from test_data_convert_merge import ROWS, llava_records, webvid_csv

pytestmark = pytest.mark.gcs


def _run(*args: str) -> str:
    r = neva(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("shards", [1, 3])
def test_data_step_on_gcs_equals_local(gcs: str, tmp_path: Path, shards: int) -> None:
    """WebVid and LLaVA from gs:// to gs://, in 1 shard (the merge publishes by a server-side copy) and 3:
    the same bytes as the same run on local files."""
    csv_bytes, llava_bytes = webvid_csv(ROWS), orjson.dumps(llava_records(), option=orjson.OPT_INDENT_2)
    storage.write_bytes(f"{gcs}/in/webvid.csv", csv_bytes)
    storage.write_bytes(f"{gcs}/in/llava.json", llava_bytes)
    (tmp_path / "webvid.csv").write_bytes(csv_bytes)
    (tmp_path / "llava.json").write_bytes(llava_bytes)
    for root in (gcs, str(tmp_path)):
        for name, fmt, media in (("webvid.csv", "webvid", "video"), ("llava.json", "llava", "image")):
            src, dst = f"{root}/{'in/' if root == gcs else ''}{name}", f"{root}/out/{fmt}"
            for i in range(shards):
                _run("data", "convert", src, dst, "--from", fmt, "--media", media,
                     "--num-shards", str(shards), "--shard-index", str(i))  # fmt: skip
            out = _run("data", "merge", f"{root}/out/{fmt}", "--name", fmt)
            assert f"-> {root}/out/{fmt}/{fmt}.json" in out
    for fmt in ("webvid", "llava"):
        for name in (f"{fmt}.json", "rejects.jsonl"):
            local = (tmp_path / "out" / fmt / name).read_bytes()
            remote = storage.read_bytes(f"{gcs}/out/{fmt}/{name}")
            if name == "rejects.jsonl":  # each names its own source
                remote = remote.replace(f"{gcs}/in/".encode(), f"{tmp_path}/".encode())
            assert remote == local, (fmt, name)
    assert len(orjson.loads(storage.read_bytes(f"{gcs}/out/llava/llava.json"))) == 5


def test_media_root_on_gcs(gcs: str, tmp_path: Path) -> None:
    for vid, page_dir, _ in ROWS[:3]:
        storage.write_bytes(f"{gcs}/videos/{page_dir}/{vid}.mp4", b"")
    src = tmp_path / "webvid.csv"
    src.write_bytes(webvid_csv(ROWS))
    out = _run("data", "convert", str(src), str(tmp_path / "out"), "--from", "webvid", "--media", "video",
               "--media-root", f"{gcs}/videos")  # fmt: skip
    assert "3 converted, 4 rejected" in out and "media missing: 3" in out


def test_model_step_on_gcs(gcs: str, tmp_path: Path) -> None:
    """A tiny LLaMA read from gs:// and its .nemo and tokenizer written there: the bytes of a local run,
    the manifest names each input's ETag."""
    local = write_llama(tmp_path / "llama-tiny", TinyLlama(), shards=2)
    src = f"{gcs}/hf/llama-tiny"
    for path in sorted(local.iterdir()):
        storage.write_bytes(f"{src}/{path.name}", path.read_bytes())
    _run("model", str(local), str(tmp_path / "run"))
    _run("model", src, f"{gcs}/run")
    for rel in ("checkpoints/llama-tiny.nemo", "tokenizers/tokenizer_neva.model"):
        assert storage.read_bytes(f"{gcs}/run/{rel}") == (tmp_path / "run" / rel).read_bytes(), rel
    manifest = json.loads(storage.read_text(f"{gcs}/run/model-manifest.json"))
    nemo = storage.read_bytes(f"{gcs}/run/checkpoints/llama-tiny.nemo")
    assert manifest["outputs"]["nemo"]["sha256"] == hashlib.sha256(nemo).hexdigest()
    assert all("etag" in entry for entry in manifest["inputs"].values())
    tok = storage.read_bytes(f"{gcs}/run/tokenizers/tokenizer_neva.model")
    assert spm.SentencePieceProcessor(model_proto=tok).piece_to_id("<extra_id_0>") == TinyLlama().vocab_size
    assert "already complete" in _run("model", src, f"{gcs}/run")
