"""Opening paths beneath a root folder, never outside it, whatever is swapped meanwhile.

A path is resolved once, from a descriptor of the root, and only what that resolution
reached is used: with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` where the
kernel has it (Linux 5.6+), else by walking the path one component at a time from the
root's descriptor, each opened with ``O_NOFOLLOW``. A symbolic link met on the way is
read once and followed only while it stays beneath the root (a relative link, or an
absolute one naming a place below the root's real path); ``..`` never climbs above the
root. A link that flips between an inside and an outside target is either refused or
followed to its inside target: what is opened is always beneath the root.

What cannot be told apart: a hard link inside the root to a file outside it is that
file (the same inode), so it is read. Keep hard links out of shared roots.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import deque

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # one number on every Linux architecture
MAX_LINKS = 40  # as the kernel's own limit (ELOOP past it)
_O_PATH = getattr(os, "O_PATH", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

use_openat2 = True  # False: always walk (the tests try both ways)


class OutsideRoot(PermissionError):
    """The path leads outside the root (by ``..``, or through a symbolic link)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = None


def _openat2(dir_fd: int, relative: str, flags: int) -> int | None:
    """``openat2`` beneath ``dir_fd``; None where the kernel (or a sandbox) lacks it or
    the path holds an absolute link (the walk decides those)."""
    global _libc
    if not use_openat2 or os.uname().sysname != "Linux":
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    how = _OpenHow(flags | _CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    fd = syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(relative)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EPERM, errno.EXDEV, errno.E2BIG, errno.EINVAL, errno.EAGAIN):
        return None  # no openat2 here, or a link the walk must judge
    if code == errno.ELOOP and flags & _NOFOLLOW:
        raise OSError(code, os.strerror(code))
    if code == errno.ELOOP:
        return None  # a magic link or a long chain: the walk says which
    raise OSError(code, os.strerror(code))


def relative_below(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` where it is lexically below it (``root`` itself:
    ``""``); None where it is not. Neither is resolved; ``..`` stays in the answer."""
    root = root.rstrip("/") or "/"
    if path == root or path.rstrip("/") == root:
        return ""
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _parts(relative: str) -> list[str]:
    return [p for p in relative.split("/") if p not in ("", ".")]


def _walk(root_fd: int, root: str, relative: str) -> tuple[int, list[str], str]:
    """Walk ``relative`` from ``root_fd``; returns (the descriptor of the folder holding
    the last component, the names walked from the root to that folder, the last
    component's name). Links are followed while they stay beneath the root; the last
    component is left unopened (it may be a link the caller refuses to follow, or a
    file to open with the caller's flags)."""
    stack = [os.dup(root_fd)]
    names: list[str] = []
    pending = deque(_parts(relative))
    links = 0
    try:
        while pending:
            name = pending.popleft()
            if name == "..":
                if not names:
                    raise OutsideRoot(errno.EACCES, "climbs above the root with '..'")
                os.close(stack.pop())
                names.pop()
                continue
            if not pending:  # the last component: the caller opens it
                return os.dup(stack[-1]), list(names), name
            fd = _open_component(name, stack[-1])
            mode = os.fstat(fd).st_mode if fd is not None else stat.S_IFLNK
            if stat.S_ISLNK(mode):
                if fd is not None:
                    os.close(fd)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = _read_link(name, stack[-1])
                if target is None:  # no longer a link: walk it again
                    pending.appendleft(name)
                    continue
                if target.startswith("/"):
                    inside = relative_below(target, root)
                    if inside is None:
                        raise OutsideRoot(errno.EACCES, "a symbolic link on it points outside")
                    for fd_above in stack[1:]:
                        os.close(fd_above)
                    del stack[1:]
                    names.clear()
                    target = inside
                pending.extendleft(reversed(_parts(target)))
                continue
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            stack.append(fd)
            names.append(name)
        # the path names the root itself (or climbs back to it)
        return os.dup(stack[-1]), list(names), "."
    finally:
        for fd in stack:
            os.close(fd)


def _open_component(name: str, dir_fd: int) -> int | None:
    """A descriptor of ``name`` in ``dir_fd`` itself (a link is not followed: with
    ``O_PATH`` the link's own descriptor, without it None)."""
    if _O_PATH:
        return os.open(name, _O_PATH | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    try:  # no O_PATH (not Linux): a folder opened for reading
        return os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None
        raise


def _read_link(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.EINVAL:  # swapped for something that is not a link
            return None
        raise


def open_beneath(root: str, relative: str, flags: int = os.O_RDONLY) -> tuple[int, str]:
    """Open ``relative`` (a path below ``root``, ``..`` and links allowed while they
    stay beneath it) with ``flags``; returns (descriptor, the real path opened).

    ``root`` is a real path (no link in it). A link at the last component is followed
    like any other (beneath the root); ``O_NOFOLLOW`` in ``flags`` refuses it instead.
    The caller closes the descriptor.

    Raises:
        OutsideRoot: the path, or a link on it, leads outside ``root``.
        OSError: missing (ENOENT), not a folder on the way (ENOTDIR), a link loop
            (ELOOP), unreadable.
    """
    flags |= _CLOEXEC
    root_fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        fd = _openat2(root_fd, relative or ".", flags)
        if fd is not None:
            return fd, _real_path_of(fd, root, relative)
        return _open_walking(root_fd, root, relative, flags)
    finally:
        os.close(root_fd)


def _open_walking(root_fd: int, root: str, relative: str, flags: int) -> tuple[int, str]:
    follow = not flags & _NOFOLLOW
    links = 0
    while True:
        parent, names, last = _walk(root_fd, root, relative)
        try:
            if last == ".":
                return os.open(".", flags, dir_fd=parent), _joined(root, names)
            try:
                fd = os.open(last, flags | _NOFOLLOW, dir_fd=parent)
                if not (follow and stat.S_ISLNK(os.fstat(fd).st_mode)):  # O_PATH opens links
                    return fd, _joined(root, [*names, last])
                os.close(fd)
                target = _read_link(last, parent)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR) or not follow:
                    raise
                target = _read_link(last, parent)
                if target is None and err.errno == errno.ENOTDIR:
                    raise
        finally:
            os.close(parent)
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        if target is not None:  # the last component is a link: follow it beneath the root
            if target.startswith("/"):
                inside = relative_below(target, root)
                if inside is None:
                    raise OutsideRoot(errno.EACCES, "a symbolic link on it points outside")
                relative = inside
            else:
                relative = "/".join([*names, target])


def _joined(root: str, names: list[str]) -> str:
    return "/".join([root.rstrip("/"), *names]) if names else root


def _real_path_of(fd: int, root: str, relative: str) -> str:
    """The real path of ``fd`` as the kernel names it (checked below ``root``)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the path as walked (openat2 kept it beneath the root)
        real = os.path.normpath(os.path.join(root, relative))
    if relative_below(real, root) is None:  # never: openat2 stays beneath
        os.close(fd)
        raise OutsideRoot(errno.EACCES, "resolves outside the root")
    return real


def resolve_beneath(root: str, relative: str) -> str:
    """The real path ``relative`` names beneath ``root`` (see :func:`open_beneath`),
    resolved once; nothing is read.

    Raises:
        OutsideRoot, OSError: as :func:`open_beneath`.
    """
    fd, real = open_beneath(root, relative, _O_PATH or (os.O_RDONLY | _NONBLOCK))
    os.close(fd)
    return real
