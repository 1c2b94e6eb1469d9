"""Where audio files live: local paths or fsspec URLs (``s3://bucket/audio``).

Object-store credentials and endpoints come from the standard environment/config of
the filesystem (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def open_source(path: str | os.PathLike) -> BinaryIO:
    """Open a local file or a URL for binary reading."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), "rb").open()
    return open(path, "rb")  # noqa: SIM115  (the caller closes it)


def source_size(path: str | os.PathLike) -> int:
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(str(path))
        return int(fs.size(inner))
    return Path(path).stat().st_size


def source_exists(path: str | os.PathLike) -> bool:
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(str(path))
        return fs.isfile(inner)
    return Path(path).is_file()


def list_files(folder: str | os.PathLike, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(path relative to folder, full path or URL)`` of files below ``folder``
    (recursive) whose extension is in ``extensions`` (lower case, with the dot)."""
    if is_url(folder):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(folder))
        root = root.rstrip("/")
        if not fs.isdir(root):
            raise FileNotFoundError(str(folder))
        found = []
        for inner in fs.find(root):
            if Path(inner).suffix.lower() in extensions:
                found.append((inner[len(root) + 1 :], fs.unstrip_protocol(inner)))
        return sorted(found)
    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(str(folder))
    return sorted(
        (p.relative_to(base).as_posix(), str(p.resolve()))
        for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in extensions
    )
