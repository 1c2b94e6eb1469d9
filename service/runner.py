"""Runs the job table's jobs: a few threads take queued jobs oldest first and run them
(each by its kind's ``run``, :mod:`service.kinds`) on the service's one dask client (a
LocalCluster whose workers keep the backbone loaded between jobs, or an existing
scheduler).

Jobs that write one store take turns through the store's writer lock (they wait, never
fail for it); jobs that read run beside them. A job's progress goes to the table as its
parts report each round and commit, and after every epoch; a cancel (or the service
stopping) is honoured within seconds: parts not started are skipped, running parts stop
after their current round and commit what they finished, training stops after its
epoch. Every change of a job's state is a compare-and-set (:mod:`service.jobs`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from service.cluster_link import ClusterGone, ClusterLink
from service.config import ServiceConfig
from service.errors import JobStopped, RequestError, failure_words
from service.jobs import RUNNING_STATES, TRANSITIONS, Job, JobState, JobTable
from service.kinds.clips import DiskFull, disk_full_advice
from service.kinds.context import JobContext

log = logging.getLogger("emi.service")
IDLE_POLL_S = 0.5
MAX_RUNS = 10  # a job the cluster's losses sent back to the queue runs at most this often


def _ending(state: JobState) -> list[JobState]:
    """The states of a running job from which it may end in ``state``."""
    return [s for s in RUNNING_STATES if state in TRANSITIONS[s]]


class JobRunner:
    """The job threads and the dask client they share."""

    def __init__(self, config: ServiceConfig, table: JobTable, metrics, on_final) -> None:
        self.config = config
        self.table = table
        self.kinds = table.kinds
        self.metrics = metrics
        self.on_final = on_final  # called with each job that ends (callbacks)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.link = ClusterLink(
            workers=config.workers,
            scheduler=config.scheduler,
            slurm=config.slurm,
            device=config.device,
        )
        self.restore_reserve: Callable[[], bool] | None = None  # the state disk's reserve
        self._unrecorded: list[tuple[Job, JobState, dict]] = []  # ends the table refused
        self._unrecorded_lock = threading.Lock()

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        for job_id in self.table.cancelled_while_away():
            log.info("job %s: cancelled while the service was stopped", job_id)
            self.ended(self.table.get(job_id))
        for job_id in self.table.requeue_running():
            log.info("job %s: running when the service stopped; queued again to resume", job_id)
        self.link.start()
        for k in range(self.config.concurrent_jobs):
            thread = threading.Thread(target=self._loop, name=f"emi-job-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def client(self):
        """The dask client (waits for one; :class:`ClusterGone` if none comes)."""
        return self.link.client()

    def cluster_status(self) -> tuple[bool, str]:
        """Whether the cluster is ready for jobs, in words (from the link's last look)."""
        status = self.link.status
        return status.ready, status.words

    def threads_alive(self) -> bool:
        """Whether every job thread is running (False once one died, or stopping)."""
        return (
            bool(self._threads)
            and not self._stopping.is_set()
            and all(t.is_alive() for t in self._threads)
        )

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Take no more jobs; running jobs stop after their current round or epoch (what
        they finished is committed) and go back to the queue, to resume at the next
        start."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        self.link.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def should_stop(self, job_id: str) -> bool:
        """Whether a running job should stop at its next boundary."""
        return self._stopping.is_set() or self.table.cancel_requested(job_id)

    def _context(self, job: Job) -> JobContext:
        return JobContext(
            job,
            config=self.config,
            table=self.table,
            metrics=self.metrics,
            client=self.client,
            should_stop=lambda: self.should_stop(job.id),
        )

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._record_ends()
            if self.restore_reserve is not None:  # once the state disk has room again
                with contextlib.suppress(OSError):
                    self.restore_reserve()
            if not self.link.status.connected:  # jobs wait in the queue for the cluster
                self._stopping.wait(IDLE_POLL_S)
                continue
            try:
                job = self.table.claim_next()
            except Exception:  # the table itself failed (disk, lock): try again shortly
                log.exception("the job table could not be read; trying again")
                self._stopping.wait(IDLE_POLL_S * 4)
                continue
            if job is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # the service's own fault: the job fails, the thread lives
                log.exception("job %s: the service failed running it", job.id)
                with contextlib.suppress(Exception):
                    detail = "the service failed running this job (its log says why); resubmit"
                    error = {"error": "internal error", "detail": detail}
                    self._end(job, JobState.failed, error=error)

    def _run(self, job: Job) -> None:
        log.info("job %s %s: queued -> %s (run %d)", job.id, job.kind, job.state, job.runs)
        self.metrics.started(job)
        started = time.monotonic()
        kind = self.kinds[job.kind]
        client = self.link.current()
        try:
            outcome = kind.run(self._context(job))
        except JobStopped:
            outcome = None
        except Exception as err:
            if self._cluster_lost(job, err, client):
                return
            if not self.should_stop(job.id):
                self._failed(job, err)
                self.metrics.duration(job.kind, "failed", time.monotonic() - started)
                return
            outcome = None  # stopped while waiting (e.g. for a store's writer lock)
        if outcome is None:  # stopped at a boundary
            self._stopped(job, time.monotonic() - started)
            return
        self.metrics.duration(job.kind, "succeeded", time.monotonic() - started)
        self._end(job, JobState.succeeded, result=outcome)

    def _stopped(self, job: Job, seconds: float) -> None:
        """A job stopped at a boundary: cancelled where its cancel was asked, else (the
        service is stopping) back to the queue, to resume at the next start."""
        if self.table.transition(job.id, JobState.queued, expect=[JobState.running]):
            log.info("job %s: the service is stopping; queued to resume", job.id)
            return
        self._end(job, JobState.cancelled)  # it went cancelling: its cancel won
        self.metrics.duration(job.kind, "cancelled", seconds)

    def _cluster_lost(self, job: Job, err: Exception, client) -> bool:
        """Where ``job`` failed because the dask cluster went away (its client lost the
        scheduler, or none came back in time): back to the queue, to resume once the
        cluster is back (what it committed is kept), up to :data:`MAX_RUNS` runs; then
        it fails saying so. False: another failure."""
        from featurestore.errors import ClusterLost

        lost = isinstance(err, ClusterGone | ClusterLost) or (
            self.kinds[job.kind].uses_cluster and client is not None and self.link.lost(client)
        )
        if not lost or self.should_stop(job.id):
            return False
        if job.runs >= MAX_RUNS:
            detail = (
                f"the dask cluster went away during each of this job's {job.runs} runs; "
                "resubmit once the cluster is steady"
            )
            self._end(job, JobState.failed, error={"error": "ClusterGone", "detail": detail})
            return True
        self._context(job).progress(stage="waiting for the dask cluster")
        if not self.table.transition(job.id, JobState.queued, expect=[JobState.running]):
            return False  # its cancel came first: it ends cancelled
        log.warning(
            "job %s: the dask cluster went away (%s); queued to resume once it is back",
            job.id,
            type(err).__name__,
        )
        return True

    def _failed(self, job: Job, err: Exception) -> None:
        """End ``job`` failed with ``err``'s words (a traceback in the log only for
        errors that are not the user's to fix)."""
        from featurestore.errors import StoreError
        from manifests import ManifestError
        from models.errors import HeadError

        if isinstance(err, RequestError):  # a source, head or store that is not there (now)
            error = {"error": err.error, "detail": err.detail}
        else:
            if not isinstance(err, StoreError | ManifestError | HeadError | ValueError | OSError):
                log.error("job %s failed", job.id, exc_info=err)
            detail = str(err).strip() or repr(err)
            if isinstance(err, OSError) and err.errno in (28, 122):  # ENOSPC, EDQUOT
                err, detail = DiskFull(), f"{err.strerror}: {disk_full_advice()}"
            from service.sources import public_paths_in

            detail = self.config.public_text(public_paths_in(self.config, detail))
            error = {"error": failure_words(err), "detail": detail}
        self._end(job, JobState.failed, error=error)

    def _end(self, job: Job, state: JobState, **fields) -> None:
        """Move a running job to its end (``error`` or ``result`` with it)."""
        try:
            moved = self.table.transition(job.id, state, expect=_ending(state), **fields)
        except Exception:  # the table cannot be written (a full disk past the reserve)
            log.exception("job %s: its end (%s) could not be recorded; trying again", job.id, state)
            with self._unrecorded_lock:
                self._unrecorded.append((job, state, fields))
            return
        if not moved:
            log.warning("job %s: not running any more; its end (%s) is not recorded", job.id, state)
            return
        log.info("job %s %s: -> %s", job.id, job.kind, state)
        self.ended(self.table.get(job.id))

    def _record_ends(self) -> None:
        """Record the ends the table refused earlier (it may have room now)."""
        with self._unrecorded_lock:
            waiting, self._unrecorded = self._unrecorded, []
        for job, state, fields in waiting:
            try:
                moved = self.table.transition(job.id, state, expect=_ending(state), **fields)
            except Exception:
                with self._unrecorded_lock:
                    self._unrecorded.append((job, state, fields))
                continue
            if moved:
                log.info("job %s %s: -> %s (recorded late)", job.id, job.kind, state)
                self.ended(self.table.get(job.id))

    def ended(self, job: Job | None) -> None:
        """What follows a job's end: its kind's claims released, metrics, its callback."""
        if job is None:
            return
        kind = self.kinds[job.kind]
        if kind.release is not None and job.request is not None:
            kind.release(self.config, job.request, job.id)
        self.metrics.ended(job.kind, job.state.value)
        url = getattr(job.request, "callback_url", None)
        if url and not job.callback:
            self.table.set_callback(job.id, {"url": url, "status": "pending", "attempts": 0})
            job = self.table.get(job.id)
        if job is not None:
            self.on_final(job)
