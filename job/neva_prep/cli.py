"""The `neva-prep` command line: parse arguments, call one function, print its result.

Known errors (`NevaPrepError`) become one line on stderr and their exit code (2 for bad input, 1 for a
failed step); anything unexpected exits 1 with one line, or a traceback with `--debug`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from neva_prep.errors import EXIT_FAILED, NevaPrepError
from neva_prep.storage import redact

T = TypeVar("T")

app = typer.Typer(
    name="neva-prep",
    help="Prepare NeMo NeVA / VideoNeVA training: model step, data step, launchers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
checkpoint_app = typer.Typer(help="Convert and verify HF LLaMA checkpoints.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Patch SentencePiece tokenizers with special tokens.", no_args_is_help=True)
data_app = typer.Typer(help="Convert, merge and validate NeVA / VideoNeVA JSON data.", no_args_is_help=True)
plan_app = typer.Typer(help="Write and check plan files.", no_args_is_help=True)
launch_app = typer.Typer(help="Run a plan on Kubernetes, Slurm or this machine.", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")
app.add_typer(plan_app, name="plan")
app.add_typer(launch_app, name="launch")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    _state["debug"] = debug


def run(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call a step; turn its errors into one-line messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except NevaPrepError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"neva-prep: error: {redact(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _state["debug"]:
            raise
        typer.echo(f"neva-prep: failed: {type(exc).__name__}: {redact(str(exc))}", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def say(text: str) -> None:
    """Print a result summary to stdout."""
    typer.echo(text)


# --- model step: checkpoint / tokenizer / model -------------------------------------------------------

# --- data step: data convert / merge / validate ---------------------------------------------------------

# --- launchers: plan / launch -----------------------------------------------------------------------------

# --- built-in sample ---------------------------------------------------------------------------------------


def main() -> None:
    app(prog_name="neva-prep")


if __name__ == "__main__":
    main()
