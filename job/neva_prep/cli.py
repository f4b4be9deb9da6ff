"""The `neva-prep` command line: parse arguments, call one function, print its result.

Known errors (`NevaPrepError`) become one line on stderr and their exit code (`errors.EXIT_CODES_HELP`, the
contract printed by every `--help`); a usage error (unknown option value, missing argument) is one line and
exit 2; anything unexpected exits 1 with one line, or a traceback with `--debug` (accepted anywhere).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Literal, TypeVar

import typer

from neva_prep.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_CODES_HELP, EXIT_FAILED, NevaPrepError
from neva_prep.storage import redact

T = TypeVar("T")

Precision = Literal["16", "bf16", "32"]
Device = Literal["auto", "cpu", "cuda"]
Layout = Literal["mcore", "legacy"]
Media = Literal["image", "video"]
SourceFormat = Literal["webvid", "captions", "llava"]
UniqueIds = Literal["keep", "suffix"]

# click's exception classes as this typer uses them (recent typer vendors its own click)
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]

_PLAIN = {"rich_markup_mode": None, "no_args_is_help": True}  # click's help: `--precision <16|bf16|32>`

app = typer.Typer(
    name="neva-prep",
    help="Prepare NeMo NeVA / VideoNeVA training: model step, data step, launchers.",
    pretty_exceptions_enable=False,
    add_completion=False,
    **_PLAIN,  # type: ignore[arg-type]
)
checkpoint_app = typer.Typer(help="Convert and verify HF LLaMA checkpoints.", **_PLAIN)  # type: ignore[arg-type]
tokenizer_app = typer.Typer(help="Patch SentencePiece tokenizers with special tokens.", **_PLAIN)  # type: ignore[arg-type]
data_app = typer.Typer(help="Convert, merge and validate NeVA / VideoNeVA JSON data.", **_PLAIN)  # type: ignore[arg-type]
plan_app = typer.Typer(help="Write and check plan files.", **_PLAIN)  # type: ignore[arg-type]
launch_app = typer.Typer(help="Run a plan on Kubernetes, Slurm or this machine.", **_PLAIN)  # type: ignore[arg-type]
app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")
export_app = typer.Typer(help="Write a merged dataset in another training format.", **_PLAIN)  # type: ignore[arg-type]
data_app.add_typer(export_app, name="export")
app.add_typer(plan_app, name="plan")
app.add_typer(launch_app, name="launch")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neva-prep {metadata.version('neva-prep')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (accepted after the command too)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = _state["debug"] or debug


def run(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call a step; turn its errors into one-line messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except NevaPrepError as exc:
        if _state["debug"]:
            traceback.print_exc()
        else:
            typer.echo(f"neva-prep: error: {redact(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _state["debug"]:
            traceback.print_exc()
        else:
            typer.echo(f"neva-prep: failed: {type(exc).__name__}: {redact(str(exc))}", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def say(text: str) -> None:
    """Print a result summary to stdout."""
    typer.echo(text)


# --- model step: checkpoint / tokenizer / model -------------------------------------------------------


@checkpoint_app.command("convert")
def checkpoint_convert(
    source: str = typer.Argument(..., metavar="SRC", help="HF LLaMA directory (local path, s3://, gs://)."),
    destination: str = typer.Argument(
        ..., metavar="DST", help="The .nemo file to write (local path, s3://, gs://)."
    ),
    precision: Precision = typer.Option("16", "--precision", help="16 (fp16, NeMo's default), bf16 or 32."),
    device: Device = typer.Option("auto", "--device", help="Where to fuse and cast."),
    layout: Layout = typer.Option("mcore", "--layout", help="mcore (VideoNeVA) or legacy (NeVA image)."),
) -> None:
    """Convert an HF LLaMA-2 / Vicuna checkpoint into the .nemo NeMo's converter writes, streaming."""
    from neva_prep.model.convert import convert_checkpoint

    result = run(convert_checkpoint, source, destination, precision=precision, device=device, layout=layout)
    say(result.summary())


@checkpoint_app.command("verify")
def checkpoint_verify(
    source: str = typer.Argument(
        ..., metavar="SRC", help="The HF LLaMA directory the .nemo was converted from."
    ),
    nemo: str = typer.Argument(..., metavar="NEMO", help="The .nemo file to check."),
    logits: bool = typer.Option(True, "--logits/--no-logits", help="Also compare logits with transformers."),
) -> None:
    """Check every tensor of a .nemo against its source, and the logits against transformers'."""
    from neva_prep.model.verify import verify_checkpoint

    say(run(verify_checkpoint, source, nemo, logits=logits).summary())


