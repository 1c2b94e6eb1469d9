"""What the routes of ``emi serve`` share: the settings, the job table, the job runner,
the callback sender, the expiry sweeper and the metrics, started and stopped with the
app; and the checks a job request passes before it is queued."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from fastapi import Request

from service.callbacks import CallbackSender
from service.config import ServiceConfig
from service.errors import RequestError, bad_request, not_found
from service.health import HealthMonitor
from service.jobs import JobTable
from service.metrics import ServiceMetrics
from service.retention import Sweeper
from service.runner import JobRunner
from service.state import StateFolder

log = logging.getLogger("emi.service")


class Service:
    """What the routes share: settings, table, runner, callbacks, metrics."""

    def __init__(self, config: ServiceConfig, state: StateFolder) -> None:
        self.config = config
        self.state = state
        self.table = JobTable(state.database, on_full=state.give_up_reserve)
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
            {"stores": self._stores_readable, "cluster": self._cluster_ready,
             "state": self._state_writable}
        )  # fmt: skip
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
            log.error("the state folder's disk is full (no room for its reserve); jobs may "
                      "fail until it has room")  # fmt: skip
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

    def check_request(self, body: dict) -> None:
        """Everything a job needs that can be checked before it is queued: sources
        inside the roots, heads in the registry, store names, label files."""
        from service.registry import check_store_name, head_folder, store_exists
        from service.sources import check_label_file, resolve_source

        config = self.config
        if body.get("callback_url") and config.callback_secret is None:
            raise bad_request(
                "this service signs no callbacks (the operator gives --callback-secret-file); "
                "leave out callback_url and poll GET /v1/jobs/{id}"
            )
        if body.get("callback_url"):
            from service.callbacks import check_callback_url

            why = check_callback_url(body["callback_url"], config.callback_allow)
            if why:
                raise bad_request(f"callback_url {body['callback_url']!r}: {why}")
        kind = body["kind"]
        if kind in ("score", "extract"):
            resolve_source(config, body["source"])
        if body.get("store") and kind != "train":
            check_store_name(body["store"])
        if kind == "extract" and not store_exists(config.store_location(body["store"])):
            from service.backbone_check import unusable_for_new_stores

            why = unusable_for_new_stores(config)
            if why:
                raise RequestError(503, "not available", why)
        if kind == "score":
            for name in body["heads"]:
                head_folder(config, name)
        if kind == "train":
            if not store_exists(config.store_location(body["store"])):
                raise not_found(f"store {body['store']!r} not found; GET /v1/stores")
            if body.get("grid") is not None and body.get("preset") is not None:
                raise bad_request("give preset or grid, not both")
            check_label_file(config, body["labels"], what="labels")
            check_label_file(config, body["val_labels"], what="val_labels")
            # the head's name is claimed (or refused, 409) by reserve_head at submit


def service_of(request: Request) -> Service:
    """The app's :class:`Service` (a route dependency)."""
    return request.app.state.service
