"""The service's link to its dask cluster: one client at a time, made again when lost.

A distributed client that loses its scheduler cancels its futures, tries to reconnect
for its connect timeout (:data:`CONNECT_TIMEOUT_S` here) and then closes for good. The
link watches its client in a thread of its own: a closed client (or none yet: the
scheduler was not there at start) is replaced by a new one as soon as the scheduler
answers again, so a scheduler that was away for minutes finds the service ready within
seconds of its return. The link's status is what ``/readyz`` shows; it is refreshed
here, never asked of the scheduler in a request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from featurestore.options import SlurmOptions

log = logging.getLogger("emi.service")
CHECK_S = 2.0  # how often the client is looked at (and a lost one made again)
CONNECT_TIMEOUT_S = 10.0  # one attempt to reach the scheduler
WAIT_FOR_CLIENT_S = 30.0  # a job waits this long for a client before it is requeued


class ClusterGone(RuntimeError):
    """The dask cluster is not reachable now (a job waiting for it goes back to the
    queue)."""


@dataclass(frozen=True)
class ClusterStatus:
    """What the link last saw. ``connected``: a client talks to the scheduler;
    ``workers``: the workers it has; ``words``: for ``/readyz`` and the log."""

    connected: bool
    workers: int
    words: str
    at: float  # time.monotonic() of the look
    on_demand: bool = False  # workers are started when jobs come (SLURM)

    @property
    def ready(self) -> bool:
        return self.connected and (self.workers > 0 or self.on_demand)


class ClusterLink:
    """The client jobs use, kept connected (see the module's docstring).

    With ``slurm`` the cluster's workers are SLURM jobs on ``device``, started on demand
    (``featurestore.slurm``); a cluster whose jobs cannot run (its watch says why) is
    made again. Otherwise, with ``scheduler`` None the cluster is a LocalCluster this
    link starts (and starts again should it fail)."""

    def __init__(
        self,
        *,
        workers: int,
        scheduler: str | None,
        check_s: float = CHECK_S,
        slurm: SlurmOptions | None = None,
        device: str = "auto",
    ) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self.slurm = slurm
        self.device = device
        self.check_s = check_s
        self._client = None
        self._exit: contextlib.ExitStack | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = ClusterStatus(False, 0, "starting", time.monotonic())
        self._error: str | None = None
        self.losses = 0  # clients lost since start (each replaced)

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="emi-dask", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT_S + 5)
        self._drop()

    def alive(self) -> bool:
        """Whether the watching thread runs (False once it died: the service cannot
        recover its cluster by itself, ``/healthz`` says so)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def status(self) -> ClusterStatus:
        return self._status

    # -- for jobs ------------------------------------------------------------------

    def client(self, wait_s: float = WAIT_FOR_CLIENT_S):
        """The connected client, waiting up to ``wait_s`` for one.

        Raises:
            ClusterGone: none within ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        with self._changed:
            while not self._usable(self._client):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    raise ClusterGone(f"the dask cluster is not reachable ({self._status.words})")
                self._changed.wait(min(left, self.check_s))
            return self._client

    def current(self):
        """The client now (None while there is none); never waits."""
        return self._client

    def lost(self, client) -> bool:
        """Whether ``client`` (one a job took) has lost its scheduler since."""
        return client is not self._client or not self._usable(client)

    # -- the watch -----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._look()
            except Exception:  # never let the watch die of one bad look
                log.exception("the dask cluster could not be checked")
            self._stopping.wait(self.check_s)

    def _look(self) -> None:
        client = self._client
        if client is not None and client.status in ("closed", "closing", "failed"):
            self.losses += 1
            log.warning("the dask client lost its scheduler for good; connecting anew")
            self._drop()
            client = None
        if (failed := _slurm_watch(client)) is not None and failed.error is not None:
            log.error("SLURM: %s; making the cluster again", failed.error)  # jobs cannot run
            self._drop()
            client = None
        if client is None:
            client = self._connect()
            if client is None:
                return
        watch = _slurm_watch(client)
        if client.status != "running":  # reconnecting by itself (for up to 30 s)
            self._status = ClusterStatus(False, 0, "unreachable: reconnecting", time.monotonic())
            return
        try:
            workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        except Exception as err:
            self._status = ClusterStatus(False, 0, f"unreachable: {err}", time.monotonic())
            return
        words = f"{workers} worker{'s' if workers != 1 else ''}"
        if watch is not None:
            words += f" (SLURM, up to {self.slurm.max_jobs} jobs on demand: {watch.words})"
        self._status = ClusterStatus(
            True, workers, words, time.monotonic(), on_demand=self.slurm is not None
        )

    def _connect(self):
        from featurestore.cluster import dask_client

        stack = contextlib.ExitStack()
        try:
            client = stack.enter_context(
                dask_client(
                    workers=self.workers,
                    scheduler=self.scheduler,
                    quiet=True,
                    connect_timeout_s=CONNECT_TIMEOUT_S,
                    slurm=self.slurm,
                    device=self.device,
                    wait_for_worker=False,
                )
            )
        except Exception as err:
            stack.close()
            words = f"{type(err).__name__}: {err}"
            if words != self._error:  # once per new reason, not every few seconds
                log.error("dask cluster not reachable: %s", words)
            self._error = words
            self._status = ClusterStatus(False, 0, f"unreachable: {words}", time.monotonic())
            return None
        if self._error is not None:
            log.info("dask cluster reachable again")
        self._error = None
        with self._changed:
            self._client, self._exit = client, stack
            self._changed.notify_all()
        return client

    def _drop(self) -> None:
        with self._changed:
            stack, self._client, self._exit = self._exit, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()

    @staticmethod
    def _usable(client) -> bool:
        return client is not None and client.status == "running"


def _slurm_watch(client):
    """The ``featurestore.slurm.JobWatch`` of ``client``'s SLURM cluster (None: no client,
    or not a SLURM cluster)."""
    return getattr(getattr(client, "cluster", None), "emi_watch", None)
