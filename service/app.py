"""The HTTP app of ``emi serve`` (FastAPI; its OpenAPI document at ``/openapi.json``,
its pages at ``/docs`` and ``/redoc``, served from the package with no outside request).

Every answer is JSON, CSV or the page; an error is ``{"error": <short>, "detail": <what
to do>}`` and never a traceback. With tokens, every route but the page, the probes and
the API's description needs ``Authorization: Bearer <token>`` (:mod:`service.auth`).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api_docs import describe, operation_id
from service.config import ServiceConfig
from service.errors import RequestError
from service.guard import Guard, error_response
from service.kinds import KINDS, KindRegistry
from service.metrics import RequestMetrics
from service.redoc_page import add_redoc
from service.routes import operations, page, registry, uploads
from service.routes.jobs import jobs_router
from service.runtime import Service
from service.state import StateFolder

log = logging.getLogger("emi.service")
LABELS = {400: "bad request", 404: "not found", 405: "method not allowed"}


def create_app(
    config: ServiceConfig, state: StateFolder, kinds: KindRegistry = KINDS
) -> RequestMetrics:
    """The app over ``state`` (already held by this process) running jobs of ``kinds``,
    behind its guard and the request metrics."""
    service = Service(config, state, kinds)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPIOffline(
        title="emi",
        summary="Emotional mimicry intensity: score, extract and train jobs over HTTP",
        version="1",
        lifespan=lifespan,
        static_url="/docs-assets",
        redoc_url=None,  # add_redoc: the same page without its bundle's outside request
        generate_unique_id_function=operation_id,
    )
    add_redoc(app, static_url="/docs-assets")
    app.state.service = service
    describe(app, tokens=bool(config.tokens))
    _handle_errors(app)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    routers = (page.router, registry.router, operations.router, jobs_router(kinds))
    app.state.routers = (*routers, uploads.router)  # their routes answer 405's Allow
    for router in app.state.routers:
        app.include_router(router)
    return RequestMetrics(Guard(app, config), app.routes, service.metrics)


def _handle_errors(app: FastAPI) -> None:
    """Every error as ``{"error", "detail"}`` JSON (a 405 keeps its ``Allow``)."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return error_response(err.status, err.error, err.detail, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        details = []
        for e in err.errors():
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "")
                return error_response(
                    422, "invalid request", f"the body is not valid JSON ({reason})"
                )
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            details.append(f"{where or 'body'}: {e.get('msg')}")
        return error_response(422, "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        label = LABELS.get(err.status_code, "error")
        headers = err.headers
        if err.status_code == 405:  # every method of the path, not the first route's
            allowed = _methods(request.app.state.routers, request.url.path)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return error_response(err.status_code, label, str(err.detail), headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect):
        # the client left (or the body was refused as too large): nobody reads this
        return error_response(400, "bad request", "the client disconnected before the body ended")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(
            500, "internal error", "the service logged what went wrong; retry later"
        )


def _methods(routers, path: str) -> list[str]:
    """The methods the routes of ``path`` answer."""
    return sorted(
        method
        for router in routers
        for route in router.routes
        if route.path_regex.match(path)
        for method in route.methods
    )