@tokenizer_app.command("patch")
def tokenizer_patch(
    src: str = typer.Argument(..., metavar="SRC", help="SentencePiece model to patch (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Where to write the patched model (path or URL)."),
    token: list[str] | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        help="Token to add (repeatable); default <extra_id_0>..<extra_id_7>.",
    ),
    control: bool = typer.Option(False, "--control", help="Add CONTROL pieces instead of USER_DEFINED."),
) -> None:
    """Append special tokens to a SentencePiece model (NeVA needs <extra_id_0>..<extra_id_7>)."""
    from neva_prep.model.tokenizer import DEFAULT_TOKENS, patch_tokenizer

    result = run(patch_tokenizer, src, dst, tokens=tuple(token or DEFAULT_TOKENS), control=control)
    say(result.summary())


@app.command("model")
def model(
    src: str = typer.Argument(..., metavar="SRC", help="Hugging Face LLaMA directory (path or URL)."),
    out: str = typer.Argument(..., metavar="OUT", help="Output directory (path or URL)."),
    name: str | None = typer.Option(
        None, "--name", metavar="NAME", help="Checkpoint name; default: SRC's basename."
    ),
    precision: Precision = typer.Option("16", "--precision", help="Output precision (16 is fp16)."),
    token: list[str] | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        help="Token to add (repeatable); default <extra_id_0>..<extra_id_7>.",
    ),
    control: bool = typer.Option(False, "--control", help="Add CONTROL pieces instead of USER_DEFINED."),
    layout: Layout = typer.Option("mcore", "--layout", help="mcore (VideoNeVA) or legacy (NeVA image)."),
    device: Device = typer.Option("auto", "--device", help="Where tensors are fused."),
    force: bool = typer.Option(False, "--force", help="Redo even if OUT already holds a complete result."),
) -> None:
    """The model step: OUT/checkpoints/NAME.nemo, OUT/tokenizers/tokenizer_neva.model and, last,
    OUT/model-manifest.json; a complete OUT for the same inputs and options is left as it is."""
    from neva_prep.model.step import prepare_model
    from neva_prep.model.tokenizer import DEFAULT_TOKENS

    result = run(
        prepare_model,
        src,
        out,
        name=name,
        precision=precision,
        tokens=tuple(token or DEFAULT_TOKENS),
        control=control,
        layout=layout,
        device=device,
        force=force,
    )
    say(result.summary())


# --- data step: data convert / merge / validate ---------------------------------------------------------


@data_app.command("convert")
def data_convert(
    src: str = typer.Argument(..., metavar="SRC", help="Input file, URL or glob (s3://bucket/webvid/*.csv)."),
    dst: str = typer.Argument(
        ..., metavar="DST", help="Output folder or URL; shards go to DST/shards/, the merge to DST/."
    ),
    source_format: SourceFormat = typer.Option(..., "--from", help="Input format."),
    media: Media = typer.Option(..., "--media", help="Records to make: image (NeVA) or video (VideoNeVA)."),
    num_shards: int = typer.Option(1, "--num-shards", help="Number of shards the input is split into."),
    shard_index: int | None = typer.Option(
        None,
        "--shard-index",
        help="This shard (0-based). Default: $JOB_COMPLETION_INDEX, then $SLURM_ARRAY_TASK_ID, else 0.",
    ),
    media_column: str | None = typer.Option(None, "--media-column", help="captions: the media path column."),
    caption_column: str | None = typer.Option(None, "--caption-column", help="captions: the caption column."),
    id_column: str | None = typer.Option(
        None, "--id-column", help="captions: the id column (default: path stem)."
    ),
    prompts: str | None = typer.Option(
        None,
        "--prompts",
        help="captions, webvid: prompt list name or URL (webvid default: the VideoNeVA guide's prompt).",
    ),
    media_root: str | None = typer.Option(
        None,
        "--media-root",
        help="Reject rows whose media file is not under this folder/URL (one listing per dir).",
    ),
    force: bool = typer.Option(False, "--force", help="Redo the shard even if it finished before."),
    record_failure: bool = typer.Option(
        False,
        "--record-failure",
        help="On bad input (exit 2) leave DST/shards/IIIII-of-NNNNN.FAILED with the reason, for `data wait`.",
    ),
) -> None:
    """Convert one shard of SRC into NeVA / VideoNeVA records under DST (then run `data merge`)."""
    from neva_prep.data.convert import shard_index_from_env
    from neva_prep.data.records import ConvertOptions
    from neva_prep.data.wait import convert_shard_recording_failure

    options = ConvertOptions(
        source_format=source_format,
        media=media,
        media_column=media_column,
        caption_column=caption_column,
        id_column=id_column,
        prompts=prompts,
    )
    index = shard_index if shard_index is not None else run(shard_index_from_env)
    result = run(
        convert_shard_recording_failure,
        src,
        dst,
        options=options,
        num_shards=num_shards,
        shard_index=index,
        media_root=media_root,
        force=force,
        record_failure=record_failure,
    )
    say(result.summary())


