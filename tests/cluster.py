"""A real dask cluster on loopback: `dask scheduler` and `dask worker` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def dask_cluster(folder: Path, workers: list[dict]):
    """Start a scheduler and one worker process per entry of ``workers``.

    Each entry may set ``resources`` (e.g. ``"GPU=1"``) and ``name``. Yields the
    scheduler address and the worker processes (``subprocess.Popen``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        address = _scheduler_address(scheduler_file, procs[0])
        worker_procs = []
        for index, spec in enumerate(workers):
            cmd = [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--no-nanny",
                "--name",
                spec.get("name", f"w{index}"),
                "--host",
                "127.0.0.1",
            ]
            if spec.get("resources"):
                cmd += ["--resources", spec["resources"]]
            proc = subprocess.Popen(
                cmd,
                env={**env, "EMI_TORCH_THREADS": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            worker_procs.append(proc)
            procs.append(proc)
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield address, worker_procs
    finally:
        # The workers first, then the scheduler: a worker whose scheduler went at the same
        # moment spends its whole close (20 s and more) trying to reach it again.
        for group in (procs[1:], procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def _scheduler_address(scheduler_file: Path, scheduler: subprocess.Popen) -> str:
    """The address in the scheduler's file once it is whole (the scheduler writes it in
    place: a read can find it empty or half written)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and scheduler.poll() is None:
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            time.sleep(0.1)
    raise RuntimeError(f"the dask scheduler wrote no address to {scheduler_file} in 60 s")


def start_scheduler(port: int) -> subprocess.Popen:
    """``dask scheduler`` on 127.0.0.1:``port`` (a fixed port: started again after a
    stop, it is the same address), waiting until it accepts connections."""
    import socket

    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"the dask scheduler did not listen on port {port} in 60 s")


def start_worker(address: str, name: str) -> subprocess.Popen:
    """``emi worker`` (a CPU dask worker, as the deployment runs them) on ``address``."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", address, "--device", "cpu",
         "--name", name, "--no-dashboard", "--no-nanny", "--host", "127.0.0.1"],
        env={**os.environ, "EMI_TORCH_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``proc`` and its process group ended (SIGKILL: a crash, no goodbye)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
