"""Where audio files live: local paths or fsspec URLs (``s3://bucket/audio``).

Every access goes through fsspec, which handles local paths and URLs alike.
Object-store credentials and endpoints come from the standard environment/config of
the filesystem (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import fsspec


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _fs(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(path))


def open_source(path: str | os.PathLike) -> BinaryIO:
    """Open a local file or a URL for binary reading (the caller closes it)."""
    fs, inner = _fs(path)
    return fs.open(inner, "rb")


def broken_link(path: str | os.PathLike) -> str | None:
    """``a broken symbolic link (to TARGET)`` where ``path`` is a local symbolic link to
    nothing; else None."""
    if is_url(path) or not os.path.islink(path) or os.path.exists(path):
        return None
    return f"a broken symbolic link (to {os.readlink(path)})"


def source_size(path: str | os.PathLike) -> int:
    fs, inner = _fs(path)
    return int(fs.size(inner))


def source_exists(path: str | os.PathLike) -> bool:
    fs, inner = _fs(path)
    return fs.isfile(inner)


def list_files(folder: str | os.PathLike, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(path relative to folder, full path or URL)`` of files below ``folder``
    (recursive) whose extension is in ``extensions`` (lower case, with the dot).

    Local folders are resolved first (symlinks followed), so full paths are absolute.
    """
    if not is_url(folder):
        folder = Path(folder).resolve()
    fs, root = _fs(folder)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(str(folder))
    found = []
    for inner in fs.find(root):
        if Path(inner).suffix.lower() in extensions:
            full = fs.unstrip_protocol(inner) if is_url(folder) else inner
            found.append((inner[len(root) + 1 :], full))
    return sorted(found)
