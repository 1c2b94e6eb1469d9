"""Job callbacks: once a job ends, its ``callback_url`` is POSTed the job's state and
counts, signed, and retried with backoff until the receiver answers 2xx.

The signature: header ``X-Emi-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact
body bytes under the operator's secret (``--callback-secret-file``); header
``X-Emi-Job`` names the job. A receiver recomputes the HMAC over the body it got and
compares in constant time. Delivery state is in the job table, so a callback still
pending when the service stops is sent after the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading

from service.jobs import Job, JobTable, iso

log = logging.getLogger("emi.service")
SIGNATURE_HEADER = "X-Emi-Signature"
TIMEOUT_S = 10.0


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Emi-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def callback_body(job: Job) -> bytes:
    progress = job.progress
    counts = {
        k: progress.get(k)
        for k in ("clips_total", "clips_done", "clips_reused", "clips_failed", "epochs_done")
        if k in progress
    }
    return json.dumps(
        {
            "id": job.id,
            "kind": job.kind,
            "state": job.state,
            "finished_at": iso(job.finished_at),
            "counts": counts,
            "result": job.result,
            "error": job.error,
        },
        sort_keys=True,
    ).encode()


SENDERS = 4  # callbacks delivered at once (a slow receiver holds up only its own)


def check_callback_url(url: str) -> str | None:
    """Why ``url`` cannot be a callback (None: it can)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except Exception as err:  # httpx raises several kinds for malformed URLs
        return f"not a URL ({err})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "give an http:// or https:// URL with a host"
    return None


class CallbackSender:
    """A few threads delivering callbacks, each retried with doubling delays."""

    def __init__(
        self, table: JobTable, secret: bytes | None, *, attempts: int, backoff_s: float
    ) -> None:
        self.table = table
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"emi-callbacks-{k}", daemon=True)
            for k in range(SENDERS)
        ]

    def start(self) -> None:
        for job in self.table.pending_callbacks():  # left pending by the last run
            self._queue.put(job.id)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop sending (a callback mid-retry stays pending: sent after the next start)."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=TIMEOUT_S + 1)

    def send(self, job: Job) -> None:
        if job.callback and job.callback.get("status") == "pending":
            self._queue.put(job.id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._busy_lock:  # one delivery per job at a time
                if job_id in self._busy:
                    continue
                self._busy.add(job_id)
            try:
                job = self.table.get(job_id)
                if job is not None and job.callback and job.callback.get("status") == "pending":
                    self._deliver(job)
            except Exception:  # never lose the sender thread
                log.exception("job %s: callback delivery failed", job_id)
                with contextlib.suppress(Exception):
                    self.table.update(job_id, callback={**(job.callback or {}), "status": "failed"})
            finally:
                with self._busy_lock:
                    self._busy.discard(job_id)

    def _deliver(self, job: Job) -> None:
        import httpx

        state = dict(job.callback)
        body = callback_body(job)
        headers = {"Content-Type": "application/json", "X-Emi-Job": job.id}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        while state["attempts"] < self.attempts and not self._stop.is_set():
            state["attempts"] += 1
            try:
                answer = httpx.post(state["url"], content=body, headers=headers, timeout=TIMEOUT_S)
                ok, why = 200 <= answer.status_code < 300, f"HTTP {answer.status_code}"
            except httpx.HTTPError as err:
                ok, why = False, f"{type(err).__name__}: {err}"
            except Exception as err:  # a URL httpx cannot send to: no retry helps
                state.update(status="failed", last_error=f"{type(err).__name__}: {err}")
                self.table.update(job.id, callback=state)
                return
            if ok:
                state.update(status="delivered", last_error=None)
                self.table.update(job.id, callback=state)
                log.info("job %s: callback delivered (attempt %d)", job.id, state["attempts"])
                return
            state["last_error"] = why
            self.table.update(job.id, callback=state)
            delay = self.backoff_s * 2 ** (state["attempts"] - 1)
            log.warning("job %s: callback failed (%s); retrying in %.1f s", job.id, why, delay)
            if self._stop.wait(delay):
                return  # pending: sent after the next start
        if state["attempts"] >= self.attempts:
            state["status"] = "failed"
            self.table.update(job.id, callback=state)
            log.error("job %s: callback given up after %d attempts", job.id, state["attempts"])
