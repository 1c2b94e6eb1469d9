"""The ASGI middleware in front of every route of ``emi serve``: the ``Host`` a request
names, the ``Origin`` of state-changing requests, bearer tokens, the JSON body limit,
and the headers that keep the page out of other sites' frames."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from service.config import ServiceConfig

# what holds no data: the page, the probes, the API's own description and its pages
OPEN_PATHS = (
    "/healthz",
    "/readyz",
    "/",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
)
OPEN_PREFIXES = ("/static/", "/docs-assets/")
PROBE_PATHS = ("/healthz", "/readyz")  # answered whatever the Host (a kubelet sends its IP)
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
UPLOAD_PATH = "/v1/uploads"
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def error_response(status: int, error: str, detail, headers: dict | None = None) -> JSONResponse:
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
            return error_response(
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
                return error_response(
                    403,
                    "forbidden",
                    "a page of another site may not change this service's jobs or uploads "
                    "(Origin is not the service's own)",
                )
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if self.tokens and not open_path and not self._authorized(headers):
            return error_response(
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
        too_large = error_response(
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
