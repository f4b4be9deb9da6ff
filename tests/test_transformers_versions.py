"""Configs as transformers writes them, old and new, and `checkpoint verify` under both transformers lines.

transformers 5 writes RoPE as `rope_parameters` ({rope_theta, rope_type, factor}) and `dtype`; 4.x (NeMo
24.05 ships 4.40) writes top-level `rope_theta` / `rope_scaling` and `torch_dtype`. The models here are made
by `LlamaForCausalLM(...).save_pretrained` of each version — the installed 5.x in .venv, and 4.40.2
installed once (cached) into build/transformers-4.40.2 and put first on PYTHONPATH in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO, neva
from neva_prep.errors import BadInput
from neva_prep.model import nemo_format
from neva_prep.model.convert import convert_checkpoint
from neva_prep.sample import TinyLlama, train_tokenizer, write_llama

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

OLD = ("transformers==4.40.2", "tokenizers==0.19.1", "huggingface_hub==0.23.5")  # 4.40's own pins
OLD_DIR = REPO / "build" / "transformers-4.40.2"
SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 384,
    "max_position_embeddings": 256,
}
# Run under either transformers: a real model, saved the way that version saves it.
WRITE = """
import json, sys, torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(**json.loads(sys.argv[2]))).save_pretrained(sys.argv[1])
print(transformers.__version__)
"""


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/transformers/", timeout=15)
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def old_transformers() -> dict[str, str]:
    """The environment that makes a subprocess import transformers 4.40.2 (installed once into build/)."""
    marker = OLD_DIR / ".complete"
    if not marker.exists():
        partial = OLD_DIR.with_name(OLD_DIR.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial)]
        done = subprocess.run([*pip, *OLD], capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            if not _pypi_reachable():
                pytest.skip(f"PyPI is unreachable, cannot install {', '.join(OLD)} for this test")
            pytest.fail(f"pip install {' '.join(OLD)} failed:\n{done.stderr}")
        shutil.rmtree(OLD_DIR, ignore_errors=True)
        partial.rename(OLD_DIR)
        marker.touch()
    path = os.pathsep.join(p for p in (str(OLD_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _save_pretrained(out: Path, env: dict[str, str] | None, **config: Any) -> str:
    """A tiny LLaMA saved by the transformers of `env` (None: the installed one); returns its version."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE, str(out), json.dumps({**SHAPE, **config})],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    train_tokenizer(out / "tokenizer.model", SHAPE["vocab_size"])
    return done.stdout.strip().splitlines()[-1]


def _model_config(nemo: Path) -> dict[str, Any]:
    with nemo.open("rb") as f:
        return yaml.safe_load(nemo_format.NemoReader(f).read(nemo_format.CONFIG_MEMBER))  # type: ignore[no-any-return]


def test_transformers_is_a_runtime_dependency_covering_both_lines() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "transformers"]
    assert len(found) == 1, "transformers must be a runtime dependency (verify checks logits by default)"
    import transformers

    for version in ("4.40.2", transformers.__version__):
        assert found[0].specifier.contains(version), version


