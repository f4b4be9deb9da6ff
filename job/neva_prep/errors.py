"""The exit-code contract every command keeps, and the errors that carry it.

A batch scheduler must tell apart what a retry can fix from what it cannot: `StepFailed` (exit 1) may be
retried; `BadInput` (exit 2) fails the task at once (Kubernetes `podFailurePolicy` action `FailIndex`, Slurm
no requeue); `CheckFailed` (exit 3) is a check that ran to its end and found problems (`data validate`,
`checkpoint verify`): the findings are the answer, retrying gives the same ones. Unexpected exceptions exit 1.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3

EXIT_CODES_HELP = """\
Exit codes (the same for every command):
  0  done, or already complete
  1  failed; a retry may help (network, storage, a killed process)
  2  bad input or unusable destination (missing or unreadable source, a path
     that cannot be written, an unknown option value); retrying cannot help,
     nothing was written at the destination
  3  a check ran and found problems (data validate, checkpoint verify);
     retrying gives the same findings
Errors are one line on stderr naming the file; --debug (anywhere on the
command line) shows the traceback instead."""
"""The contract, printed by the top-level `--help`, every command's help and the README."""


class NevaPrepError(Exception):
    """An error with a one-line message meant for the user; `exit_code` is what the CLI returns."""

    exit_code = EXIT_FAILED


class StepFailed(NevaPrepError):
    """The step could not finish (a shard missing, a network error); a retry may help."""

    exit_code = EXIT_FAILED


class BadInput(NevaPrepError):
    """The input (or the destination) is unusable as given; a retry cannot help."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(NevaPrepError):
    """A check ran and found a problem in what it checked (a tensor that differs); not retryable."""

    exit_code = EXIT_CHECK_FAILED


def where(source: str, *, row: int | None = None, field: str | None = None) -> str:
    """Format 'file, row N, field F' for error messages and rejects."""
    parts = [source]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)
