"""Where a job's audio and labels may come from: below the operator's source roots, or
an upload. Every check happens before any work, on resolved paths (``..`` and symlinks
followed), so a job never reads outside the roots."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from manifests import ClipRecord
from service.config import ServiceConfig, is_url
from service.errors import bad_request, forbidden, not_found

UPLOAD_ID = re.compile(r"^upload-[0-9a-f]{20}$")
OUTSIDE = "links to a file outside the service's source roots; it was not read"


def _below(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def inside_roots(path: str, roots: list[str]) -> bool:
    """Whether a resolved local path (or a URL) lies below one of ``roots``."""
    if is_url(path):
        return any(is_url(r) and (path.rstrip("/") + "/").startswith(r) for r in roots)
    real = os.path.realpath(path)
    return any(not is_url(r) and _below(real, r) for r in roots)


def upload_files(config: ServiceConfig, upload_id: str) -> Path:
    """The folder of an upload's files.

    Raises:
        RequestError: 404 where no such upload is kept.
    """
    folder = config.state / "uploads" / upload_id / "files"
    if not UPLOAD_ID.match(upload_id) or not folder.is_dir():
        raise not_found(f"upload {upload_id!r} not found; POST files to /v1/uploads first")
    return folder


def resolve_source(config: ServiceConfig, source: str, *, what: str = "source") -> str:
    """The folder (or URL) a job's ``source`` names: an upload id, an ``s3://`` prefix
    below a root, or a path below a root.

    Raises:
        RequestError: 403 outside every root (naming them), 404 missing, 400 malformed.
    """
    if not isinstance(source, str) or not source.strip():
        raise bad_request(f"{what}: give a folder below a source root or an upload id")
    if "\x00" in source or any(ord(c) < 32 for c in source):
        raise bad_request(f"{what}: a path holds no control characters (a null byte, ...)")
    if UPLOAD_ID.match(source):
        return str(upload_files(config, source))
    roots = ", ".join(config.source_roots)
    if is_url(source):
        if not source.startswith("s3://") or ".." in source.split("/"):
            raise bad_request(f"{what} {source!r}: only s3:// URLs (without '..') are read")
        if not inside_roots(source, config.source_roots):
            raise forbidden(f"{what} {source!r} is outside the source roots ({roots})")
        return source.rstrip("/")
    if not os.path.isabs(source):
        raise bad_request(
            f"{what} {source!r}: give an absolute path below a source root ({roots}) or an "
            "upload id"
        )
    if not inside_roots(source, config.source_roots):
        raise forbidden(
            f"{what} {source!r} is outside the source roots ({roots}) once '..' and "
            "symlinks are resolved; the service reads nothing else"
        )
    real = os.path.realpath(source)
    if not os.path.exists(real):
        raise not_found(f"{what} {source!r} does not exist")
    return real


def resolve_file(config: ServiceConfig, source: str, *, what: str, suffix: str) -> str:
    """A single file (labels): a path below a root, or an upload holding exactly one
    file with ``suffix``."""
    if isinstance(source, str) and UPLOAD_ID.match(source):
        files = sorted(upload_files(config, source).rglob(f"*{suffix}"))
        if len(files) != 1:
            raise bad_request(
                f"{what}: upload {source} holds {len(files)} {suffix} files; upload exactly one"
            )
        return str(files[0])
    path = resolve_source(config, source, what=what)
    if not is_url(path) and not os.path.isfile(path):
        raise bad_request(f"{what} {source!r} is not a file")
    return path


def public_path(config: ServiceConfig, path: str) -> str:
    """How a client sees a file the service read: below a source root as it is (a
    client names sources that way), in an upload as ``upload-id/relative path``, else
    its name only (the state, store and head folders stay the server's)."""
    if is_url(path) or inside_roots(path, config.source_roots):
        return path
    uploads = str(config.state.resolve() / "uploads")
    if _below(path, uploads):
        upload, _, rest = path[len(uploads) + 1 :].partition("/")
        return f"{upload}/{rest.removeprefix('files/')}"
    return os.path.basename(path)


def manifest_below_roots(folder: str, config: ServiceConfig) -> tuple[list[ClipRecord], list]:
    """The manifest of ``folder`` (as ``build_manifest``) and the files left out of it:
    a file that resolves outside the source roots (a symlink inside a root pointing out)
    is never opened, and comes back as a :class:`ClipFailure` saying so. Uploaded
    folders hold no links (archives with link members are refused)."""
    from featurestore.records import ClipFailure
    from manifests.build import probe, scan_folder

    allowed = [*config.source_roots, str(config.state.resolve() / "uploads")]
    records, refused = [], []
    for record in scan_folder(folder):
        if is_url(record.path):
            records.append(probe(record))
        elif inside_roots(record.path, allowed):
            # read from the resolved path from now on: a link swapped after this check
            # is not followed
            records.append(probe(replace(record, path=os.path.realpath(record.path)), exact=True))
        else:
            refused.append(ClipFailure(clip_id=record.clip_id, path=record.path, reason=OUTSIDE))
    return sorted(records, key=lambda r: r.clip_id), refused


def list_folder(config: ServiceConfig, path: str | None) -> dict:
    """``GET /v1/sources``: the roots, or the folders in ``path`` (below a root) and
    the number of audio files directly in it. Folders that resolve outside the roots
    (links pointing out) are not listed.

    Raises:
        RequestError: 403 outside the roots, 404 missing, 400 not a folder.
    """
    from manifests.records import AUDIO_EXTENSIONS

    if not path:
        return {
            "path": None,
            "folders": [{"name": root, "path": root} for root in config.source_roots],
            "audio_files": 0,
        }
    if UPLOAD_ID.match(path):
        raise bad_request("path: give a folder below a source root")
    where = resolve_source(config, path, what="path")
    roots = config.source_roots
    if is_url(where):
        import fsspec

        fs, key = fsspec.core.url_to_fs(where)
        entries = fs.ls(key, detail=True)
        protocol = where.split("://", 1)[0]
        folders = sorted(
            f"{protocol}://{e['name'].rstrip('/')}" for e in entries if e["type"] == "directory"
        )
        files = [e["name"] for e in entries if e["type"] != "directory"]
        audio = sum(1 for name in files if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS)
    else:
        if not os.path.isdir(where):
            raise bad_request(f"path {path!r} is not a folder")
        folders, audio = [], 0
        with os.scandir(where) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                full = os.path.join(where, entry.name)
                try:  # a link loop or a vanished entry is left out, never an error
                    is_dir = entry.is_dir()
                    is_file = not is_dir and entry.is_file()
                except OSError:
                    continue
                if is_dir:
                    if inside_roots(full, roots):
                        folders.append(os.path.realpath(full))
                elif is_file and os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
                    audio += 1
        folders.sort()
    at_root = any(where.rstrip("/") == r.rstrip("/") for r in roots)
    parent = None if at_root else where.rstrip("/").rsplit("/", 1)[0]
    return {
        "path": where,
        "parent": parent,
        "folders": [{"name": f.rstrip("/").rsplit("/", 1)[-1], "path": f} for f in folders],
        "audio_files": audio,
    }
