"""Probes and metrics: ``/healthz`` and ``/readyz`` (open, data-free: a deployment's
probes need no token), ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from service.api_docs import READS, bearer, errors
from service.runtime import Service, service_of

log = logging.getLogger("emi.service")
router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
def healthz() -> dict:
    """The process is up (needs no token)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses=errors(503))
def readyz(service: Annotated[Service, Depends(service_of)]):
    """Ready for jobs: the stores readable, the dask cluster reachable, the job threads
    running, the state folder writable with its reserve in place (needs no token; says
    no more than that, the log has why)."""
    from service.registry import store_names

    checks = {}
    try:
        store_names(service.config)
        checks["stores"] = "readable"
    except Exception as err:
        log.warning("readyz: the stores are not readable: %s", err)
        checks["stores"] = "unreadable"
    ready, words = service.runner.cluster_status()
    checks["cluster"] = words if ready else words.split(":", 1)[0]
    threads = service.runner.threads_alive()
    checks["jobs"] = "running" if threads else "stopped"
    writable = service.state.writable()
    checks["state"] = "writable" if writable else "full"
    ok = ready and threads and writable and checks["stores"] == "readable"
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Security(bearer)],
    responses=errors(*READS),
)
def metrics(service: Annotated[Service, Depends(service_of)]):
    """Prometheus text: jobs by kind and state, clips, audio seconds, durations."""
    return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")
