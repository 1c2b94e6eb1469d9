"""What the routes of ``emi serve`` share: the settings, the job table, the job runner,
the callback sender, the expiry sweeper and the metrics, started and stopped with the
app; and a job's submission (its kind's checks and claims) and cancel."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Annotated

from fastapi import Depends, Request

from service.callbacks import CallbackSender
from service.config import ServiceConfig
from service.errors import bad_request, conflict, not_found
from service.health import HealthMonitor
from service.jobs import Job, JobState, JobTable, body_digest, new_job_id
from service.kinds import KINDS, JobRequestBase, KindRegistry
from service.metrics import ServiceMetrics
from service.retention import Sweeper
from service.runner import JobRunner
from service.state import StateFolder

log = logging.getLogger("emi.service")


class Service:
    """What the routes share: settings, table, runner, callbacks, metrics."""

    def __init__(
        self, config: ServiceConfig, state: StateFolder, kinds: KindRegistry = KINDS
    ) -> None:
        self.config = config
        self.state = state
        self.kinds = kinds
        self.table = JobTable(state.database, kinds, on_full=state.give_up_reserve)
        self.metrics = ServiceMetrics(self.table)
        self.callbacks = CallbackSender(
            self.table,
            config.callback_secret,
            attempts=config.callback_attempts,
            backoff_s=config.callback_backoff_s,
            deadline_s=config.callback_timeout_s,
            allow=config.callback_allow,
        )
        self.runner = JobRunner(config, self.table, self.metrics, self.callbacks.send)
        self.runner.restore_reserve = state.keep_reserve
        self.sweeper = Sweeper(config, self.table)
        self.health = HealthMonitor(
            {
                "stores": self._stores_readable,
                "cluster": self._cluster_ready,
                "state": self._state_writable,
            }
        )
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_lock = threading.Lock()

    @contextlib.contextmanager
    def key_lock(self, key: str | None):
        """Held while a submission with ``key`` is checked and added (no key: none)."""
        if key is None:
            yield
            return
        with self._key_locks_lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with lock:
                yield
        finally:
            with self._key_locks_lock:
                if not lock.locked():
                    self._key_locks.pop(key, None)

    def start(self) -> None:
        from service.uploads import sweep_partial_uploads

        if not self.state.keep_reserve():
            log.error(
                "the state folder's disk is full (no room for its reserve); jobs may "
                "fail until it has room"
            )
        for leftover in sweep_partial_uploads(self.config):
            log.info("removed %s, an upload cut off when the service stopped", leftover)
        self.callbacks.start()
        self.runner.start()
        self.sweeper.start()
        self.health.start()

    def stop(self) -> None:
        log.info("stopping: no new jobs; running jobs stop after their current batch")
        self.health.stop()
        self.sweeper.stop()
        self.runner.stop()
        self.callbacks.stop()  # before the table closes: their state is written there
        self.table.close()

    # -- probes ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready for jobs, and each check's words (``/readyz``): from the background
        checks' last answers, never waiting on a dependency."""
        answers = self.health.answers()
        threads = self.runner.threads_alive()
        answers["jobs"] = (threads, "running" if threads else "stopped")
        ready = all(passes for passes, _ in answers.values())
        return ready, {name: words for name, (_, words) in answers.items()}

    def unrecoverable(self) -> str | None:
        """Why the service cannot recover by itself (``/healthz`` fails, so the pod is
        restarted): a job thread, the cluster's watch or a check's thread died. None:
        alive (a dependency being away is readiness's business, not this)."""
        if self.runner.stopping:
            return None
        if not self.runner.threads_alive():
            return "a job thread died"
        if not self.runner.link.alive():
            return "the dask cluster's watch died"
        if not self.health.alive():
            return "a readiness check's thread died"
        return None

    def _stores_readable(self) -> tuple[bool, str]:
        from service.registry import store_names

        store_names(self.config, refresh=True)
        return True, "readable"

    def _cluster_ready(self) -> tuple[bool, str]:
        status = self.runner.link.status
        age = time.monotonic() - status.at
        if age > self.health.stale_s:
            return False, f"no answer for {age:.0f} s"
        return status.ready, status.words if status.ready else status.words.split(":", 1)[0]

    def _state_writable(self) -> tuple[bool, str]:
        writable = self.state.writable()
        return writable, "writable" if writable else "full"

    # -- jobs ----------------------------------------------------------------------

    def submit(self, request: JobRequestBase, key: str | None) -> tuple[Job, bool]:
        """Queue a job (checked by its kind first, its claims taken); with ``key`` used
        for the same body before, that job: (job, new).

        Raises:
            RequestError: the kind's checks refused it, or ``key`` was used for another
                body (409).
        """
        body = request.model_dump(exclude_none=True)
        taken = conflict(f"Idempotency-Key {key!r} was used for another request; use a new key")
        with self.key_lock(key):  # racing retries: one makes it, others find it
            if key is not None:
                found = self.table.by_key(key)
                if found is not None:
                    if found[1] != body_digest(body):
                        raise taken
                    return found[0], False
            kind = self.kinds[request.kind]
            self._check_callback(request)
            kind.check(self.config, request)
            job_id = new_job_id()
            if kind.claim is not None:
                kind.claim(self.config, request, job_id)
            new = False
            try:
                job, new = self.table.add(kind.name, body, idempotency_key=key, job_id=job_id)
            except KeyError:
                raise taken from None
            finally:
                if kind.release is not None and not new:
                    kind.release(self.config, request, job_id)
        if new:
            log.info("job %s %s: queued", job.id, job.kind)
            self.runner.wake()
        return job, new

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop (a queued one is cancelled at once, a running one at its
        next boundary).

        Raises:
            RequestError: no such job (404), or it has finished (409).
        """
        asked = self.table.request_cancel(job_id)
        if asked is None:
            raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
        job, moved = asked
        if job.final and moved is None:
            raise conflict(f"job {job_id} is {job.state}; only a job not finished can be cancelled")
        if moved is JobState.cancelled:
            log.info("job %s %s: queued -> cancelled", job.id, job.kind)
            self.runner.ended(job)
        return job

    def _check_callback(self, request: JobRequestBase) -> None:
        url = request.callback_url
        if url and self.config.callback_secret is None:
            raise bad_request(
                "this service signs no callbacks (the operator gives --callback-secret-file); "
                "leave out callback_url and poll GET /v1/jobs/{id}"
            )
        if url:
            from service.callbacks import check_callback_url

            why = check_callback_url(url, self.config.callback_allow)
            if why:
                raise bad_request(f"callback_url {url!r}: {why}")


def service_of(request: Request) -> Service:
    """The app's :class:`Service` (a route dependency)."""
    return request.app.state.service


Served = Annotated[Service, Depends(service_of)]  # a route's service (a dependency)
