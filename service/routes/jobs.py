"""``/v1/jobs``: submit score, extract and train jobs, follow them, read their failed
clips and predictions, cancel and forget them."""

from __future__ import annotations

import json
import logging
import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Response, Security

from service.api_docs import READS, WRITES, CSVResponse, bearer, errors
from service.errors import bad_request, conflict, not_found
from service.jobs import FINAL, KINDS, STATES, Job, new_job_id
from service.registry import release_head, reserve_head
from service.requests import FailurePage, JobPage, JobRequest, JobView, PredictionsView
from service.runtime import Service, service_of

log = logging.getLogger("emi.service")
router = APIRouter(tags=["jobs"], dependencies=[Security(bearer)])
Served = Annotated[Service, Depends(service_of)]
Cursor = Annotated[str | None, Query(max_length=32, description="the 'next' of the page before")]


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    responses=errors(*WRITES, 404, 409, 503),
)
def submit_job(
    service: Served,
    body: Annotated[JobRequest, Body()],
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    """Queue a score, extract or train job (202, with the job). The same
    ``Idempotency-Key`` and body return the same job (also for retries sent at once);
    another body is refused (409)."""
    request = body.model_dump(exclude_none=True)
    with service.key_lock(idempotency_key):  # racing retries: one makes it, others find it
        job, new = _submit_once(service, request, body.kind, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if new:
        log.info("job %s %s: queued", job.id, job.kind)
        service.runner.wake()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return job.to_api()


def _submit_once(service: Service, request: dict, kind: str, key: str | None) -> tuple[Job, bool]:
    """The job of ``key`` (same body), else a new one: (job, new)."""
    from service.jobs import body_digest

    taken = conflict(f"Idempotency-Key {key!r} was used for another request; use a new key")
    if key is not None:
        found = service.table.by_key(key)
        if found is not None:
            if found[1] != body_digest(request):
                raise taken
            return found[0], False
    service.check_request(request)
    job_id = new_job_id()
    if kind == "train":  # the name is the job's from now on
        reserve_head(service.config, request["name"], job_id)
    try:
        job, new = service.table.add(kind, request, idempotency_key=key, job_id=job_id)
    except KeyError:
        new = False
        raise taken from None
    finally:
        if kind == "train" and not new:
            release_head(service.config, request["name"], job_id)
    return job, new


@router.get("/v1/jobs", response_model=JobPage, responses=errors(*READS, 422))
def list_jobs(
    service: Served,
    state: Literal[STATES] | None = None,
    kind: Literal[KINDS] | None = None,
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
    return {"jobs": [j.to_api() for j in page], "next": str(cursor) if cursor else None}


def _job(service: Service, job_id: str) -> Job:
    job = service.table.get(job_id)
    if job is None:
        raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
    return job


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses=errors(*READS, 404))
def get_job(service: Served, job_id: str):
    """One job: state, progress, counts, result, error, callback."""
    return _job(service, job_id).to_api()


@router.get(
    "/v1/jobs/{job_id}/failures", response_model=FailurePage, responses=errors(*READS, 404, 422)
)
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
    partial = bool((found.result or {}).get("partial"))
    if found.state != "succeeded" and not (found.final and partial):
        raise conflict(
            f"job {job_id} is {found.state}; predictions come once it succeeds (a "
            "cancelled or failed job keeps those of the clips it finished)"
        )
    path = service.config.state / "results" / job_id / name
    if not path.is_file():
        raise not_found(
            f"job {job_id}: its results were removed (past the service's keep_days, "
            "GET /v1/service)"
        )
    return path, partial


@router.get(
    "/v1/jobs/{job_id}/predictions.csv",
    response_class=CSVResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}},
              "description": "clip_id and one column per target"},
        **errors(*READS, 404, 409),
    },
)  # fmt: skip
def predictions_csv(service: Served, job_id: str):
    """The predictions as ``emi score`` writes them; a cancelled or failed job's are of
    the clips it finished, marked ``Emi-Partial: true``."""
    path, partial = _result_file(service, job_id, "predictions.csv")
    return CSVResponse(
        path,
        filename=f"{job_id}{'-partial' if partial else ''}.csv",
        headers={"Emi-Partial": "true" if partial else "false"},
    )


@router.get(
    "/v1/jobs/{job_id}/predictions.json",
    response_model=PredictionsView,
    responses=errors(*READS, 404, 409),
)
def predictions_json(service: Served, job_id: str):
    """The predictions as JSON rows (``partial`` for a cancelled or failed job)."""
    path, partial = _result_file(service, job_id, "predictions.json")
    data = json.loads(path.read_text())
    return {"job": job_id, "predictions": data["predictions"], "partial": partial}


@router.post(
    "/v1/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobView,
    responses=errors(*WRITES, 404),
)
def cancel_job(service: Served, job_id: str):
    """A queued job never starts; a running one stops within seconds, after the batch
    it is on (what it finished stays stored; a score job's predictions of those clips
    are kept, partial) and ends ``cancelled``."""
    before = _job(service, job_id)
    job = service.table.request_cancel(job_id)
    if job is None:
        raise not_found(f"job {job_id!r} not found; GET /v1/jobs lists them")
    if before.state == "queued" and job.state == "cancelled":
        log.info("job %s %s: queued -> cancelled", job.id, job.kind)
        service.runner.ended(job, "cancelled")
    return job.to_api()


@router.delete("/v1/jobs/{job_id}", status_code=204, responses=errors(*WRITES, 404, 409))
def delete_job(service: Served, job_id: str):
    """Forget a finished job and its results (store features are never removed)."""
    found = _job(service, job_id)
    if found.state not in FINAL:
        raise conflict(f"job {job_id} is {found.state}; cancel it and wait for it to end")
    shutil.rmtree(service.config.state / "results" / job_id, ignore_errors=True)
    service.table.delete(job_id)
    return Response(status_code=204)
