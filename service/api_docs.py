"""What the OpenAPI document (``/openapi.json``) says beyond the routes' own types:
the bearer scheme, the ``{"error", "detail"}`` answer of every status a route can give,
and CSV answers. A client generated from it (openapi-python-client) works unedited."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse

from service.requests import ErrorBody

WHY = {
    400: "Bad request: a malformed value, a path with control characters, or a Host the "
    "service does not answer",
    401: "No valid bearer token (where the service has tokens)",
    403: "Forbidden: outside the source roots, or a state change from another site's page",
    404: "Not found: no such job, upload, head, store or folder",
    409: "Conflict: the job is in another state, or a name or Idempotency-Key is taken",
    413: "Too large: over a body, upload, archive or quota limit",
    415: "Unsupported media type: send multipart/form-data",
    416: "Range not satisfiable: the range starts past the file's end",
    422: "Invalid request: the body or a parameter does not match the schema",
    503: "Not ready: the stores, the dask cluster or the job threads are not available",
}

READS = (400, 401)  # what any route reading with a token can answer
WRITES = (400, 401, 403, 413, 422)  # what any state-changing route can answer


def errors(*statuses: int) -> dict[int | str, dict]:
    """``responses=`` of a route: the error model for each of ``statuses``."""
    return {status: {"model": ErrorBody, "description": WHY[status]} for status in statuses}


class CSVResponse(FileResponse):
    """A CSV file answer (documented as ``text/csv``)."""

    media_type = "text/csv"


def operation_id(route) -> str:
    """A route's operation id: its function's name (the generated client's names)."""
    return route.name


def describe(app: FastAPI, *, tokens: bool) -> None:
    """Finish ``app``'s OpenAPI document: every error answer is the service's JSON
    ``{"error", "detail"}`` (FastAPI's own validation answer replaced on every 422, and
    a CSV route's errors JSON too), and, on a service without tokens,
    the bearer scheme made optional (an empty requirement beside it)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = build()
        ours = {"$ref": "#/components/schemas/ErrorBody"}
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for status, answer in operation.get("responses", {}).items():
                    if status.isdigit() and int(status) >= 400:  # JSON, whatever a 200 is
                        answer["description"] = WHY.get(int(status), answer.get("description"))
                        answer["content"] = {"application/json": {"schema": ours}}
                if not tokens and operation.get("security"):
                    operation["security"] = [*operation["security"], {}]
                _describe_callbacks(operation)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi


def _describe_callbacks(operation: dict) -> None:
    """A callback's answers are the receiver's: any 2xx ends its delivery."""
    for expressions in operation.get("callbacks", {}).values():
        for item in expressions.values():
            for callback in item.values():
                callback["responses"] = {
                    "2XX": {"description": "received: the delivery ends (else retried)"}
                }
