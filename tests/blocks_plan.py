"""A tiny plan whose one dataset has both blocks that run after its merge (`energon:` and `check:`, each in 2
shards), for the tests that run it through a launcher and compare with `launch local`."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from PIL import Image

from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer

COMPARED = ("caps.json", "rejects.jsonl", "report/lengths.jsonl", "report/findings.jsonl")


def write_blocks_plan(root: Path) -> Path:
    """Images, a caption CSV and a patched tokenizer under `root`; the plan (output `root/output`)."""
    rows = ["id,path,caption"]
    for i in range(5):
        buf = io.BytesIO()
        Image.new("RGB", (6 + i, 5 + i), (40 * i, 90, 180)).save(buf, "PNG")
        (root / "media").mkdir(parents=True, exist_ok=True)
        (root / "media" / f"{i}.png").write_bytes(buf.getvalue())
        rows.append(f"c{i},{i}.png,Picture number {i}.")
    (root / "caps.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "tok").mkdir(exist_ok=True)
    train_tokenizer(root / "tok" / "tokenizer.model", 384)
    patch_tokenizer(str(root / "tok" / "tokenizer.model"), str(root / "tok" / "tokenizer_neva.model"))
    plan = {
        "name": "neva-blocks",
        "output": str(root / "output"),
        "datasets": [
            {
                "name": "caps",
                "source": str(root / "caps.csv"),
                "from": "captions",
                "media": "image",
                "media_column": "path",
                "caption_column": "caption",
                "id_column": "id",
                "shards": 2,
                "media_root": str(root / "media"),
                "energon": {"shards": 2, "samples_per_shard": 2},
                "check": {
                    "template": "plain",
                    "tokenizer": str(root / "tok" / "tokenizer_neva.model"),
                    "seq_length": 4096,
                    "decode": True,
                    "shards": 2,
                },
            }
        ],
    }
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def block_outputs(output: Path) -> dict[str, bytes]:
    """What must be byte-identical whatever launcher ran the plan: the merge, the check's report lines,
    the Energon tars."""
    ds = output / "datasets" / "caps"
    found = {rel: (ds / rel).read_bytes() for rel in COMPARED}
    found |= {str(p.relative_to(ds)): p.read_bytes() for p in sorted((ds / "energon").rglob("*.tar"))}
    assert any(name.endswith(".tar") for name in found) and (ds / "energon" / ".nv-meta").is_dir()
    return found
