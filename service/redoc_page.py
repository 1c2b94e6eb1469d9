"""``/redoc`` with nothing from outside: fastapi-offline's Redoc bundle, served with the
one outside address it holds (the Redocly logo on a CDN) pointed at the service's own
icon, so the page loads on a machine with no route to the internet and tells no one
that it was opened."""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

BUNDLE_PATH = "/redoc.js"  # open without a token, as /redoc is (no bearer dependency)
CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def _bundle(icon: str) -> bytes:
    import fastapi_offline

    source = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
    return source.read_text(encoding="utf-8").replace(CDN_LOGO, icon).encode()


def add_redoc(app: FastAPI, *, static_url: str, path: str = "/redoc") -> None:
    """``path``: Redoc over ``app``'s OpenAPI document, its bundle at :data:`BUNDLE_PATH`."""

    @app.get(path, include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{BUNDLE_PATH}",
            redoc_favicon_url=f"{root}{static_url}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(BUNDLE_PATH, include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(
            _bundle(f"{static_url}/favicon.png"),
            media_type="text/javascript",
            headers={"cache-control": "public, max-age=3600"},
        )
