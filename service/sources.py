"""Where a job's audio and labels may come from: below the operator's source roots, or
an upload. A path is resolved once, beneath its root (``manifests.beneath``: opened
from the root's descriptor, links followed only while they stay below it), and only
that resolved path is used afterwards: folders are listed through descriptors, files
read from what was opened, so a link swapped in at any moment never leads outside."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from manifests import ClipRecord
from manifests.beneath import OutsideRoot, open_beneath, relative_below, resolve_beneath
from service.config import ServiceConfig, is_url
from service.errors import bad_request, forbidden, not_found

UPLOAD_ID = re.compile(r"^upload-[0-9a-f]{20}$")
OUTSIDE = "links to a file outside the service's source roots; it was not read"
MAX_LABEL_BYTES = 256 * 2**20  # a label file read whole (a quarter GiB: millions of rows)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_PATH = getattr(os, "O_PATH", 0) or (os.O_RDONLY | _NONBLOCK)


def _below(path: str, root: str) -> bool:
    return relative_below(path, root) is not None


@dataclass(frozen=True)
class Beneath:
    """A local path as resolved below one root: the root (a real path), the path
    relative to it as the client gave it, and the real path it resolved to."""

    root: str
    relative: str
    real: str


def inside_roots(path: str, roots: list[str]) -> bool:
    """Whether ``path`` (a URL, or a local path taken as written: nothing is resolved)
    lies below one of ``roots``."""
    if is_url(path):
        return any(is_url(r) and (path.rstrip("/") + "/").startswith(r) for r in roots)
    return any(not is_url(r) and _below(path, r) for r in roots)


def uploads_root(config: ServiceConfig) -> str:
    return str(config.state_folder.uploads.resolve())


def upload_files(config: ServiceConfig, upload_id: str) -> Path:
    """The folder of an upload's files.

    Raises:
        RequestError: 404 where no such upload is kept.
    """
    folder = config.state_folder.upload(upload_id) / "files"
    if not UPLOAD_ID.match(upload_id) or not folder.is_dir():
        raise not_found(f"upload {upload_id!r} not found; POST files to /v1/uploads first")
    return folder


def _check_text(source, what: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise bad_request(f"{what}: give a folder below a source root or an upload id")
    if "\x00" in source or any(ord(c) < 32 for c in source):
        raise bad_request(f"{what}: a path holds no control characters (a null byte, ...)")


def locate(config: ServiceConfig, source: str, *, what: str = "source") -> Beneath:
    """The root a local ``source`` lies below (as written) and its relative part;
    ``real`` is left empty (nothing is resolved yet).

    Raises:
        RequestError: 400 not absolute, 403 below no root.
    """
    roots = ", ".join(config.source_roots)
    if not os.path.isabs(source):
        raise bad_request(
            f"{what} {source!r}: give an absolute path below a source root ({roots}) or an "
            "upload id"
        )
    for root in config.source_roots:
        if is_url(root):
            continue
        relative = relative_below(source, root)
        if relative is not None:
            return Beneath(root, relative, "")
    raise forbidden(
        f"{what} {source!r} is outside the source roots ({roots}); the service reads nothing else"
    )


def _refused(source: str, what: str, err: OSError, roots: str):
    if isinstance(err, OutsideRoot):
        return forbidden(
            f"{what} {source!r} is outside the source roots ({roots}) once '..' and "
            "symlinks are resolved; the service reads nothing else"
        )
    if err.errno == errno.ENOENT:
        return not_found(f"{what} {source!r} does not exist")
    if err.errno == errno.ENOTDIR:
        return bad_request(f"{what} {source!r} is not a folder (or a part of its path is a file)")
    return bad_request(f"{what} {source!r} cannot be opened ({err.strerror or 'unreadable'})")


def open_below_roots(
    config: ServiceConfig, source: str, flags: int, *, what: str
) -> tuple[int, Beneath]:
    """Open a local ``source`` beneath its root with ``flags``: (descriptor, where).

    Raises:
        RequestError: 400, 403 (outside once resolved), 404.
    """
    at = locate(config, source, what=what)
    try:
        fd, real = open_beneath(at.root, at.relative, flags)
    except OSError as err:
        raise _refused(source, what, err, ", ".join(config.source_roots)) from None
    return fd, Beneath(at.root, at.relative, real)


def resolve_source(config: ServiceConfig, source: str, *, what: str = "source") -> str:
    """The folder (or URL) a job's ``source`` names: an upload id, an ``s3://`` prefix
    below a root, or a path below a root, resolved once beneath its root.

    Raises:
        RequestError: 403 outside every root (naming them), 404 missing, 400 malformed.
    """
    _check_text(source, what)
    if UPLOAD_ID.match(source):
        return str(upload_files(config, source))
    if is_url(source):
        roots = ", ".join(config.source_roots)
        if not source.startswith("s3://") or ".." in source.split("/"):
            raise bad_request(f"{what} {source!r}: only s3:// URLs (without '..') are read")
        if not inside_roots(source, config.source_roots):
            raise forbidden(f"{what} {source!r} is outside the source roots ({roots})")
        return source.rstrip("/")
    fd, where = open_below_roots(config, source, os.O_RDONLY | _NONBLOCK, what=what)
    os.close(fd)
    return where.real


def read_file_below_roots(
    config: ServiceConfig, source: str, *, what: str, suffix: str
) -> tuple[bytes, str]:
    """A single file's bytes (labels) and how a client names it: a path below a root,
    opened beneath it and read from that descriptor, or an upload holding exactly one
    file with ``suffix``.

    Raises:
        RequestError: 400 not a regular file or too large, 403, 404.
    """
    _check_text(source, what)
    if UPLOAD_ID.match(source):
        folder = upload_files(config, source)
        files = sorted(folder.rglob(f"*{suffix}"))
        if len(files) != 1:
            raise bad_request(
                f"{what}: upload {source} holds {len(files)} {suffix} files; upload exactly one"
            )
        relative = str(files[0].relative_to(folder))
        fd, _ = open_beneath(str(folder.resolve()), relative, os.O_RDONLY)
        shown = f"{source}/{relative}"
    else:
        if is_url(source):
            raise bad_request(
                f"{what} {source!r}: give a file below a local source root or an upload id"
            )
        fd, where = open_below_roots(config, source, os.O_RDONLY | _NONBLOCK, what=what)
        shown = source
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise bad_request(f"{what} {shown!r} is not a file")
        if info.st_size > MAX_LABEL_BYTES:
            raise bad_request(f"{what} {shown!r} is over {MAX_LABEL_BYTES:,} bytes")
        os.set_blocking(handle.fileno(), True)
        return handle.read(MAX_LABEL_BYTES + 1), shown


def read_labels_below_roots(config: ServiceConfig, source: str, *, what: str):
    """A :class:`~manifests.labels.LabelTable` of a label file below the roots (or an
    upload): read once through a descriptor opened beneath its root; a parse error
    names the file and line numbers, never the file's text.

    Raises:
        RequestError: as :func:`read_file_below_roots`.
        ManifestError: not a label file (without the file's content).
    """
    from manifests.labels import parse_labels

    data, shown = read_file_below_roots(config, source, what=what, suffix=".csv")
    return parse_labels(data, shown, show_content=False)


def check_label_file(config: ServiceConfig, source: str, *, what: str) -> None:
    """A label file a job names is a readable, well-formed label CSV (at submit).

    Raises:
        RequestError: 400 (a parse error, without the file's content), 403, 404.
    """
    from manifests import ManifestError

    try:
        read_labels_below_roots(config, source, what=what)
    except ManifestError as err:
        raise bad_request(f"{what}: {err}") from None


def public_path(config: ServiceConfig, path: str) -> str:
    """How a client sees a file the service read (a resolved path, taken as written):
    below a source root as it is (a client names sources that way), in an upload as
    ``upload-id/relative path``, else its name only (the state, store and head folders
    stay the server's)."""
    if is_url(path) or inside_roots(path, config.source_roots):
        return path
    relative = relative_below(path, uploads_root(config))
    if relative:
        upload, _, rest = relative.partition("/")
        return f"{upload}/{rest.removeprefix('files/')}"
    return os.path.basename(path)


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/>.])(/[^\s,;'\"()]+)")


def public_paths_in(config: ServiceConfig, text: str) -> str:
    """``text`` with every absolute path in it as :func:`public_path` shows it."""
    return _ABSOLUTE_PATH.sub(lambda m: public_path(config, m.group(1)), text)


def _listing_root(config: ServiceConfig, folder: str) -> str:
    """The root a resolved local ``folder`` lies below: a source root or the uploads."""
    for root in [*config.source_roots, uploads_root(config)]:
        if not is_url(root) and _below(folder, root):
            return root
    raise forbidden(f"{folder!r} is outside the source roots")


def _walk_folder(folder: Beneath) -> tuple[list[tuple[str, str]], list]:
    """The audio files below ``folder`` (recursive), walked through descriptors opened
    beneath its root: ``(relative path, real path)`` and the files refused (a link
    pointing out or broken) as :class:`ClipFailure`. Links to folders are not entered;
    a link to a file is followed while it stays beneath the root."""
    found, refused = [], []
    top, real = open_beneath(folder.root, folder.relative, os.O_RDONLY | _DIRECTORY)
    stack = [(top, real, "")]
    try:
        while stack:
            fd, at, prefix = stack.pop()
            try:
                _list_entries(folder.root, fd, at, prefix, stack, found, refused)
            finally:
                os.close(fd)
    finally:  # a walk cut short closes the folders it had opened
        for fd, _, _ in stack:
            os.close(fd)
    return sorted(found), refused


def _list_entries(root: str, fd: int, at: str, prefix: str, stack, found, refused) -> None:
    """One folder of :func:`_walk_folder`: its sub-folders onto ``stack`` (opened
    without following links), its audio files into ``found`` or ``refused``."""
    from featurestore.records import ClipFailure
    from manifests.records import AUDIO_EXTENSIONS

    with os.scandir(fd) as entries:
        listed = list(entries)
    for entry in listed:
        relative = f"{prefix}{entry.name}"
        try:
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
                stack.append((sub, f"{at}/{entry.name}", relative + "/"))
                continue
        except OSError:  # swapped for a link or gone since the listing: not entered
            continue
        if Path(entry.name).suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        if not entry.is_symlink():
            found.append((relative, f"{at}/{entry.name}"))
            continue
        clip_id = relative.rsplit(".", 1)[0]
        shown = f"{at}/{entry.name}"
        try:
            found.append((relative, resolve_beneath(root, relative_below(shown, root))))
        except OutsideRoot:
            refused.append(ClipFailure(clip_id=clip_id, path=shown, reason=OUTSIDE))
        except OSError:
            reason = "a broken symbolic link (or a link loop); not read"
            refused.append(ClipFailure(clip_id=clip_id, path=shown, reason=reason))


def manifest_below_roots(folder: str, config: ServiceConfig) -> tuple[list[ClipRecord], list]:
    """The manifest of a resolved ``folder`` (as ``build_manifest``) and the files left
    out of it: the folder is walked through descriptors opened beneath its root, a file
    that resolves outside the source roots (a symlink inside a root pointing out) is
    never opened, and comes back as a :class:`ClipFailure` saying so. Every record's
    path is the real path reached, read later with ``exact`` (a link swapped in since
    is not followed)."""
    from manifests.build import probe, records_of_files, scan_folder
    from manifests.records import ManifestError

    if is_url(folder):
        return sorted((probe(r) for r in scan_folder(folder)), key=lambda r: r.clip_id), []
    root = _listing_root(config, folder)
    try:
        files, refused = _walk_folder(Beneath(root, relative_below(folder, root), folder))
    except OutsideRoot:
        raise ManifestError(f"{folder}: outside the source roots") from None
    except OSError as err:
        raise ManifestError(
            f"audio folder not found or unreadable: {folder} ({err.strerror or 'unreadable'})"
        ) from None
    if not files and refused:
        return [], refused
    records = records_of_files(folder, files)
    probed = [probe(r, exact=True) for r in records]
    return sorted(probed, key=lambda r: r.clip_id), refused


def list_folder(config: ServiceConfig, path: str | None) -> dict:
    """``GET /v1/sources``: the roots, or the folders in ``path`` (below a root) and
    the number of audio files directly in it, read through a descriptor opened beneath
    the root. Folders that resolve outside the roots (links pointing out) are not
    listed.

    Raises:
        RequestError: 403 outside the roots, 404 missing, 400 not a folder.
    """
    if not path:
        return {
            "path": None,
            "folders": [{"name": root, "path": root} for root in config.source_roots],
            "audio_files": 0,
        }
    _check_text(path, "path")
    if UPLOAD_ID.match(path):
        raise bad_request("path: give a folder below a source root")
    roots = config.source_roots
    if is_url(path):
        where = resolve_source(config, path, what="path")
        folders, audio = _list_url(where)
    else:
        fd, at = open_below_roots(config, path, os.O_RDONLY | _DIRECTORY, what="path")
        where = at.real
        folders, audio = _list_local(fd, at)
    at_root = any(where.rstrip("/") == r.rstrip("/") for r in roots)
    parent = None if at_root else where.rstrip("/").rsplit("/", 1)[0]
    return {
        "path": where,
        "parent": parent,
        "folders": [{"name": f.rstrip("/").rsplit("/", 1)[-1], "path": f} for f in folders],
        "audio_files": audio,
    }


def _list_url(where: str) -> tuple[list[str], int]:
    import fsspec

    from manifests.records import AUDIO_EXTENSIONS

    fs, key = fsspec.core.url_to_fs(where)
    entries = fs.ls(key, detail=True)
    protocol = where.split("://", 1)[0]
    folders = sorted(
        f"{protocol}://{e['name'].rstrip('/')}" for e in entries if e["type"] == "directory"
    )
    files = [e["name"] for e in entries if e["type"] != "directory"]
    audio = sum(1 for name in files if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS)
    return folders, audio


def _list_local(fd: int, at: Beneath) -> tuple[list[str], int]:
    """The folders and the count of audio files of an opened folder ``fd``; a link is
    shown only where it resolves beneath the root (as its real path)."""
    from manifests.records import AUDIO_EXTENSIONS

    folders, audio = [], 0
    try:
        with os.scandir(fd) as scan:
            entries = [e for e in scan if not e.name.startswith(".")]
    finally:
        os.close(fd)
    for entry in entries:
        is_audio = os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS
        try:
            if entry.is_symlink():  # judged by what it opens to beneath the root
                shown = f"{at.real}/{entry.name}"
                opened, target = open_beneath(at.root, relative_below(shown, at.root), _PATH)
                try:
                    mode = os.fstat(opened).st_mode
                finally:
                    os.close(opened)
                is_dir, is_file = stat.S_ISDIR(mode), stat.S_ISREG(mode)
            else:
                target = f"{at.real}/{entry.name}"
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
        except OSError:  # a link out, a link loop, a vanished entry: left out
            continue
        if is_dir:
            folders.append(target)
        elif is_file and is_audio:
            audio += 1
    return sorted(folders), audio
