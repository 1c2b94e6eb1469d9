"""The ASGI middleware in front of every route of ``emi serve``: the ``Host`` a request
names, the ``Origin`` of state-changing requests, the JSON body limit, and the headers
that keep the page out of other sites' frames. Bearer tokens are checked by the routes'
security dependency (:mod:`service.auth`), where the OpenAPI document declares them."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

from service.config import ServiceConfig

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


_AUTHORITY = re.compile(
    r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9](?:[a-z0-9.-]{0,252}[a-z0-9])?))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """The host (lower case, IPv6 without brackets) and port of a ``Host`` header or an
    origin's authority; None where it is not strictly ``host[:port]`` (``a:80.evil``,
    ``a:80@evil``, a user name, spaces: refused)."""
    match = _AUTHORITY.match(value.strip().lower())
    if match is None:
        return None
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    return (match["v6"] or match["name"]), (int(port) if port else None)


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is the origin the request was sent
    to (its ``Host``): scheme http or https, the same host and the same port (a
    missing port is the scheme's default). A page on another port or scheme of the
    same host is another origin."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        return False
    theirs, ours = parse_authority(authority), parse_authority(host)
    if theirs is None or ours is None:
        return False
    default = DEFAULT_PORTS[scheme]
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


class Guard:
    """ASGI middleware, in order: the ``Host`` a request names (a rebinding name is
    refused), the ``Origin`` of state-changing requests (another site's page is
    refused), the JSON body size limit (uploads have their own limits); and the
    headers that keep the page out of other sites' frames."""

    def __init__(self, app, config: ServiceConfig) -> None:
        self.app = app
        self.config = config
        self.hosts = config.allowed_host_names()

    def _refusal(self, scope, headers: dict) -> JSONResponse | None:
        """Why a request is refused before the app sees it; None where it may go on."""
        path = scope.get("path", "")
        host = headers.get(b"host", b"").decode("latin-1")
        parsed = parse_authority(host)
        named = parsed is not None and (self.hosts is None or parsed[0] in self.hosts)
        if path not in PROBE_PATHS and not named:
            return error_response(
                400,
                "bad host",
                "this service answers only requests naming it by an allowed host name "
                "(the operator adds names with --allowed-host)",
            )
        origin = headers.get(b"origin")
        changing = scope.get("method") in STATE_CHANGING
        if changing and origin is not None and not same_origin(origin.decode("latin-1"), host):
            return error_response(
                403,
                "forbidden",
                "a page of another site may not change this service's jobs or uploads "
                "(Origin is not the service's own: scheme, host and port must match)",
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
