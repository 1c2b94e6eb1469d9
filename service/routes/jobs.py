"""``/v1/jobs``: submit jobs of the service's kinds (score, extract, train:
:mod:`service.kinds`), follow them, read their failed clips and predictions, cancel
and forget them. The routes are made for a registry of kinds (:func:`jobs_router`), so
the request bodies and job views of the OpenAPI document are the kinds' own models."""

import logging
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response, Security
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, create_model

from service.api_docs import READS, WRITES, CSVResponse, errors
from service.auth import bearer
from service.errors import bad_request, conflict, not_found
from service.jobs import Job, JobState
from service.kinds import KindRegistry
from service.requests import ClipView, FailurePage, PredictionPage, PredictionsView
from service.results import remove_results, results_file
from service.runtime import Served, Service

log = logging.getLogger("emi.service")
Cursor = Annotated[str | None, Query(max_length=32, description="the 'next' of the page before")]


def jobs_router(kinds: KindRegistry) -> APIRouter:
    """The job routes for ``kinds``."""
    router = APIRouter(tags=["jobs"], dependencies=[Security(bearer)])
    JobRequest: Any = kinds.request_model()  # noqa: N806 (types made for these kinds)
    JobView: Any = kinds.view_model()  # noqa: N806
    JobPage = create_model(  # noqa: N806
        "JobPage",
        __base__=BaseModel,
        jobs=(list[JobView], ...),
        next=(str | None, Field(description="the cursor of the next page (?before=...)")),
    )
    KindName: Any = Literal[kinds.names]  # noqa: N806

    @router.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobView,
        responses=errors(*WRITES, 404, 409, 503),
        callbacks=kinds.callback_routes(),
    )
    def submit_job(
        service: Served,
        body: Annotated[JobRequest, Body()],
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ):
        """Queue a job of any kind (202, with the job). The same ``Idempotency-Key``
        and body return the same job (also for retries sent at once); another body is
        refused (409)."""
        job, new = service.submit(body, idempotency_key)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if not new:
            response.headers["Idempotent-Replayed"] = "true"
        return kinds.view(job)

    @router.get("/v1/jobs", response_model=JobPage, responses=errors(*READS, 422))
    def list_jobs(
        service: Served,
        state: JobState | None = None,
        kind: KindName | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Cursor = None,
    ):
        """Jobs, newest first, a page at a time (each with its count of failed clips)."""
        if before is not None and not (
            before.isascii() and before.isdigit() and 0 < int(before) < 2**63
        ):
            raise bad_request("before: give the 'next' value of the previous page")
        page, cursor = service.table.list(
            state=state, kind=kind, limit=limit, before=int(before) if before else None
        )
        return {"jobs": [kinds.view(j) for j in page], "next": str(cursor) if cursor else None}

    @router.get("/v1/jobs/{job_id}", response_model=JobView, responses=errors(*READS, 404))
    def get_job(service: Served, job_id: str):
        """One job: state, progress, counts, result, error, callback."""
        return kinds.view(_job(service, job_id))

    @router.post(
        "/v1/jobs/{job_id}/cancel",
        status_code=202,
        response_model=JobView,
        responses=errors(*WRITES, 404, 409),
    )
    def cancel_job(service: Served, job_id: str):
        """A queued job never starts; a running one goes ``cancelling`` and stops
        within seconds, after the batch it is on (what it finished stays stored; a
        score job's predictions of those clips are kept, partial), then ends
        ``cancelled``. A finished job cannot be cancelled (409)."""
        return kinds.view(service.cancel(job_id))

    _add_reading_routes(router)
    return router


