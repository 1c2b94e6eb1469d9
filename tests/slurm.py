"""A one-node SLURM cluster on this machine: munge, slurmctld and slurmd, state in a folder.

For the tests (the ``slurm`` fixture) and for trying emi's SLURM path by hand::

    ./run slurm up      # prints the `export SLURM_CONF=...` line the SLURM commands need
    ./run slurm down

Everything listens on 127.0.0.1 (ports chosen free); the daemons' state, spool, pid
and log files live under the folder (``$EMI_SLURM_DIR``, default
``/tmp/emi-slurm``). The node is this machine, claiming 8 CPUs and 32 GB whatever it
has (its jobs share its real cores) and one stand-in GPU (``--gres=gpu:1`` jobs start;
torch sees no GPU in them); partition ``debug`` (the default, four hours at
most) and ``short`` (two minutes at most) hold it. Needs root and Debian's ``slurm-wlm``
and ``munge`` (``./run slurm up`` installs them with apt-get where they are missing). One
munge daemon serves the whole machine: one already running is used, else one is
started (and left running).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("EMI_SLURM_DIR", "/tmp/emi-slurm"))
PARTITION = "debug"  # the default partition: MaxTime four hours
SHORT_PARTITION = "short"  # MaxTime two minutes: a longer walltime never starts there
CLUSTER_NAME = "emi-local"  # marks a folder as this module's (slurm.conf)
PACKAGES = ("slurm-wlm", "munge")
# What the node claims (SlurmdParameters=config_overrides): more than this machine has,
# so the job sizes of deploy/slurm/jobqueue.yaml fit; the jobs share its real cores.
NODE_CPUS = 8
NODE_MEMORY_MB = 32768
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run on this machine (the message says why and what to do)."""


@dataclass(frozen=True)
class LocalSlurm:
    """A running one-node cluster: ``env`` is what SLURM's commands need to reach it."""

    folder: Path
    conf: Path
    node: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM command (``squeue``, ``scancel``, ...) against this cluster."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=30, check=check
        )

    def jobs(self) -> list[dict[str, str]]:
        """The cluster's queued and running jobs: id, name, state and reason each."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T|%r").stdout
        keys = ("id", "name", "state", "reason")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line]

    def wait_for_no_jobs(self, timeout_s: float = 60) -> list[dict[str, str]]:
        """Wait until no job is pending or running; the jobs left at the timeout."""
        deadline = time.monotonic() + timeout_s
        while (left := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


def _missing_programs() -> list[str]:
    return [p for p in DAEMONS if not Path(p).exists()]


def install() -> None:
    """apt-get install slurm-wlm and munge where they are missing (root only).

    Raises:
        SlurmUnavailable: not root, no apt-get, or the install failed.
    """
    if not _missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"slurm-wlm and munge are not installed ({', '.join(_missing_programs())} "
            "missing) and cannot be installed here without root and apt-get: "
            "apt-get install slurm-wlm munge"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SlurmUnavailable(
                f"{' '.join(command)} failed (exit {done.returncode}): "
                f"{done.stderr.strip().splitlines()[-1:]}"
            )


def _munge_works() -> bool:
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if token.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=token.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


def start_munge() -> None:
    """A munge daemon for the machine: the running one, else one started as ``munge``."""
    if _munge_works():
        return
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["/usr/sbin/mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, timeout=30)
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            raise SlurmUnavailable("munged started but munge -n | unmunge still fails")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(folder: Path) -> tuple[Path, str]:
    """slurm.conf for a one-node cluster on loopback with its files under ``folder``."""
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # A stand-in GPU (/dev/null), so jobs asking for --gres=gpu:1 start (with
    # CUDA_VISIBLE_DEVICES=0) as on a GPU node whose GPU torch cannot use.
    (folder / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/null\n")
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=60
KillWait=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:1
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=04:00:00 State=UP
PartitionName={SHORT_PARTITION} Nodes=ALL MaxTime=00:02:00 State=UP
"""
    )
    return conf, node


def up(folder: Path = DEFAULT_DIR, timeout_s: float = 60) -> LocalSlurm:
    """Start munge (where none runs), slurmctld and slurmd; return once the node is idle.

    A cluster already running from ``folder`` is stopped first, and the folder made
    again: it must be missing, empty, or one this module made.

    Raises:
        SlurmUnavailable: ``folder`` holds other things, the packages are missing and
            cannot be installed, or the node never came up (the daemons' logs under
            ``folder/log`` say why).
    """
    _refuse_others(folder)
    install()
    if os.geteuid() != 0:
        raise SlurmUnavailable("the local SLURM cluster runs its daemons as root")
    down(folder)
    start_munge()
    shutil.rmtree(folder, ignore_errors=True)
    conf, node = write_conf(folder)
    cluster = LocalSlurm(folder=folder, conf=conf, node=node)
    for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
        subprocess.run([daemon], env=cluster.env, check=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while True:
        state = cluster.run("sinfo", "-h", "-o", "%t", "-p", PARTITION, check=False).stdout
        if state.strip() == "idle":
            return cluster
        if time.monotonic() > deadline:
            down(folder)
            raise SlurmUnavailable(f"the SLURM node is not idle after {timeout_s:.0f} s "
                                   f"(sinfo: {state.strip()!r}); see {folder}/log")  # fmt: skip
        time.sleep(0.2)


def down(folder: Path = DEFAULT_DIR) -> None:
    """Cancel the cluster's jobs and stop its daemons (munge stays: others may use it).

    Raises:
        SlurmUnavailable: ``folder`` holds other things than this module's cluster.
    """
    _refuse_others(folder)
    conf = folder / "slurm.conf"
    if conf.exists() and _alive(folder / "slurmctld.pid"):  # else SLURM's commands retry
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for command in (["scancel", "--full", "-u", "root"], ["scontrol", "shutdown"]):
            subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    for pid_file in (folder / "slurmctld.pid", folder / "slurmd.pid"):
        _stop(pid_file)


def _refuse_others(folder: Path) -> None:
    """Only a missing or empty folder, or one holding this module's slurm.conf, is used
    (its files removed, the processes its pid files name stopped)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        if folder.exists() and not folder.is_dir():
            raise SlurmUnavailable(f"{folder} is a file; give a folder for the cluster's state")
        return
    try:
        ours = f"ClusterName={CLUSTER_NAME}\n" in (folder / "slurm.conf").read_text()
    except OSError:
        ours = False
    if not ours:
        raise SlurmUnavailable(
            f"{folder} holds files that are not a local SLURM cluster's; give an empty or "
            "new folder (--dir)"
        )


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _stop(pid_file: Path, timeout_s: float = 15) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s
    sig = signal.SIGTERM
    while True:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A one-node SLURM cluster on this machine.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="its state and logs")
    args = parser.parse_args(argv)
    if args.action == "down":
        try:
            down(args.dir)
        except SlurmUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"local SLURM cluster in {args.dir} stopped", file=sys.stderr)
        return 0
    started = time.monotonic()
    try:
        cluster = up(args.dir)
    except SlurmUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"local SLURM cluster up in {time.monotonic() - started:.2f} s: node {cluster.node}, "
          f"partitions {PARTITION} (default) and {SHORT_PARTITION}", file=sys.stderr)  # fmt: skip
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
