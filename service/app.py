"""The HTTP app of ``emi serve`` (FastAPI; its OpenAPI document at ``/openapi.json``,
pages at ``/docs``).

Every answer is JSON; an error is ``{"error": <short>, "detail": <what to do>}`` and
never a traceback. With tokens, every route but ``/healthz`` needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.callbacks import CallbackSender
from service.config import ServiceConfig
from service.errors import RequestError, bad_request, conflict, not_found
from service.jobs import FINAL, KINDS, STATES, JobTable, new_job_id
from service.metrics import ServiceMetrics
from service.registry import release_head, reserve_head
from service.requests import FailurePage, JobPage, JobRequest, JobView
from service.retention import Sweeper
from service.runner import JobRunner
from service.state import StateFolder

log = logging.getLogger("emi.service")
OPEN_PATHS = ("/healthz", "/readyz", "/")  # and /static/*: they hold no data
PROBE_PATHS = ("/healthz", "/readyz")  # answered whatever the Host (a kubelet sends its IP)
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_PATH = "/v1/uploads"
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def _error(status: int, error: str, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _host_name(value: str) -> str:
    """The host of a ``Host`` header or an origin's authority, without the port, lower
    case (``[::1]:8000`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware, in order: the ``Host`` a request names (a rebinding name is
    refused), the ``Origin`` of state-changing requests (another site's page is
    refused), bearer tokens (constant-time), the JSON body size limit (uploads have
    their own limits); and the headers that keep the page out of other sites' frames."""

    def __init__(self, app, config: ServiceConfig) -> None:
        self.app = app
        self.config = config
        self.tokens = [t.encode() for t in config.tokens]
        self.hosts = config.allowed_host_names()

    def _authorized(self, headers: dict) -> bool:
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # every token compared, in constant time
        return any([hmac.compare_digest(token.strip(), t) for t in self.tokens])

    def _refusal(self, scope, headers: dict) -> JSONResponse | None:
        """Why a request is refused before the app sees it; None where it may go on."""
        path = scope.get("path", "")
        host = headers.get(b"host", b"").decode("latin-1")
        named = self.hosts is None or _host_name(host) in self.hosts
        if path not in PROBE_PATHS and not named:
            return _error(
                400,
                "bad host",
                "this service answers only requests naming it by an allowed host name "
                "(the operator adds names with --allowed-host)",
            )
        origin = headers.get(b"origin")
        if scope.get("method") in STATE_CHANGING and origin is not None:
            netloc = origin.decode("latin-1").partition("://")[2]
            same = netloc.lower() == host.lower() or (
                self.hosts is not None and _host_name(netloc) in self.hosts
            )
            if not same:
                return _error(
                    403,
                    "forbidden",
                    "a page of another site may not change this service's jobs or uploads "
                    "(Origin is not the service's own)",
                )
        open_path = path in OPEN_PATHS or path.startswith("/static/")
        if self.tokens and not open_path and not self._authorized(headers):
            return _error(
                401,
                "unauthorized",
                "give 'Authorization: Bearer <token>' with a token of the service's token file",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = dict(scope.get("headers") or [])
        refused = self._refusal(scope, headers)
        if refused is not None:
            return await refused(scope, receive, secured)
        path = scope.get("path", "")
        if path.startswith(UPLOAD_PATH) or scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, secured)
        await self._limited(scope, receive, secured, headers)

    async def _limited(self, scope, receive, send, headers: dict) -> None:
        """The app with the JSON body limit: over it, 413 at once."""
        limit = self.config.max_body_bytes
        length = headers.get(b"content-length")
        too_large = _error(
            413, "too large", f"the request body is over the limit of {limit:,} bytes"
        )
        if length is not None and length.isdigit() and int(length) > limit:
            return await too_large(scope, receive, send)
        state = {"bytes": 0, "answered": False}

        async def counted():
            if state["answered"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > limit:  # answer now; the app sees a disconnect
                    await too_large(scope, receive, send)
                    state["answered"] = True
                    return {"type": "http.disconnect"}
            return message

        async def watched(message):
            if not state["answered"]:
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not state["answered"]:  # the app's own error: its handlers answered it
                raise


class Service:
    """What the routes share: settings, table, runner, callbacks, metrics."""

    def __init__(self, config: ServiceConfig, state: StateFolder) -> None:
        self.config = config
        self.state = state
        self.table = JobTable(state.database)
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
        self.sweeper = Sweeper(config, self.table)
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

        for leftover in sweep_partial_uploads(self.config):
            log.info("removed %s, an upload cut off when the service stopped", leftover)
        self.callbacks.start()
        self.runner.start()
        self.sweeper.start()

    def stop(self) -> None:
        log.info("stopping: no new jobs; running jobs stop after their current part")
        self.sweeper.stop()
        self.runner.stop()
        self.callbacks.stop()  # before the table closes: their state is written there
        self.table.close()

    def check_request(self, body: dict) -> None:
        """Everything a job needs that can be checked before it is queued: sources
        inside the roots, heads in the registry, store names, label files."""
        from service.registry import check_store_name, head_folder, store_exists
        from service.sources import resolve_file, resolve_source

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
        if kind == "score":
            for name in body["heads"]:
                head_folder(config, name)
        if kind == "train":
            if not store_exists(config.store_location(body["store"])):
                raise not_found(f"store {body['store']!r} not found; GET /v1/stores")
            if body.get("grid") is not None and body.get("preset") is not None:
                raise bad_request("give preset or grid, not both")
            resolve_file(config, body["labels"], what="labels", suffix=".csv")
            resolve_file(config, body["val_labels"], what="val_labels", suffix=".csv")
            # the head's name is claimed (or refused, 409) by reserve_head at submit


def create_app(config: ServiceConfig, state: StateFolder) -> FastAPI:
    """The app over ``state`` (already held by this process)."""
    service = Service(config, state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="emi",
        summary="Emotional mimicry intensity: score, extract and train jobs over HTTP",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return _error(err.status, err.error, err.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        details = []
        for e in err.errors():
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "")
                return _error(422, "invalid request", f"the body is not valid JSON ({reason})")
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            details.append(f"{where or 'body'}: {e.get('msg')}")
        return _error(422, "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        label = {404: "not found", 405: "method not allowed"}.get(err.status_code, "error")
        return _error(err.status_code, label, str(err.detail))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect):
        # the client left (or the body was refused as too large): nobody reads this
        return _error(400, "bad request", "the client disconnected before the body ended")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal error", "the service logged what went wrong; retry later")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        """The page: heads, a score form, the jobs (it asks for the token if needed)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/v1/service", tags=["registry"])
    def about() -> dict:
        """The upload limits, how long uploads and results are kept, and the source
        roots (what a client may send)."""
        from service.uploads import kept_bytes

        return {
            "limits": {
                "max_file_bytes": config.max_file_bytes,
                "max_request_bytes": config.max_request_bytes,
                "max_files": config.max_files,
                "max_body_bytes": config.max_body_bytes,
                "max_archive_ratio": config.max_archive_ratio,
                "upload_quota_bytes": config.upload_quota_bytes,
                "uploads_kept_bytes": kept_bytes(config),
            },
            "keep_days": config.keep_days,
            "source_roots": config.source_roots,
            "callbacks": config.callback_secret is not None,
        }

    @app.get("/v1/sources", tags=["registry"])
    def sources(path: Annotated[str | None, Query(max_length=4096)] = None) -> dict:
        """The folders below the source roots: no ``path``, the roots; else the folders
        in ``path`` and its count of audio files (never anything outside the roots)."""
        from service.sources import list_folder

        return list_folder(config, path)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        """The process is up (needs no token)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz():
        """Ready for jobs: the stores readable, the dask cluster reachable, the job
        threads running (needs no token; says no more than that, the log has why)."""
        from service.registry import store_names

        checks = {}
        try:
            store_names(config)
            checks["stores"] = "readable"
        except Exception as err:
            log.warning("readyz: the stores are not readable: %s", err)
            checks["stores"] = "unreadable"
        ready, words = service.runner.cluster_status()
        checks["cluster"] = words if ready else words.split(":", 1)[0]
        threads = service.runner.threads_alive()
        checks["jobs"] = "running" if threads else "stopped"
        ok = ready and threads and checks["stores"] == "readable"
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics():
        """Prometheus text: jobs by kind and state, clips, audio seconds, durations."""
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/stores", tags=["registry"])
    def stores() -> dict:
        """The managed stores: name, feature sets, clips, hours, size."""
        from service.registry import list_stores

        return {"stores": list_stores(config)}

    @app.get("/v1/heads", tags=["registry"])
    def heads() -> dict:
        """The head registry, best validation mean Pearson first."""
        from service.registry import list_heads

        return {"heads": list_heads(config)}

    @app.post("/v1/jobs", status_code=202, response_model=JobView, tags=["jobs"])
    def submit(
        body: Annotated[JobRequest, Body()],
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ):
        """Queue a score, extract or train job (202, with the job). The same
        ``Idempotency-Key`` and body return the same job; another body is refused (409)."""
        request = body.model_dump(exclude_none=True)
        # the same key at once (a client's retries racing): one of them makes the job,
        # the others find it
        with service.key_lock(idempotency_key):
            job, new = _submit_once(request, body.kind, idempotency_key)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if new:
            log.info("job %s %s: queued", job.id, job.kind)
            service.runner.wake()
        else:
            response.headers["Idempotent-Replayed"] = "true"
        return job.to_api()

    def _submit_once(request: dict, kind: str, idempotency_key: str | None):
        """The job of ``idempotency_key`` (same body), else a new one: (job, new)."""
        if idempotency_key is not None:
            found = service.table.by_key(idempotency_key)
            if found is not None:
                from service.jobs import body_digest

                job, digest = found
                if digest != body_digest(request):
                    raise conflict(
                        f"Idempotency-Key {idempotency_key!r} was used for another request; "
                        "use a new key for a new job"
                    )
                return job, False
        service.check_request(request)
        job_id = new_job_id()
        if kind == "train":  # the name is the job's from now on
            reserve_head(config, request["name"], job_id)
        try:
            job, new = service.table.add(
                kind, request, idempotency_key=idempotency_key, job_id=job_id
            )
        except KeyError:
            if kind == "train":
                release_head(config, request["name"], job_id)
            raise conflict(
                f"Idempotency-Key {idempotency_key!r} was used for another request"
            ) from None
        if not new and kind == "train":
            release_head(config, request["name"], job_id)
        return job, new

    @app.get("/v1/jobs", response_model=JobPage, tags=["jobs"])
    def jobs(
        state: Annotated[str | None, Query(description=f"one of {', '.join(STATES)}")] = None,
        kind: Annotated[str | None, Query(description=f"one of {', '.join(KINDS)}")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[str | None, Query(description="the 'next' of the page before")] = None,
    ):
        """Jobs, newest first, a page at a time."""
        if state is not None and state not in STATES:
            raise bad_request(f"state must be one of {', '.join(STATES)}, not {state!r}")
        if kind is not None and kind not in KINDS:
            raise bad_request(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if before is not None and not (
            before.isascii() and before.isdigit() and 0 < int(before) < 2**63
        ):
            raise bad_request("before: give the 'next' value of the previous page")
        page, cursor = service.table.list(
            state=state, kind=kind, limit=limit, before=int(before) if before else None
        )
        return {"jobs": [j.to_api() for j in page], "next": str(cursor) if cursor else None}

    def _job(job_id: str):
        job = service.table.get(job_id)
        if job is None:
            raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
        return job

    @app.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def job(job_id: str):
        """One job: state, progress, failed clips with their reasons, result."""
        return _job(job_id).to_api()

    @app.get("/v1/jobs/{job_id}/failures", response_model=FailurePage, tags=["jobs"])
    def failures(
        job_id: str,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(description="the 'next' of the page before")] = None,
    ):
        """A job's failed clips with their reasons, a page at a time."""
        listed = service.table.failures(job_id)
        if listed is None:
            raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
        if after is not None and not (after.isascii() and after.isdigit() and len(after) < 10):
            raise bad_request("after: give the 'next' value of the previous page")
        start = int(after or 0)
        page = listed[start : start + limit]
        following = str(start + limit) if start + limit < len(listed) else None
        return {"failures": page, "total": len(listed), "next": following}

    def _result_file(job_id: str, name: str):
        found = _job(job_id)
        if found.kind != "score":
            raise not_found(f"job {job_id} is a {found.kind} job; only score jobs predict")
        partial = bool((found.result or {}).get("partial"))
        if found.state != "succeeded" and not (found.final and partial):
            raise conflict(
                f"job {job_id} is {found.state}; predictions come once it succeeds (a "
                "cancelled or failed job keeps those of the clips it finished)"
            )
        path = config.state / "results" / job_id / name
        if not path.is_file():
            raise not_found(
                f"job {job_id}: its results were removed (past the service's keep_days, "
                "GET /v1/service)"
            )
        return path, partial

    @app.get("/v1/jobs/{job_id}/predictions.csv", tags=["jobs"], response_class=FileResponse)
    def predictions_csv(job_id: str):
        """The predictions as ``emi score`` writes them; a cancelled or failed job's are
        of the clips it finished, marked ``Emi-Partial: true``."""
        path, partial = _result_file(job_id, "predictions.csv")
        return FileResponse(
            path,
            media_type="text/csv",
            filename=f"{job_id}{'-partial' if partial else ''}.csv",
            headers={"Emi-Partial": "true" if partial else "false"},
        )

    @app.get("/v1/jobs/{job_id}/predictions.json", tags=["jobs"])
    def predictions_json(job_id: str):
        """The predictions as JSON rows, and the clips that failed."""
        found = _job(job_id)
        path, partial = _result_file(job_id, "predictions.json")
        data = json.loads(path.read_text())
        return {"job": job_id, **data, "partial": partial, "failures": found.failures}

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobView, tags=["jobs"])
    def cancel(job_id: str):
        """A queued job never starts; a running one stops after its current part (what it
        committed stays stored) and ends ``cancelled``."""
        before = _job(job_id)
        job = service.table.request_cancel(job_id)
        if job is None:
            raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
        if before.state == "queued" and job.state == "cancelled":
            log.info("job %s %s: queued -> cancelled", job.id, job.kind)
            service.runner.ended(job, "cancelled")
        return job.to_api()

    @app.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete(job_id: str):
        """Forget a finished job and its results (store features are never removed)."""
        found = _job(job_id)
        if found.state not in FINAL:
            raise conflict(f"job {job_id} is {found.state}; cancel it and wait for it to end")
        shutil.rmtree(config.state / "results" / job_id, ignore_errors=True)
        service.table.delete(job_id)
        return Response(status_code=204)

    @app.post("/v1/uploads", status_code=201, tags=["uploads"])
    async def upload(request: Request):
        """Upload audio or video files, label CSVs, or one zip/tar archive
        (multipart/form-data); name the upload's id as a job's source or labels."""
        from service.uploads import receive_upload

        length = request.headers.get("content-length")
        return await receive_upload(
            config,
            request.headers.get("content-type", ""),
            int(length) if length and length.isdigit() else None,
            request.stream(),
        )

    @app.delete("/v1/uploads/{upload_id}", status_code=204, tags=["uploads"])
    def delete_upload(upload_id: str):
        """Remove an upload's files."""
        from service.uploads import delete_upload as remove

        remove(config, upload_id)
        return Response(status_code=204)

    return Guard(app, config)
