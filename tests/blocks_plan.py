"""A tiny plan whose one dataset has both blocks that run after its merge (`energon:` and `check:`, each in 2
shards), for the tests that run it through a launcher and compare with `launch local`."""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from pathlib import Path

import yaml
from PIL import Image

from neva_prep.model.tokenizer import patch_tokenizer
from neva_prep.sample import train_tokenizer

COMPARED = ("caps.json", "rejects.jsonl", "report/lengths.jsonl", "report/findings.jsonl")
NAMING_PATHS = ("report/summary.json", "energon/stats.json", "energon/rejects.jsonl")  # absolute paths inside
RANDOM = "index.uuid"  # Energon's random id of the index; index.sqlite's rows are compared, not its bytes


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
    """What must be identical whatever launcher ran the plan: the merge, the check's report (lines and
    summary), the Energon tars with their indexes and .nv-meta (index.sqlite: its rows, sorted). In the files
    that name paths, `output` reads OUTPUT, so that runs into different output folders compare equal."""
    ds = output / "datasets" / "caps"
    found = {rel: (ds / rel).read_bytes() for rel in COMPARED}
    for rel in NAMING_PATHS:
        found[rel] = (ds / rel).read_text(encoding="utf-8").replace(str(output), "OUTPUT").encode()
    energon = ds / "energon"
    found |= {str(p.relative_to(ds)): p.read_bytes() for p in sorted(energon.glob("*/*.tar*"))}
    meta = energon / ".nv-meta"
    found |= {str(p.relative_to(ds)): p.read_bytes() for p in sorted(meta.iterdir()) if p.suffix != ".sqlite"}
    assert len(found.pop(f"energon/.nv-meta/{RANDOM}")) == 36
    with closing(sqlite3.connect(meta / "index.sqlite")) as db:
        tables = [
            t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        for t in tables:
            rows = sorted(db.execute(f"SELECT * FROM {t}"))  # Energon's workers insert in any order
            found[f"energon/.nv-meta/index.sqlite:{t}"] = repr(rows).encode()
    assert any(n.endswith(".tar") for n in found) and any(n.endswith("sqlite:samples") for n in found)
    return found
