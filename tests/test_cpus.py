"""The CPU count every worker pool uses: the affinity mask cut to the cgroup's CPU quota. Real containers
(`podman run --cpus 1`) are checked by `.ci/image-test.sh`; here the cgroup files of each layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neva_prep.cpus import cgroup_cpu_quota, usable_cpus


def tree(root: Path, files: dict[str, str], proc: str) -> Path:
    for name, text in files.items():
        path = root / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (root / "proc").write_text(proc)
    return root / "cgroup"


@pytest.mark.parametrize(
    ("files", "proc", "cpus"),
    [
        # cgroup v2 on a host: the tightest quota on the path counts (a parent's too), rounded up
        ({"a/b/cpu.max": "max 100000", "a/cpu.max": "150000 100000"}, "0::/a/b\n", 2),
        ({"a/b/cpu.max": "50000 100000", "a/cpu.max": "400000 100000"}, "0::/a/b\n", 1),
        # cgroup v2 in a container (its own cgroup namespace: the path is "/")
        ({"cpu.max": "200000 100000"}, "0::/\n", 2),
        ({"cpu.max": "max 100000"}, "0::/\n", None),
        # cgroup v1 in a container: the host's path in /proc, the container's own cgroup mounted
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            "12:cpu,cpuacct:/docker/0123abc\n11:memory:/docker/0123abc\n",
            3,
        ),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n", None),
        # hybrid (v1 controllers, v2 mounted elsewhere): no cpu.max under the root
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/x\n0::/\n", 1),
        ({}, "0::/\n", None),  # no files: no quota known
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], proc: str, cpus: int | None) -> None:
    root = tree(tmp_path, files, proc)
    assert cgroup_cpu_quota(root, tmp_path / "proc") == cpus


def test_usable_cpus_is_the_affinity_cut_to_the_quota(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    one = tree(tmp_path / "one", {"cpu.max": "100000 100000"}, "0::/\n")
    assert usable_cpus(one, tmp_path / "one" / "proc") == 1
    many = tree(tmp_path / "many", {"cpu.max": f"{100000 * (mask + 8)} 100000"}, "0::/\n")
    assert usable_cpus(many, tmp_path / "many" / "proc") == mask
    assert usable_cpus(tmp_path / "none", tmp_path / "missing") == mask
