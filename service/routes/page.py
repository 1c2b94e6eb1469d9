"""``/``: the page (plain HTML, CSS and JS shipped in the package; no data in it)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def page():
    """The page: heads, a score form, the jobs (it asks for the token if needed)."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