def _add_reading_routes(router: APIRouter) -> None:
    """The routes that read a job's failures and predictions, and forget it."""
    router.add_api_route(
        "/v1/jobs/{job_id}/failures",
        job_failures,
        methods=["GET"],
        response_model=FailurePage,
        responses=errors(*READS, 404, 422),
    )
    router.add_api_route(
        "/v1/jobs/{job_id}/predictions.csv",
        predictions_csv,
        methods=["GET"],
        response_class=CSVResponse,
        responses={
            200: {
                "content": {"text/csv": {"schema": {"type": "string"}}},
                "description": "clip_id and one column per target",
            },
            **errors(*READS, 404, 409),
        },
    )
    router.add_api_route(
        "/v1/jobs/{job_id}/predictions.json",
        predictions_json,
        methods=["GET"],
        response_model=PredictionsView,
        responses=errors(*READS, 404, 409),
    )
    router.add_api_route(
        "/v1/jobs/{job_id}/predictions",
        prediction_page,
        methods=["GET"],
        response_model=PredictionPage,
        responses=errors(*READS, 400, 404, 409, 422),
    )
    router.add_api_route(
        "/v1/jobs/{job_id}/clip",
        clip_of_job,
        methods=["GET"],
        response_model=ClipView,
        responses=errors(*READS, 404, 409, 422),
    )
    router.add_api_route(
        "/v1/jobs/{job_id}/clip/audio",
        clip_audio,
        methods=["GET"],
        response_class=Response,
        responses={
            200: {"content": AUDIO_CONTENT, "description": "the clip's file"},
            206: {"content": AUDIO_CONTENT, "description": "the bytes of the Range asked for"},
            **errors(*READS, 403, 404, 409, 416, 422),
        },
    )
    router.add_api_route(
        "/v1/jobs/{job_id}",
        delete_job,
        methods=["DELETE"],
        status_code=204,
        responses=errors(*WRITES, 404, 409),
    )


def _job(service: Service, job_id: str) -> Job:
    job = service.table.get(job_id)
    if job is None:
        raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
    return job


def job_failures(
    service: Served,
    job_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Cursor = None,
):
    """A job's failed clips with their reasons, a page at a time."""
    listed = service.table.failures(job_id)
    if listed is None:
        raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
    if after is not None and not (after.isascii() and after.isdigit() and len(after) < 10):
        raise bad_request("after: give the 'next' value of the previous page")
    start = int(after or 0)
    following = str(start + limit) if start + limit < len(listed) else None
    return {"failures": listed[start : start + limit], "total": len(listed), "next": following}


def _result_file(service: Service, job_id: str, name: str):
    """A score job's results file, and whether its predictions are partial (a job
    cancelled or failed keeps those of the clips it finished)."""
    found = _job(service, job_id)
    if found.kind != "score":
        raise not_found(f"job {job_id} is a {found.kind} job; only score jobs predict")
    partial = bool(getattr(found.result, "partial", False))
    if found.state is not JobState.succeeded and not (found.final and partial):
        raise conflict(
            f"job {job_id} is {found.state}; predictions come once it succeeds (a "
            "cancelled or failed job keeps those of the clips it finished)"
        )
    path = results_file(service.config, job_id, name)
    if not path.is_file():
        raise not_found(
            f"job {job_id}: its results were removed (past the service's keep_days, "
            "GET /v1/service)"
        )
    return path, partial


def predictions_csv(service: Served, job_id: str):
    """The predictions as ``emi score`` writes them; a cancelled or failed job's are of
    the clips it finished, marked ``Emi-Partial: true``."""
    path, partial = _result_file(service, job_id, "predictions.csv")
    return CSVResponse(
        path,
        filename=f"{job_id}{'-partial' if partial else ''}.csv",
        headers={"Emi-Partial": "true" if partial else "false"},
    )


