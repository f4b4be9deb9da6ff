"""How many CPUs this process may really use: the one rule behind every worker and thread count.

A container's CPU limit (`docker run --cpus 2`, a Kubernetes `resources.limits.cpu`) is a CFS quota, not a
CPU mask: `os.cpu_count()` and the affinity mask still show every CPU of the node, and 64 workers under a
2-CPU quota are throttled, not faster, while each holds its own memory. So the count is the affinity mask,
cut to the tightest cgroup quota on the process's cgroup path (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded
up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may run on (affinity mask, else the machine's count, e.g. on macOS), at most
    its cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return max(1, min(cpus, quota)) if quota is not None else cpus


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The CPUs the tightest CPU quota on this process's cgroup path allows, rounded up; None when no quota
    applies or none can be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy, the quota in `cpu.max` ("max 100000" = none)
            for folder in _up_from(cgroup_root, path):
                limits.append(_ratio(_read(folder / "cpu.max").split()))
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own hierarchy
            for mount in (cgroup_root / controllers, cgroup_root / "cpu"):
                for folder in _up_from(mount, path):
                    pair = [_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")]
                    limits.append(_ratio(pair))
    found = [n for n in limits if n is not None]
    return min(found) if found else None


def _up_from(mount: Path, path: str) -> list[Path]:
    """`mount`/`path` and each folder above it up to `mount` itself (in a container the cgroup path is the
    host's while the mount is the container's own cgroup, so the walk ends there)."""
    parts = [p for p in path.split("/") if p]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _ratio(fields: list[str]) -> int | None:
    """ceil(quota / period) for a (quota, period) pair; None for no quota ("max", -1) or no file."""
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))
