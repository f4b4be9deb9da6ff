"""A real single-node Slurm cluster for the tests: Debian's munge + slurmctld + slurmd on 127.0.0.1.

Everything lives in one private directory (`/tmp/neva-prep-slurm-<pid>-<random>/`): its own munge key and
socket, its own `slurm.conf` (found by clients through `SLURM_CONF`), free ports, state and spool dirs. So a
second run on the same machine, or one running beside it, never meets this one's daemons; daemons left by a
run that died (its owner pid is gone) are stopped by pid and their directory removed before a new start.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "scancel", "squeue")
PREFIX = "neva-prep-slurm-"


class SlurmUnavailable(RuntimeError):
    """Slurm is missing and cannot be installed here (no apt-get, or not root)."""


def install() -> None:
    """Install Debian's Slurm packages when a binary is missing (`apt-get update` once, then install)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and apt-get is not available")
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise RuntimeError(f"installed {PACKAGES} but still missing {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stop_pid(pid: int, marker: str) -> None:
    """Stop one daemon that we started (its command line names our directory), SIGTERM then SIGKILL."""
    if pid <= 0 or marker not in _cmdline(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and marker in _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid) and marker in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stop_daemons(root: Path) -> None:
    for pidfile in sorted(root.glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            _stop_pid(int(pidfile.read_text().split()[0]), str(root))


def clean_stale(tmp: Path) -> None:
    """Stop the daemons of earlier runs whose owner process is gone, and remove their directories."""
    for root in tmp.glob(PREFIX + "*"):
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and _alive(owner):
            continue  # a live run beside us: leave it alone
        _stop_daemons(root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SlurmCluster:
    """A running single-node cluster; `env` is what a client (sbatch, scontrol) needs to reach it."""

    root: Path
    conf: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        done = subprocess.run(
            list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, check=False, timeout=60
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def logs(self) -> str:
        """The daemons' logs, for failure messages."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        _stop_daemons(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def node_hardware() -> str:
    """`slurmd -C`'s description of this machine, minus the node name and uptime."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = re.findall(r"(\w+)=(\S+)", out.splitlines()[0])
    return " ".join(f"{k}={v}" for k, v in fields if k not in ("NodeName", "UpTime"))


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, hardware: str) -> str:
    return f"""\
ClusterName=nevaprep
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
InactiveLimit=0
KillWait=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def start(tmp: Path | None = None, timeout: float = 60) -> SlurmCluster:
    """Install if needed, then start munged, slurmctld and slurmd; return once `sinfo` shows the node idle."""
    install()
    tmp = tmp or Path(tempfile.gettempdir())
    clean_stale(tmp)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=tmp))
    (root / "owner").write_text(str(os.getpid()))
    for d in ("state", "spool"):
        (root / d).mkdir()
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, _free_port(), _free_port(), node_hardware()))
    cluster = SlurmCluster(root=root, conf=conf, procs=[])
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        [
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={root}/munge.socket",
            f"--pid-file={root}/munged.pid",
            f"--log-file={root}/munged.log",
            f"--seed-file={root}/munged.seed",
        ],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
    ]
    try:
        for argv in daemons:
            out = (root / f"{argv[0]}.out").open("wb")
            cluster.procs.append(
                subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )
            if argv[0] == "munged":
                _wait(lambda: (root / "munge.socket").exists(), timeout, "munged socket", cluster)
        _wait(lambda: _node_idle(cluster), timeout, "the node to be idle in sinfo", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(cluster: SlurmCluster) -> bool:
    for proc in cluster.procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}\n{cluster.logs()}")
    done = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
    return done.returncode == 0 and "localhost idle" in done.stdout


def _wait(ready: Callable[[], bool], timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{cluster.logs()}")
        time.sleep(0.2)


@contextlib.contextmanager
def cluster() -> Iterator[SlurmCluster]:
    c = start()
    try:
        yield c
    finally:
        c.stop()