@data_app.command("merge")
def data_merge(
    dst: str = typer.Argument(..., metavar="DST", help="The DST of `data convert`."),
    name: str = typer.Option(
        ..., "--name", metavar="NAME", help="Dataset name: the output is DST/NAME.json."
    ),
    num_shards: int | None = typer.Option(
        None,
        "--num-shards",
        help="Shard count to merge (only needed if DST holds runs with different counts).",
    ),
    unique_ids: UniqueIds = typer.Option(
        "keep",
        "--unique-ids",
        help="keep: ids as converted (may repeat: distinct samples); suffix: later repeats become ID_k.",
    ),
) -> None:
    """Merge every finished shard into DST/NAME.json, DST/rejects.jsonl and DST/stats.json."""
    from neva_prep.data.merge import merge_shards

    say(run(merge_shards, dst, name=name, num_shards=num_shards, unique_ids=unique_ids).summary())


@data_app.command("wait")
def data_wait(
    dst: str = typer.Argument(
        ..., metavar="DST", help="The DST of data convert / merge / export energon, or a check's REPORT."
    ),
    num_shards: int = typer.Option(..., "--num-shards", help="How many shards the run has."),
    stage: Literal["shards", "merge", "energon", "check"] = typer.Option(
        "shards",
        "--for",
        help="shards: data convert's; merge: the merge of DST (after its shards); energon: the export "
        "shards under DST/energon/; check: the data check shards of REPORT.",
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Give up (exit 1) after this many seconds; default: wait for ever."
    ),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between polls (one listing each)."),
) -> None:
    """Wait until every shard under DST finished (or, --for merge, its merge): exit 0 when all wrote their
    completion marker, 2 when one failed with bad input (its failure record, see --record-failure), 1 on
    timeout."""
    from neva_prep.data.wait import wait_for_stage

    say(run(wait_for_stage, dst, num_shards, stage, timeout=timeout, interval=interval, echo=say).summary())


@data_app.command("validate")
def data_validate(
    file: str = typer.Argument(
        ..., metavar="FILE", help="A NeVA / VideoNeVA JSON array (or JSONL) file or URL."
    ),
    media: Media = typer.Option(..., "--media", help="image (NeVA) or video (VideoNeVA)."),
    media_root: str | None = typer.Option(
        None, "--media-root", help="Check that every media file exists here."
    ),
    report: str | None = typer.Option(
        None, "--report", help="Write one JSON line per invalid record here (default: stdout)."
    ),
) -> None:
    """Check every record of FILE; exit 0 if all are valid, 3 if any is invalid, 2 if unreadable."""
    from neva_prep.data.validate import validate_file

    result = run(validate_file, file, media=media, media_root=media_root, report=report)
    say(result.summary())
    if not result.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@data_app.command("check")
def data_check(
    file: str = typer.Argument(..., metavar="FILE", help="A merged NeVA / VideoNeVA JSON array file or URL."),
    media: Media = typer.Option(..., "--media", help="image (NeVA) or video (VideoNeVA)."),
    template: str = typer.Option(
        ..., "--template", help="model.data.conv_template: plain, llama_2, v1, nvgpt, nv_steerlm, nv_dpo."
    ),
    tokenizer: str = typer.Option(..., "--tokenizer", help="The patched tokenizer_neva.model (path or URL)."),
    seq_length: int = typer.Option(..., "--seq-length", help="model.encoder_seq_length."),
    crop_size: int = typer.Option(224, "--crop-size", help="Vision crop size in pixels."),
    patch_size: int = typer.Option(14, "--patch-size", help="Vision patch size in pixels."),
    media_tokens: int | None = typer.Option(
        None, "--media-tokens", help="Tokens per image, instead of (crop/patch)^2."
    ),
    num_frames: int | None = typer.Option(None, "--num-frames", help="model.data.num_frames (video)."),
    media_root: str | None = typer.Option(None, "--media-root", help="image_folder / video_folder."),
    decode: bool = typer.Option(False, "--decode", help="Decode every media file (Pillow / PyAV)."),
    num_shards: int = typer.Option(1, "--num-shards", help="Shards the check is split into."),
    shard_index: int | None = typer.Option(
        None, "--shard-index", help="This shard. Default: $JOB_COMPLETION_INDEX, $SLURM_ARRAY_TASK_ID, 0."
    ),
    merge: bool = typer.Option(False, "--merge", help="Combine the finished shards into the report."),
    report: str = typer.Option(..., "--report", help="Folder for lengths, findings, summary, report.html."),
    write_clean: str | None = typer.Option(
        None, "--write-clean", help="Write FILE minus the records with findings here (+ .rejects.jsonl)."
    ),
) -> None:
    """Exact NeMo token lengths, template rules and media decoding; exit 0 if ready to train, 3 if not."""
    from neva_prep.data.check import CheckOptions, CheckResult, check_file
    from neva_prep.data.convert import shard_index_from_env

    options = run(
        CheckOptions,
        template=template,
        media=media,
        tokenizer=tokenizer,
        seq_length=seq_length,
        crop_size=crop_size,
        patch_size=patch_size,
        media_tokens=media_tokens,
        num_frames=num_frames,
        media_root=media_root,
        decode=decode,
    )
    index = shard_index if shard_index is not None or merge else run(shard_index_from_env)
    result = run(
        check_file,
        file,
        report,
        options,
        num_shards=num_shards,
        shard_index=index,
        merge=merge,
        clean=write_clean,
    )
    say(result.summary())
    if isinstance(result, CheckResult) and result.exit_code:
        raise typer.Exit(result.exit_code)


