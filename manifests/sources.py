"""Where audio files live: local paths or fsspec URLs (``s3://bucket/audio``).

Every access goes through fsspec, which handles local paths and URLs alike.
Object-store credentials and endpoints come from the standard environment/config of
the filesystem (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

import fsspec

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


class UnsafeSource(OSError):
    """A source that is not read: not a regular file (a FIFO, a device, ...), or, for a
    path resolved when it was listed, a file reached through a symbolic link swapped in
    since. The message is the reason."""


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _fs(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(path))


def open_source(path: str | os.PathLike, *, exact: bool = False) -> BinaryIO:
    """Open a local file or a URL for binary reading (the caller closes it).

    A local path is opened without waiting (a FIFO is never blocked on) and must be a
    regular file. With ``exact`` (a path resolved when its folder was listed, as the
    service's are), the file opened must be the one at ``path`` itself: a symbolic link
    swapped in since, at the file or at a folder above it, is not followed.

    Raises:
        UnsafeSource: not a regular file, or (``exact``) reached through a link.
        OSError: missing or unreadable.
    """
    if not is_url(path):
        return _open_local(os.fspath(path), exact=exact)
    fs, inner = _fs(path)
    return fs.open(inner, "rb")


def _open_local(path: str, *, exact: bool) -> BinaryIO:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if exact:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if exact and err.errno == errno.ELOOP:
            raise UnsafeSource(
                "is now a symbolic link (swapped in after the folder was listed); not read"
            ) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise UnsafeSource(f"is {kind}, not a regular file; not read")
        if exact and os.path.normpath(path) != _opened_path(fd, path):
            raise UnsafeSource(
                "is no longer the file that was listed at this path (a symbolic link was "
                "swapped in along it, or it was moved); not read"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _opened_path(fd: int, path: str) -> str:
    """The real path of the file open as ``fd`` (the kernel's word where it has one)."""
    if sys.platform.startswith("linux"):
        with_proc = f"/proc/self/fd/{fd}"
        if os.path.exists(with_proc):
            return os.readlink(with_proc)
    return os.path.realpath(path)


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
