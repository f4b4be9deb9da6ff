"""The exit-code contract, enforced for every command the CLI has (enumerated from the app itself).

Each command meets the mistakes users make: a missing source, an unreadable one, a destination that cannot
be written (a path under a regular file, a read-only folder) and an option value it does not know. Each
must exit with the documented code, say so in one line on stderr naming the path (or the option), show no
traceback and leave nothing at the destination.

The tests run as root in CI, where mode bits do not stop reads or writes: the "unreadable" and "read-only"
cases then run the command without the capabilities that let root ignore them (setpriv drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set), so the owner's mode bits bind it as they bind
any user. (Not `nobody`: CI's clone may sit in a folder only root may enter, mktemp -d's 0700.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from neva_prep.cli import command
from neva_prep.errors import EXIT_BAD_INPUT, EXIT_CODES_HELP, EXIT_FAILED

ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
INPUTS: dict[str, Path] = {}  # filled by the `inputs` fixture, for rows that need a second input


@dataclass(frozen=True)
class Row:
    """How to call one command: `argv(source, destination)`; `source`/`dest` say which inputs it has."""

    argv: Callable[[str, str], list[str]]
    source: str | None  # key into the inputs fixture; None: the command reads no file
    # "file", "dir": a path it writes; "plan": the plan's output; "source": next to its input; None: nothing
    dest: str | None
    bad_option: tuple[str, ...]  # a value it does not know (commands without one: an unknown option)
    missing_code: int = EXIT_BAD_INPUT  # `data wait` waits for a folder to appear: 1 when its --timeout ends


TABLE: dict[str, Row] = {
    "model": Row(lambda s, d: ["model", s, d], "llama", "dir", ("--precision", "64")),
    "sample": Row(lambda s, d: ["sample", d], None, "dir", ("--no-such-option",)),
    "checkpoint convert": Row(
        lambda s, d: ["checkpoint", "convert", s, d], "llama", "file", ("--layout", "megatron")
    ),
    "checkpoint verify": Row(
        lambda s, d: ["checkpoint", "verify", s, s + "/../model.nemo", "--no-logits"],
        "llama",
        None,
        ("--no-such-option",),
    ),
    "tokenizer patch": Row(lambda s, d: ["tokenizer", "patch", s, d], "tokenizer", "file", ("--bogus",)),
    "data convert": Row(
        lambda s, d: ["data", "convert", s, d, "--from", "webvid", "--media", "video"],
        "webvid",
        "dir",
        ("--media", "audio"),
    ),
    "data merge": Row(
        lambda s, d: ["data", "merge", d, "--name", "w"], "shards", "source", ("--unique-ids", "x")
    ),
    "data export energon": Row(
        lambda s, d: ["data", "export", "energon", d, "--name", "w", "--media-root", d],
        "shards",
        "source",
        ("--samples-per-shard", "many"),
    ),
    "data check": Row(
        lambda s, d: [
            *("data", "check", s, "--media", "video", "--template", "plain", "--seq-length", "256"),
            *("--num-frames", "2"),
            *("--tokenizer", str(INPUTS["patched"]), "--report", d),
        ],
        "records",
        "dir",
        ("--media", "audio"),
    ),
    "data wait": Row(
        lambda s, d: ["data", "wait", s, "--num-shards", "1", "--timeout", "0", "--interval", "0.1"],
        "shards",
        None,
        ("--num-shards", "many"),
        missing_code=EXIT_FAILED,
    ),
    "data validate": Row(
        lambda s, d: ["data", "validate", s, "--media", "video", "--report", d],
        "records",
        "file",
        ("--media", "audio"),
    ),
    "plan init": Row(lambda s, d: ["plan", "init"], None, None, ("--no-such-option",)),
    "plan check": Row(lambda s, d: ["plan", "check", s], "plan", None, ("--no-such-option",)),
    "launch local": Row(lambda s, d: ["launch", "local", s], "plan", "plan", ("--workers", "many")),
    "launch k8s": Row(lambda s, d: ["launch", "k8s", s, "--out", d], "plan", "dir", ("--interval", "soon")),
    "launch slurm": Row(
        lambda s, d: ["launch", "slurm", s, "--out", d], "plan", "dir", ("--no-such-option",)
    ),
    "launch submitit": Row(
        lambda s, d: ["launch", "submitit", s, "--folder", d, "--cluster", "debug"],
        "plan",
        "dir",
        ("--cluster", "pbs"),
    ),
}


def leaf_commands() -> list[str]:
    """Every runnable command of the CLI, as users type it ("data convert")."""
    found: list[str] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            found.append(" ".join(path))
            return
        for name, sub in subs.items():
            walk(sub, [*path, name])

    walk(command(), [])
    return sorted(found)


COMMANDS = leaf_commands()


def help_text(name: str) -> tuple[str, object]:
    """`neva-prep NAME --help` as printed, and the command (in-process: a subprocess each is slow)."""
    cmd = command()
    ctx = cmd.context_class(cmd, info_name="neva-prep")
    for part in name.split():
        cmd = cmd.commands[part]
        ctx = cmd.context_class(cmd, info_name=part, parent=ctx)
    return cmd.get_help(ctx), cmd


def test_every_command_has_a_row_and_documents_the_contract() -> None:
    missing = sorted(set(COMMANDS) - set(TABLE))
    assert not missing, f"add a row to TABLE in tests/test_exit_codes.py for: {', '.join(missing)}"
    assert not set(TABLE) - set(COMMANDS), "TABLE names a command the CLI no longer has"
    shown = run(["--help"])  # the real thing once: the top-level help, from a shell
    assert shown.returncode == 0 and " ".join(EXIT_CODES_HELP.split()) in " ".join(shown.stdout.split())
    for name in COMMANDS:
        text, _ = help_text(name)
        assert " ".join(EXIT_CODES_HELP.split()) in " ".join(text.split()), name
        assert "<bool>" not in text, name


def test_readme_lists_every_command_with_every_option() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Exit codes") :][:2000]
    for code, meaning in (
        ("0", "done, or already complete"),
        ("1", "a retry may help"),
        ("2", "bad input or unusable destination"),
        ("3", "a check ran and found problems"),
    ):  # the README says what every --help says
        assert f"{code}  " in EXIT_CODES_HELP and meaning in EXIT_CODES_HELP.replace("failed; ", "")
        assert re.search(rf"\| \*\*{code}\*\* \|[^|]*{re.escape(meaning)}", section), code
    rows = [line for line in readme.splitlines() if line.startswith("| `neva-prep ")]
    for name in COMMANDS:
        first, *rest = name.split()
        own = [r for r in rows if r.startswith((f"| `neva-prep {name} ", f"| `neva-prep {name}`"))]
        if not own and rest:  # `plan init` / `plan check PLAN`: two commands in one row
            own = [r for r in rows if r.startswith(f"| `neva-prep {first} ") and f"`{first} {rest[0]}" in r]
        assert own, f"README's command table has no row for `neva-prep {name}`"
        usage = re.split(r"(?<!\\)\|", own[0])[1]  # the first cell; `\|` inside it is an escaped bar
        _, cmd = help_text(name)
        for param in cmd.params:  # type: ignore[attr-defined]
            if param.param_type_name == "option" and param.name != "help":
                assert param.opts[0] in usage, (name, param.opts[0])


def test_choices_are_shown_as_their_values() -> None:
    checked = 0
    for name in COMMANDS:
        text, cmd = help_text(name)
        for param in cmd.params:  # type: ignore[attr-defined]
            kind = getattr(param, "type_descriptor", None) or getattr(param, "type", None)
            choices = getattr(kind, "choices", None)
            if choices:
                assert "<" + "|".join(str(c) for c in choices) + ">" in text, (name, param.name)
                checked += 1
    assert checked >= 8  # --precision, --layout, --device (twice each), --from, --media, ...


def run(
    args: list[str], *, unprivileged: bool = False, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if unprivileged and ROOT:
        assert SETPRIV
        prefix = DROP_DAC
    env = {**os.environ, "HOME": str(home or tempfile.gettempdir()), "NEVA_PREP_PROGRESS_S": "0"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "neva_prep.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A folder everyone may enter, so that the commands can run on the inputs without privileges."""
    root = Path(tempfile.mkdtemp(prefix="neva-exit-codes-", dir="/var/tmp"))  # not /tmp: pods mount their own
    root.chmod(0o777)
    yield root
    subprocess.run(["chmod", "-R", "u+rwx", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(base: Path) -> dict[str, Path]:
    """One valid input per kind, made with the real steps."""
    from neva_prep.data.convert import convert_shard
    from neva_prep.data.merge import merge_shards
    from neva_prep.data.records import ConvertOptions
    from neva_prep.model.tokenizer import patch_tokenizer
    from neva_prep.sample import TinyLlama, write_llama

    src = base / "inputs"
    llama = write_llama(src / "llama", TinyLlama(num_hidden_layers=1))
    webvid = src / "webvid.csv"
    webvid.write_text("videoid,name,page_dir\n1,a cat,dir\n2,a dog,dir\n")
    shards = src / "shards"
    convert_shard(str(webvid), str(shards), options=ConvertOptions(source_format="webvid", media="video"))
    merge_shards(str(shards), name="w")
    records = src / "records.json"
    shutil.copyfile(shards / "w.json", records)
    plan = src / "plan.yaml"
    write_plan(plan, output=base / "plan-output", webvid=webvid, volume=base)
    subprocess.run(["chmod", "-R", "a+rX", str(src)], check=True)
    patch_tokenizer(str(llama / "tokenizer.model"), str(src / "tokenizer_neva.model"))
    INPUTS.update(
        patched=src / "tokenizer_neva.model",
        llama=llama,
        tokenizer=llama / "tokenizer.model",
        webvid=webvid,
        shards=shards,
        records=records,
        plan=plan,
    )
    return INPUTS


def write_plan(path: Path, *, output: Path, webvid: Path, volume: Path) -> None:
    plan = {
        "name": "exit-codes",
        "output": str(output),
        "image": "neva-prep:test",
        "datasets": [{"name": "w", "source": str(webvid), "from": "webvid", "media": "video", "shards": 1}],
        "kubernetes": {"volumes": [{"name": "work", "mount_path": str(volume), "host_path": str(volume)}]},
    }
    path.write_text(yaml.safe_dump(plan))


def case_dir(base: Path, name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=name.replace(" ", "-") + "-", dir=base))
    d.chmod(0o777)
    return d


def destination(row: Row, where: Path) -> str:
    return str(where / ("out.file" if row.dest == "file" else "out"))


def arguments(row: Row, source: Path | str, dest: str, work: Path) -> list[str]:
    """The command line; a plan-driven command gets a copy of the plan whose output is `dest`."""
    if row.dest == "plan" and Path(source).is_file():
        plan = work / "plan.yaml"
        data = yaml.safe_load(Path(source).read_text())
        plan.write_text(yaml.safe_dump({**data, "output": dest}))
        plan.chmod(0o644)
        source = plan
    return row.argv(str(source), dest)


def one_line(result: subprocess.CompletedProcess[str], *must_name: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("neva-prep: error: "), lines[0]
    for name in must_name:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def nothing_at(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        assert not any(p.iterdir()), sorted(str(x) for x in p.rglob("*"))
    else:
        assert not p.exists(), path


def rows_with(what: str) -> list[str]:
    return [name for name in COMMANDS if name in TABLE and getattr(TABLE[name], what) is not None]


DROP_DAC = [SETPRIV or "setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def mode_bits_bind() -> bool:
    """Root ignores mode bits: the unreadable / read-only cases run without the capabilities that allow it."""
    if not ROOT:
        return True
    if not SETPRIV:
        return False
    probe = [*DROP_DAC, sys.executable, "-c", "import neva_prep.cli"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


needs_mode_bits = pytest.mark.skipif(
    not mode_bits_bind(), reason="as root mode bits stop nothing, and setpriv cannot drop CAP_DAC_OVERRIDE"
)


@pytest.mark.parametrize("name", rows_with("source"))
def test_missing_source(name: str, base: Path, inputs: dict[str, Path]) -> None:
    row = TABLE[name]
    work = case_dir(base, name)
    missing = work / "no-such-input"
    dest = str(work / "dst") if row.dest not in (None, "source") else str(missing)
    r = run(arguments(row, missing, dest, work))
    assert r.returncode == row.missing_code, r.stdout + r.stderr
    one_line(r, str(missing))
    nothing_at(dest)


@needs_mode_bits
@pytest.mark.parametrize("name", rows_with("source"))
def test_unreadable_source(name: str, base: Path, inputs: dict[str, Path]) -> None:
    row = TABLE[name]
    work = case_dir(base, name)
    original = inputs[row.source]  # type: ignore[index]
    locked = work / original.name
    if original.is_dir():
        shutil.copytree(original, locked)
    else:
        shutil.copyfile(original, locked)
    dest = str(work / "dst") if row.dest not in (None, "source") else str(locked)
    args = arguments(row, locked, dest, work)  # a plan copy is made readable before the source is locked
    locked.chmod(0)
    if not ROOT:
        assert not os.access(locked, os.R_OK)
    r = run(args, unprivileged=True, home=work)
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    one_line(r, str(locked))
    if row.dest not in (None, "source"):
        nothing_at(dest)


@pytest.mark.parametrize("name", rows_with("dest"))
def test_destination_under_a_regular_file(name: str, base: Path, inputs: dict[str, Path]) -> None:
    row = TABLE[name]
    work = case_dir(base, name)
    blocker = work / "a-file"
    blocker.write_text("not a folder\n")
    source = inputs[row.source] if row.source else work
    dest = destination(row, blocker)
    r = run(arguments(row, source, dest, work))
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    one_line(r, str(blocker))
    assert blocker.read_text() == "not a folder\n"


@needs_mode_bits
@pytest.mark.parametrize("name", rows_with("dest"))
def test_destination_in_a_read_only_folder(name: str, base: Path, inputs: dict[str, Path]) -> None:
    row = TABLE[name]
    work = case_dir(base, name)
    read_only = work / "read-only"
    source: Path | str = inputs[row.source] if row.source else work
    if row.dest == "source":  # a command that writes next to its input (data merge): the input, read-only
        shutil.copytree(inputs[row.source], read_only)  # type: ignore[index]
        subprocess.run(["chmod", "-R", "a+rX,a-w", str(read_only)], check=True)
        before = sorted(str(p) for p in read_only.rglob("*"))
        r = run(row.argv(str(read_only), str(read_only)), unprivileged=True, home=work)
        assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
        one_line(r, str(read_only))
        assert sorted(str(p) for p in read_only.rglob("*")) == before
        return
    read_only.mkdir()
    dest = destination(row, read_only)
    args = arguments(row, source, dest, work)
    read_only.chmod(0o555)
    if not ROOT:
        assert not os.access(read_only, os.W_OK)
    r = run(args, unprivileged=True, home=work)
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    one_line(r, str(read_only))
    nothing_at(str(read_only))


@pytest.mark.parametrize("name", COMMANDS)
def test_unknown_option_value(name: str, base: Path, inputs: dict[str, Path]) -> None:
    row = TABLE[name]
    work = case_dir(base, name)
    source = inputs[row.source] if row.source else work
    dest = destination(row, work) if row.dest not in (None, "source") else str(work / "untouched")
    if row.dest == "source":
        shutil.copytree(source, work / "copy")
        source = dest = str(work / "copy")
        before = sorted(str(p) for p in Path(dest).rglob("*"))
    r = run([*arguments(row, source, dest, work), *row.bad_option])
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    line = one_line(r, row.bad_option[0])
    assert f"neva-prep {name} --help" in line  # where to look up the allowed values
    if row.dest == "source":
        assert sorted(str(p) for p in Path(dest).rglob("*")) == before
    else:
        nothing_at(dest)


def test_debug_anywhere_shows_the_traceback_and_keeps_the_code(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.csv")
    args = ["data", "convert", missing, str(tmp_path / "out"), "--from", "webvid", "--media", "video"]
    plain = run(args)
    assert plain.returncode == EXIT_BAD_INPUT and "Traceback" not in plain.stderr
    for debug in (["--debug", *args], [*args, "--debug"]):
        r = run(debug)
        assert r.returncode == EXIT_BAD_INPUT, r.stderr
        assert "Traceback" in r.stderr and f"BadInput: {missing}: no such file" in r.stderr
    version = run(["--version"])
    assert version.returncode == 0 and re.fullmatch(r"neva-prep \d+\.\d+\.\S+\n", version.stdout)