ROPES = {
    "theta-500k": ({"rope_theta": 500000.0}, 500000.0, None),
    # `type`, not `rope_type`: 4.40 knows only that key
    "linear-2": (
        {"rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
        20000.0,
        2.0,
    ),
}


@pytest.mark.parametrize("writer", ["installed", "4.40"])
@pytest.mark.parametrize("rope", list(ROPES))
def test_rope_of_either_spelling_reaches_model_config_and_verify_passes(
    writer: str, rope: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = request.getfixturevalue("old_transformers") if writer == "4.40" else None
    kwargs, theta, factor = ROPES[rope]
    src = tmp_path / "hf"
    version = _save_pretrained(src, env, **kwargs)
    written = json.loads((src / "config.json").read_text())
    if writer == "4.40":  # the old spelling, really
        assert version == "4.40.2" and written["rope_theta"] == theta and "rope_parameters" not in written
        assert "torch_dtype" in written
    else:  # the transformers 5 spelling, really
        assert version.startswith("5.") and written["rope_parameters"]["rope_theta"] == theta
        assert "rope_theta" not in written and "dtype" in written

    nemo = tmp_path / "model.nemo"
    convert_checkpoint(str(src), str(nemo), precision="32")
    conf = _model_config(nemo)
    assert conf["rotary_base"] == theta
    assert conf.get("seq_len_interpolation_factor") == factor

    # the logits check, under the transformers that wrote the model
    p = neva("checkpoint", "verify", str(src), str(nemo), env=env)
    assert p.returncode == 0, p.stderr
    assert "logits agree" in p.stdout


def test_verify_under_4_40_names_a_config_it_cannot_read(
    old_transformers: dict[str, str], tmp_path: Path
) -> None:
    """4.40 ignores `rope_parameters` (and builds a rope_theta 10000 model): say so, not "logits differ"."""
    src = tmp_path / "hf"
    _save_pretrained(src, None, rope_theta=500000.0)
    nemo = tmp_path / "model.nemo"
    convert_checkpoint(str(src), str(nemo), precision="32")
    p = neva("checkpoint", "verify", str(src), str(nemo), env=old_transformers)
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "transformers 4.40.2 reads RoPE as rope_theta 10000.0" in line and "transformers>=5" in line
    assert (
        neva("checkpoint", "verify", str(src), str(nemo), "--no-logits", env=old_transformers).returncode == 0
    )


def _with_config(tmp_path: Path, **config: Any) -> Path:
    """Tiny weights whose config.json is what the installed transformers writes for `config`."""
    from transformers import LlamaConfig

    src = write_llama(tmp_path / "hf", TinyLlama(num_key_value_heads=2))
    LlamaConfig(**SHAPE, **config).save_pretrained(src)
    return src


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("dynamic", {"factor": 2.0}),
        ("llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 128}),
        ("yarn", {"factor": 4.0, "original_max_position_embeddings": 64}),
        ("longrope", {"short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                      "original_max_position_embeddings": 64}),
    ],
)  # fmt: skip
def test_rope_types_nemo_cannot_express_are_refused(kind: str, extra: dict[str, Any], tmp_path: Path) -> None:
    src = _with_config(tmp_path, rope_parameters={"rope_type": kind, "rope_theta": 10000.0, **extra})
    assert json.loads((src / "config.json").read_text())["rope_parameters"]["rope_type"] == kind
    dst = tmp_path / "out" / "model.nemo"
    with pytest.raises(BadInput, match=f"rope_parameters type '{kind}' is not supported"):
        convert_checkpoint(str(src), str(dst))
    assert not (tmp_path / "out").exists()


def test_spellings_that_disagree_are_refused(tmp_path: Path) -> None:
    src = _with_config(tmp_path, rope_theta=500000.0, dtype="float32")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "rope_theta": 10000.0}))  # a stale old key
    dst = tmp_path / "model.nemo"
    p = neva("checkpoint", "convert", str(src), str(dst))
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and "config.json" in line
    assert "rope_theta/rope_scaling and rope_parameters disagree (rope_theta 10000.0 vs 500000.0)" in line
    assert not dst.exists()

    scaled = {**config, "rope_scaling": {"type": "linear", "factor": 2.0}}  # old says linear, new default
    (src / "config.json").write_text(json.dumps(scaled))
    with pytest.raises(BadInput, match=r"disagree \(type 'linear' vs 'default'; factor 2.0 vs None\)"):
        convert_checkpoint(str(src), str(dst))
    (src / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))  # dtype: float32
    with pytest.raises(BadInput, match="torch_dtype='float16' and dtype='float32' disagree"):
        convert_checkpoint(str(src), str(dst))
    assert not dst.exists()