@export_app.command("energon")
def data_export_energon(
    dst: str = typer.Argument(..., metavar="DST", help="A merged dataset folder (DST/NAME.json) or URL."),
    name: str = typer.Option(..., "--name", help="Dataset name: reads DST/NAME.json."),
    media_root: str = typer.Option(
        ..., "--media-root", help="Folder / URL the records' media paths are under."
    ),
    samples_per_shard: int = typer.Option(
        10_000, "--samples-per-shard", help="At most this many samples a tar."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Split weights by sample key, e.g. train=98,val=2 (default: all train)."
    ),
    num_shards: int = typer.Option(1, "--num-shards", help="Number of export shards (parallel tasks)."),
    shard_index: int | None = typer.Option(
        None,
        "--shard-index",
        help="This shard (0-based). Default: $JOB_COMPLETION_INDEX, then $SLURM_ARRAY_TASK_ID, else 0.",
    ),
    finalize: bool = typer.Option(
        False, "--finalize", help="After all shards: rejects, stats and .nv-meta/ with Energon's index."
    ),
    force: bool = typer.Option(False, "--force", help="Redo the shard even if it finished before."),
) -> None:
    """Write DST/NAME.json as a Megatron-Energon WebDataset under DST/energon/ (NeMo 2, Megatron-Bridge):
    run every shard, then once with --finalize (same options)."""
    from neva_prep.data.convert import shard_index_from_env
    from neva_prep.data.writers import energon

    options = energon.ExportOptions(
        name=name,
        media_root=media_root,
        samples_per_shard=samples_per_shard,
        split=run(energon.parse_split, split),
    )
    if finalize:
        say(run(energon.finalize_export, dst, options=options, num_shards=num_shards).summary())
        return
    index = shard_index if shard_index is not None else run(shard_index_from_env)
    result = run(
        energon.export_shard, dst, options=options, num_shards=num_shards, shard_index=index, force=force
    )
    say(result.summary())


# --- launchers: plan / launch -----------------------------------------------------------------------------


@plan_app.command("init")
def plan_init() -> None:
    """Print a commented example plan (YAML) to stdout."""
    from neva_prep.launch.plan import example_plan

    typer.echo(example_plan(), nl=False)


@plan_app.command("check")
def plan_check(
    plan: str = typer.Argument(..., help="Plan file (path or URL)."),
    target: Literal["k8s", "slurm", "local"] | None = typer.Option(
        None,
        "--for",
        help="Also apply this launcher's rules (k8s: every local path on a kubernetes.volumes mount).",
    ),
) -> None:
    """Validate a plan and print the commands every launcher (or the --for one) will run (exit 2 when
    invalid)."""
    from neva_prep.launch.plan import check_for, describe, load_plan

    loaded = run(load_plan, plan)
    if target is not None:
        run(check_for, loaded, target)
    say(describe(loaded, target))


@launch_app.command("local")
def launch_local(
    plan: str = typer.Argument(..., help="Plan file (path or URL)."),
    workers: int = typer.Option(0, "--workers", "-k", help="Commands run at once (default: usable CPUs)."),
) -> None:
    """Run the plan on this machine: model step and shards in parallel, each merge after its shards; a
    dataset's `shards: auto` (the default) becomes the usable CPUs, at most --workers."""
    from neva_prep.launch.local import run_local
    from neva_prep.launch.plan import load_plan

    result = run(run_local, run(load_plan, plan), workers or None, say)
    say(result.summary())
    raise typer.Exit(result.exit_code)


