"""A small Python client of ``emi serve`` (httpx), the one ``emi jobs`` uses.

Examples:
    >>> from service import ServiceClient  # doctest: +SKIP
    >>> client = ServiceClient("http://127.0.0.1:8000", token="...")  # doctest: +SKIP
    >>> job = client.submit({"kind": "score", "source": "/data/new", "heads": ["compact"]})
    ... # doctest: +SKIP
    >>> job = client.wait(job["id"])  # doctest: +SKIP
    >>> csv_text = client.predictions_csv(job["id"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from service.config import DEFAULT_SERVER
from service.jobs import FINISHED_STATES

RESTART_GRACE_S = 300.0  # how long ``wait`` keeps asking a service that cannot be reached


class ServiceError(Exception):
    """The service refused a request: ``status``, ``error`` and ``detail`` as it said."""

    def __init__(self, status: int, error: str, detail) -> None:
        detail_text = "; ".join(detail) if isinstance(detail, list) else str(detail)
        super().__init__(f"{status} {error}: {detail_text}")
        self.status = status
        self.error = error
        self.detail = detail


def token_from(token_file: str | os.PathLike | None = None) -> str | None:
    """The token: ``EMI_TOKEN``, else the first token of ``token_file``."""
    if os.environ.get("EMI_TOKEN"):
        return os.environ["EMI_TOKEN"].strip()
    if token_file is None:
        return None
    lines = [t.strip() for t in Path(token_file).read_text().splitlines()]
    return next((t for t in lines if t and not t.startswith("#")), None)


class ServiceClient:
    """Calls of the service's API; each raises :class:`ServiceError` on a refusal and
    ``httpx.HTTPError`` where the service cannot be reached."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: the httpx client to send through (None: a new one to ``server``;
        an app's ``TestClient``, in its process)."""
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(base_url=server.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        answer = self.http.request(method, path, headers=headers, **kwargs)
        if answer.status_code >= 400:
            try:
                body = answer.json()
                error, detail = body.get("error", "error"), body.get("detail", "")
            except ValueError:
                error, detail = "error", answer.text[:500]
            raise ServiceError(answer.status_code, error, detail)
        return answer

    def submit(self, request: dict, *, idempotency_key: str | None = None) -> dict:
        """Queue a job (``{"kind": "score" | "extract" | "train", ...}``); the job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=request, headers=headers).json()

    def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> dict:
        """A page of jobs, newest first: ``{"jobs": [...], "next": cursor or None}``."""
        params = {"state": state, "kind": kind, "limit": limit, "before": before}
        params = {k: v for k, v in params.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params).json()

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def wait(
        self,
        job_id: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[dict], None] | None = None,
        unreachable_s: float = RESTART_GRACE_S,
    ) -> dict:
        """Poll until the job ends; returns it (``TimeoutError`` after ``timeout_s``).

        A service that cannot be reached, or answers 502-504 (restarting, or behind a
        proxy while it restarts), is asked again for up to ``unreachable_s`` in a row:
        its jobs resume after a restart, so the wait goes on; past that, the last error
        is raised."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while True:
            try:
                job = self.job(job_id)
            except (httpx.TransportError, ServiceError) as err:
                restarting = not isinstance(err, ServiceError) or err.status in (502, 503, 504)
                if not restarting or time.monotonic() - last_seen > unreachable_s:
                    raise
                time.sleep(poll_s)
                continue
            last_seen = time.monotonic()
            if on_update is not None:
                on_update(job)
            if job["state"] in FINISHED_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout_s} s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel").json()

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def predictions_csv(self, job_id: str) -> str:
        return self._call("GET", f"/v1/jobs/{job_id}/predictions.csv").text

    def predictions(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/predictions.json").json()

    def failures(self, job_id: str, *, page_size: int = 1000) -> list[dict]:
        """Every failed clip listed for a job (``clip_id``, ``path``, ``reason``)."""
        found, after = [], None
        while True:
            params = {"limit": page_size, **({"after": after} if after else {})}
            page = self._call("GET", f"/v1/jobs/{job_id}/failures", params=params).json()
            found += page["failures"]
            after = page["next"]
            if after is None:
                return found

    def upload(self, paths: Iterable[str | os.PathLike]) -> dict:
        """Upload files (or one archive); the upload (its ``id`` is a job's source)."""
        handles = [open(p, "rb") for p in paths]  # noqa: SIM115 (closed below)
        try:
            files = [("files", (Path(h.name).name, h)) for h in handles]
            return self._call("POST", "/v1/uploads", files=files, timeout=None).json()
        finally:
            for handle in handles:
                handle.close()

    def heads(self) -> list[dict]:
        return self._call("GET", "/v1/heads").json()["heads"]

    def stores(self) -> list[dict]:
        return self._call("GET", "/v1/stores").json()["stores"]

    def health(self) -> dict:
        return self._call("GET", "/healthz").json()
