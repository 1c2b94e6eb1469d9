"""Results written whole or not at all: a temporary sibling, then one rename.

A crash while writing leaves the previous result (or none) in place, never a mix;
the temporary is removed on any error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read from /proc where it is there: setting it to read it
    back is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything below it) the mode a plain
    ``open``/``mkdir`` would have: 0666 or 0777 less the umask. Some writers (the
    safetensors library, ``tempfile.mkstemp``) create files 0600, which other users
    and workers sharing a head or model folder cannot read."""
    mask = current_umask()
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _sibling(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{what}-{uuid.uuid4().hex[:8]}")


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<what>partial|old)-[0-9a-f]{8}")


def is_leftover(path: str | os.PathLike) -> bool:
    """A hidden ``.NAME.partial-*`` or ``.NAME.old-*`` sibling of an interrupted write."""
    return _LEFTOVER.fullmatch(Path(path).name) is not None


def clean_leftovers(
    folder: str | os.PathLike, *, name: str | None = None, min_age_s: float = 600.0
) -> list[Path]:
    """Tidy what interrupted atomic writes left directly in ``folder`` (only those of
    ``name`` when given) at least ``min_age_s`` ago (a write in progress is younger: a
    head's files are written in seconds); returns what was removed or restored.

    A ``.NAME.partial-*`` never took NAME's place: removed. A ``.NAME.old-*`` is the
    earlier NAME moved aside: removed where NAME exists, else moved back (the write
    stopped between the two renames, so it is the only copy)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    now = time.time()
    # ctime too: a rename (the earlier NAME moved aside) keeps the mtime, not the ctime
    found = [(p, p.lstat()) for p in folder.iterdir() if is_leftover(p)]
    found = [(p, max(st.st_mtime, st.st_ctime)) for p, st in found]
    for item, mtime in sorted(found, key=lambda pair: pair[1], reverse=True):
        match = _LEFTOVER.fullmatch(item.name)
        if (name is not None and match["name"] != name) or now - mtime < min_age_s:
            continue
        if not os.path.lexists(item):
            continue
        target = folder / match["name"]
        if match["what"] == "old" and not target.exists():
            os.replace(item, target)
        elif item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        done.append(item)
    return done


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Raises:
        FileNotFoundError: the folder that would hold ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder (create it first)")
    temporary = _sibling(path, "partial")
    try:
        yield temporary
        apply_umask(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes ``path``'s place.

    An existing ``path`` is moved aside first and deleted only after the new folder is
    in place, so a crash leaves either the old folder, or the new one (the old one
    then remains as a hidden ``.NAME.old-*`` sibling).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent, name=path.name, min_age_s=60)  # an interrupted earlier write
    temporary = _sibling(path, "partial")
    temporary.mkdir()
    try:
        yield temporary
        apply_umask(temporary)
        old = None
        if path.exists():
            old = _sibling(path, "old")
            os.replace(path, old)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