@launch_app.command("k8s")
def launch_k8s(
    plan: str = typer.Argument(..., help="Plan file (path or URL)."),
    out: str = typer.Option(..., "--out", help="Directory for the rendered manifests."),
    apply: bool = typer.Option(False, "--apply", help="Create the Jobs (kubeconfig or in-cluster account)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the plan's Jobs until they finish."),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between status polls with --wait."),
) -> None:
    """Render the plan as Kubernetes Jobs (model, Indexed shards, merges); optionally create, follow them."""
    from neva_prep.launch import k8s
    from neva_prep.launch.plan import load_plan

    result = run(
        k8s.launch_k8s, run(load_plan, plan), out, do_apply=apply, do_wait=wait, interval=interval, echo=say
    )
    say(result.summary())
    raise typer.Exit(result.exit_code)


@launch_app.command("slurm")
def launch_slurm(
    plan: str = typer.Argument(..., help="Plan file (path or URL)."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the sbatch scripts and submit.sh."),
    submit: bool = typer.Option(False, "--submit", help="Submit with the rendered submit.sh; print job ids."),
    wait: bool = typer.Option(False, "--wait", help="With --submit: follow the jobs to the end and report."),
) -> None:
    """Render sbatch scripts (model job, an array per dataset, its merge) and submit.sh; optionally submit."""
    from neva_prep.launch.slurm import TaskState
    from neva_prep.launch.slurm import launch_slurm as launch

    def progress(task: TaskState) -> None:
        say(f"  {task.line()}")

    result = run(launch, plan, out, submit_jobs=submit or wait, follow=wait, on_change=progress)
    say(result.summary())
    if result.exit_code:
        typer.echo(f"neva-prep: error: {result.error()}", err=True)
        raise typer.Exit(result.exit_code)


Cluster = Literal["slurm", "local", "debug"]


@launch_app.command("submitit")
def launch_submitit(
    plan: str = typer.Argument(..., metavar="PLAN", help="Plan file (path or URL)."),
    folder: str = typer.Option(
        ...,
        "--folder",
        metavar="DIR",
        help="Directory (shared with the nodes) for submitit's scripts, pickles and logs.",
    ),
    cluster: Cluster | None = typer.Option(
        None, "--cluster", help="Where the jobs run; default: slurm where srun exists, else local."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the jobs to the end and report each."),
) -> None:
    """Submit the plan with submitit: model job, an array per dataset, each merge after its array."""
    from neva_prep.launch.submitit import launch_submitit as launch

    result = run(launch, plan, folder, cluster=cluster, wait=wait, on_end=lambda end: say(end.line()))
    say(result.summary())
    raise typer.Exit(result.exit_code)


# --- built-in sample ---------------------------------------------------------------------------------------


@app.command("sample")
def sample(
    directory: str = typer.Argument(..., metavar="DIR", help="A local directory to write the sample into."),
    force: bool = typer.Option(False, "--force", help="Write into DIR even if it holds other files."),
) -> None:
    """Write the built-in sample (tiny LLaMA, WebVid CSV, LLaVA JSON) and print its plan's path. A non-empty
    DIR that is not a previous sample is refused: only the sample's own input/ and plan.yaml are replaced."""
    from neva_prep.sample import write_sample

    say(str(run(write_sample, directory, force=force)))


def command() -> Any:
    """The click command tree, every command's help ending with the exit-code contract."""
    root = typer.main.get_command(app)

    def walk(cmd: Any) -> None:
        cmd.epilog = "\b\n" + EXIT_CODES_HELP
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(root)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; usage errors are one line (exit 2) like every other bad input."""
    args = list(sys.argv[1:] if argv is None else argv)
    # `--debug` is global but accepted after the subcommand too (before a `--` that ends the options)
    end = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:end]:
        _state["debug"] = True
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
    try:
        code = command().main(args=args, prog_name="neva-prep", standalone_mode=False)
    except _UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
        else:
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"neva-prep: error: {message}{where}", err=True)
        code = EXIT_BAD_INPUT
    except _ClickException as exc:
        typer.echo(f"neva-prep: error: {' '.join(exc.format_message().split())}", err=True)  # type: ignore[attr-defined]
        code = exc.exit_code  # type: ignore[attr-defined]
    except typer.Abort:
        typer.echo("neva-prep: aborted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