def prediction_page(
    service: Served,
    job_id: str,
    head: Annotated[str | None, Query(max_length=256, description="default: the first")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    sort: Annotated[str, Query(max_length=256, description="clip_id or a target")] = "clip_id",
    order: Literal["asc", "desc"] = "asc",
    clip: Annotated[str | None, Query(max_length=256, description="clip ids containing")] = None,
):
    """One head's predictions a page at a time: filtered by clip id (``clip``, any
    case), sorted by a column (unscored values last), and each target's distribution
    over all the job's clips."""
    from service.prediction_pages import prediction_page as page_of
    from service.prediction_pages import read_rows

    path, partial = _result_file(service, job_id, "predictions.json")
    heads = list(_job(service, job_id).request.heads)
    found = page_of(read_rows(path), heads, head=head, offset=offset, limit=limit,
                    sort=sort, order=order, clip=clip)  # fmt: skip
    return {"job": job_id, **found, "partial": partial}


# audio of the file's type (audio/wav, audio/flac, ...); octet-stream first, the binary
# type generated clients (openapi-python-client) read as bytes
_BINARY = {"schema": {"type": "string", "format": "binary"}}
AUDIO_CONTENT = {"application/octet-stream": _BINARY, "audio/*": _BINARY, "video/*": _BINARY}
ClipId = Annotated[str, Query(min_length=1, max_length=1024, description="a clip id of the job")]
AUDIO_CHUNK = 1 << 20  # bytes read at a time
MAX_RANGE = 16 << 20  # bytes answered to one range request at most


def clip_of_job(service: Served, job_id: str, clip_id: ClipId):
    """One clip of a score job: its file, its frame-level valence, arousal and
    dominance over time (from the store) and every head's intensities."""
    from service.clip_views import clip_view
    from service.prediction_pages import head_columns, read_rows

    path, _ = _result_file(service, job_id, "predictions.json")
    job = _job(service, job_id)
    heads = list(job.request.heads)
    rows = read_rows(path)
    row = next((r for r in rows if r["clip_id"] == clip_id), None)
    predictions = (
        {}
        if row is None
        else {h: {t: row.get(c) for t, c in head_columns(rows, heads, h).items()} for h in heads}
    )
    return clip_view(service.config, job, clip_id, predictions)


def clip_audio(service: Served, job_id: str, clip_id: ClipId, request: Request):
    """A score job's clip's audio, read beneath its source root or upload: the whole
    file, or the one byte range a ``Range`` header asks for (206)."""
    from service.clip_views import byte_range, open_clip_audio

    _result_file(service, job_id, "predictions.json")  # a job the predictions of which are readable
    fd, size, media = open_clip_audio(service.config, job_id, clip_id)
    try:
        wanted = byte_range(request.headers.get("range"), size)
    except Exception:
        os.close(fd)
        raise
    if wanted is not None:
        first, last = wanted[0], min(wanted[1], wanted[0] + MAX_RANGE - 1)
        try:
            body = os.pread(fd, last - first + 1, first)
        finally:
            os.close(fd)
        return Response(body, status_code=206, media_type=media, headers={
            "Content-Range": f"bytes {first}-{first + len(body) - 1}/{size}",
            "Accept-Ranges": "bytes"})  # fmt: skip

    def chunks():
        try:
            offset = 0
            while offset < size:
                data = os.pread(fd, min(AUDIO_CHUNK, size - offset), offset)
                if not data:
                    break
                offset += len(data)
                yield data
        finally:
            os.close(fd)

    return StreamingResponse(chunks(), media_type=media, headers={
        "Content-Length": str(size), "Accept-Ranges": "bytes"})  # fmt: skip


def predictions_json(service: Served, job_id: str):
    """The predictions as JSON rows (``partial`` for a cancelled or failed job)."""
    from service.prediction_pages import read_rows

    path, partial = _result_file(service, job_id, "predictions.json")
    return {"job": job_id, "predictions": read_rows(path), "partial": partial}


def delete_job(service: Served, job_id: str):
    """Forget a finished job and its results (store features are never removed)."""
    found = _job(service, job_id)
    if not found.final:
        raise conflict(f"job {job_id} is {found.state}; cancel it and wait for it to end")
    remove_results(service.config, job_id)
    if not service.table.delete(job_id):
        raise conflict(f"job {job_id} is not finished; cancel it and wait for it to end")
    return Response(status_code=204)
