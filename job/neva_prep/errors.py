"""The two kinds of failure a batch scheduler must tell apart.

`BadInput` (exit 2) means retrying cannot help: the scheduler should fail the task at once (Kubernetes
`podFailurePolicy` action `FailIndex`, Slurm no requeue). `StepFailed` (exit 1) is anything else worth
reporting in one line; unexpected exceptions also exit 1 and may be retried.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class NevaPrepError(Exception):
    """An error with a one-line message meant for the user; `exit_code` is what the CLI returns."""

    exit_code = EXIT_FAILED


class StepFailed(NevaPrepError):
    """The step could not finish (a shard missing, a verification mismatch); a retry may help."""

    exit_code = EXIT_FAILED


class BadInput(NevaPrepError):
    """The input (or the destination) is unusable as given; a retry cannot help."""

    exit_code = EXIT_BAD_INPUT


def where(source: str, *, row: int | None = None, field: str | None = None) -> str:
    """Format 'file, row N, field F' for error messages and rejects."""
    parts = [source]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)
