"""The service for its tests: ``emi serve`` in a subprocess on a free loopback port
(:class:`Served`: to kill, signal or restart it), the same on a thread of the test
process (:class:`Hosted`), or its app behind FastAPI's ``TestClient`` (:class:`InProcess`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.client import ServiceClient

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``emi serve`` with the given options; :meth:`start` waits until it is ready."""

    def __init__(
        self,
        folder: Path,
        roots: list[Path | str],
        *options: str,
        token: str | None = None,
        stores: str | None = None,
        state: Path | None = None,
    ):
        self.folder = folder
        self.state = state or folder / "state"
        self.stores = stores or folder / "stores"
        self.heads = folder / "heads"
        self.roots = roots
        self.options = [str(o) for o in options]
        self.token = token
        self.process: subprocess.Popen | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"

    def command(self) -> list[str]:
        roots = [a for r in self.roots for a in ("--source-root", str(r))]
        return [
            sys.executable, "-m", "cli.main", "serve", "--stores", str(self.stores),
            "--heads", str(self.heads), "--state", str(self.state), *roots,
            "--port", str(self.port), *self.options,
        ]  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> Served:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMI_CACHE": str(self.folder / "cache")}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self._ready(timeout_s, ended=self.process.poll)

    def _ready(self, timeout_s: float, ended) -> Served:
        """Wait until /readyz answers 200; ``ended()`` is not None once the service
        has ended (then it is how)."""
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while time.monotonic() < deadline:
            if (how := ended()) is not None:
                raise AssertionError(f"emi serve ended ({how}):\n{self.text()}")
            try:
                if httpx.get(f"{self.url}/readyz", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"emi serve not ready after {timeout_s} s:\n{self.text()}")

    def client(self, token: str | None = None) -> ServiceClient:
        return ServiceClient(self.url, token=token or self.token, timeout=30)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        """Never leave a server behind a failed test."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"emi serve ignored SIGTERM:\n{self.text()}") from None


_PARENTS: dict[int, int] = {}  # a running thread's ident -> the ident of its starter


def _start_remembering_the_starter(thread: threading.Thread, _start=threading.Thread.start):
    starter, run = threading.get_ident(), thread.run

    def run_remembered() -> None:
        _PARENTS[threading.get_ident()] = starter
        try:
            run()
        finally:
            _PARENTS.pop(threading.get_ident(), None)

    thread.run = run_remembered
    _start(thread)


class _FromThreadsOf(logging.Filter):
    """Records logged by ``ancestor`` or a thread it started (or one they started, ...):
    one service's, where several run in this process."""

    def __init__(self, ancestor: threading.Thread):
        super().__init__()
        self.ancestor = ancestor

    def filter(self, record: logging.LogRecord) -> bool:
        ident, seen = record.thread, 0
        while ident is not None and seen < 64:
            if ident == self.ancestor.ident:
                return True
            ident, seen = _PARENTS.get(ident), seen + 1
        return False


class Hosted(Served):
    """:class:`Served` on a thread of this process: ``emi serve``'s own option parsing
    and set-up (:func:`cli.serve_cmd.prepare_service`: the port, the settings, the held
    state folder), its app under its uvicorn server on a loopback port. A real HTTP
    service for the browser, the generated client and the API tests, without a process
    start and its torch import; the tests that kill, signal or restart the service use
    :class:`Served`. :meth:`text` is what the service's threads logged (warnings and
    errors, tracebacks included), as ``emi serve``'s log would hold it: each thread
    started here remembers its starter, and the log keeps the records of the server's
    thread and of the threads it started, not those of other services in this
    process."""

    _LOGGERS = ("", "uvicorn", "distributed")  # uvicorn's and dask's do not propagate

    def start(self, timeout_s: float = 120.0) -> Hosted:
        from cli.cluster_options import slurm_settings
        from cli.serve_cmd import prepare_service, serve, server_for
        from service.app import create_app

        options = serve.make_context("serve", self.command()[4:]).params
        options["slurm"] = slurm_settings(options, on_demand=True)
        listener, config, self.held = prepare_service(options)
        self.server = server_for(create_app(config, self.held), config)
        self.handler = logging.FileHandler(self.log)
        self.handler.setLevel(logging.WARNING)
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [listener]}, name=f"emi serve :{self.port}"
        )
        self.handler.addFilter(_FromThreadsOf(self.thread))
        for name in self._LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        threading.Thread.start = _start_remembering_the_starter  # for every thread from now
        self.thread.start()
        try:
            return self._ready(
                timeout_s, ended=lambda: None if self.thread.is_alive() else "its thread ended"
            )
        except AssertionError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 60.0) -> int:
        """The graceful stop SIGTERM makes (running parts commit, the queue is kept);
        0, as ``emi serve`` exits then."""
        if getattr(self, "thread", None) is None:
            return 0
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError(f"emi serve did not stop in {timeout_s} s:\n{self.text()}")
        self.thread = None
        self.held.release()
        for name in self._LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
        return 0

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self) -> None:
        raise TypeError("a thread cannot be killed: use Served for a killed service")


class InProcess:
    """The service's app in this process (FastAPI's ``TestClient`` over ``create_app``:
    the routes, the guard, the job threads and a one-worker in-process dask cluster;
    no port, no subprocess). Options are :class:`ServiceConfig` fields; ``kinds`` the
    job kinds. ``web`` is the TestClient; :meth:`client` a :class:`ServiceClient` over
    it."""

    def __init__(self, folder: Path, roots: list[Path | str], *, kinds=None, **options):
        from service.config import ServiceConfig
        from service.kinds import KINDS

        self.folder = folder
        self.config = ServiceConfig(
            stores=str(options.pop("stores", folder / "stores")),
            heads=options.pop("heads", folder / "heads"),
            state=options.pop("state", folder / "state"),
            source_roots=[str(r) for r in roots],
            **options,
        )
        self.kinds = kinds or KINDS
        self.token = self.config.tokens[0] if self.config.tokens else None

    def __enter__(self) -> InProcess:
        from fastapi.testclient import TestClient

        from service.app import create_app
        from service.state import StateFolder

        state = StateFolder.open(self.config.state)
        state.hold()
        self.config.state = state.root
        self.state = state
        self.app = create_app(self.config, state, self.kinds)
        self.web = TestClient(self.app, base_url="http://127.0.0.1").__enter__()
        self.service = self.app.app.app.state.service  # behind the metrics and the guard
        return self

    def __exit__(self, *exc) -> None:
        self.web.__exit__(*exc)
        self.state.release()

    def client(self, token: str | None = None) -> ServiceClient:
        return ServiceClient(token=token or self.token, http=self.web)
