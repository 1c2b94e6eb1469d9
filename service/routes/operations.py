"""Probes and metrics: ``/healthz`` and ``/readyz`` (open, data-free: a deployment's
probes need no token), ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from service.api_docs import READS, errors
from service.auth import bearer
from service.runtime import Served

log = logging.getLogger("emi.service")
router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


@router.get("/healthz", response_model=Health, responses=errors(503))
def healthz(service: Served):
    """The process is up and can recover by itself (needs no token). 503 where it
    cannot (a job thread or a watch died): a restart is what helps then."""
    why = service.unrecoverable()
    if why is None:
        return {"status": "ok"}
    log.error("healthz: %s; the service needs a restart", why)
    return JSONResponse({"status": "unrecoverable"}, status_code=503)


@router.get("/readyz", response_model=Readiness, responses=errors(503))
def readyz(service: Served):
    """Ready for jobs: the stores readable, the dask cluster reachable with workers,
    the job threads running, the state folder writable with its reserve in place
    (needs no token; says no more than that, the log has why). Answers at once, from
    checks run in the background every 2 s: a hanging dependency is "no answer for N
    s", never a slow probe."""
    ready, checks = service.readiness()
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Security(bearer)],
    responses=errors(*READS),
)
def metrics(service: Served):
    """Prometheus text: jobs by kind and state, clips, audio seconds, durations."""
    return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")
