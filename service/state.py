"""The service's state folder (``emi serve --state``): the job table, uploads, results.

Layout::

    STATE/emi-service.json   marker: this folder is an emi service's (format 1)
    STATE/jobs.sqlite        the job table (SQLite, WAL): the truth about every job
    STATE/serve.lock         held (flock) by the one service process using the folder
    STATE/disk.reserve/      room kept on the state's disk (32 pieces of 256 KiB), freed
                             a piece at a time when the disk is full, so that the job
                             table can still record jobs' ends
    STATE/uploads/<id>/      uploaded files, streamed to disk
    STATE/results/<job>/     predictions.csv and predictions.json of score jobs

A new or empty folder is made into a state folder; a folder holding anything else is
refused, so a mistyped ``--state`` never mixes jobs into someone's files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from service.errors import ServiceSetupError

log = logging.getLogger("emi.service")
MARKER = "emi-service.json"
RESERVE = "disk.reserve"
RESERVE_PIECES = 32  # freed one at a time, so that other writers take little of it
RESERVE_PIECE_BYTES = 256 * 2**10  # 8 MiB in all: the job table's room on a full disk
PROBE_BYTES = 4096
FORMAT = 1
KNOWN = {
    MARKER,
    "jobs.sqlite",
    "jobs.sqlite-wal",
    "jobs.sqlite-shm",
    "jobs.sqlite-journal",
    "serve.lock",
    "disk.reserve",
    ".ready.probe",
    "uploads",
    "results",
}


class StateFolder:
    """An opened state folder; :meth:`hold` takes it for this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_file = None
        self._reserve_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike) -> StateFolder:
        """Open ``path`` as a state folder, making it one where it is new or empty.

        Raises:
            ServiceSetupError: it is a file, holds things that are not emi's, or was
                made by a newer emi.
        """
        root = Path(path).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise ServiceSetupError(f"--state {root}: is a file; give a folder (new or emi's)")
        root.mkdir(parents=True, exist_ok=True)
        entries = {p.name for p in root.iterdir()}
        marker = root / MARKER
        if entries and MARKER not in entries:
            raise ServiceSetupError(
                f"--state {root}: holds files that are not an emi service's "
                f"({', '.join(sorted(entries)[:5])}); give a new or empty folder"
            )
        strangers = sorted(entries - KNOWN)
        if strangers:
            raise ServiceSetupError(
                f"--state {root}: holds {', '.join(strangers[:5])}, which an emi service "
                "never writes; move them out or give another folder"
            )
        if MARKER in entries:
            try:
                fmt = json.loads(marker.read_text()).get("format")
            except (OSError, ValueError, AttributeError) as err:
                raise ServiceSetupError(f"{marker}: unreadable ({err})") from err
            if fmt != FORMAT:
                raise ServiceSetupError(
                    f"{marker}: state format {fmt!r}; this emi reads format {FORMAT}"
                )
        else:
            marker.write_text(json.dumps({"format": FORMAT, "made_by": "emi serve"}) + "\n")
        for sub in ("uploads", "results"):
            (root / sub).mkdir(exist_ok=True)
        return cls(root)

    def hold(self) -> None:
        """Take the folder for this process (one service per state folder).

        Raises:
            ServiceSetupError: another process holds it.
        """
        handle = open(self.root / "serve.lock", "a+")  # noqa: SIM115 (held while serving)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ServiceSetupError(
                f"--state {self.root}: in use by {holder}; one service per state folder "
                "(stop it, or give another --state)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"emi serve, process {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- room on a full disk -----------------------------------------------------

    @property
    def reserve(self) -> Path:
        return self.root / RESERVE

    def _pieces(self) -> list[Path]:
        return [self.reserve / f"{k:02d}" for k in range(RESERVE_PIECES)]

    def keep_reserve(self) -> bool:
        """Make the reserve's missing pieces (at start, and once the disk has room
        again); False where the disk has no room for them."""
        with self._reserve_lock:
            self.reserve.mkdir(exist_ok=True)
            for piece in self._pieces():
                if piece.exists() and piece.stat().st_size >= RESERVE_PIECE_BYTES:
                    continue
                partial = self.reserve / ".partial"
                try:
                    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        _allocate(fd, RESERVE_PIECE_BYTES)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(partial, piece)
                except OSError as err:
                    partial.unlink(missing_ok=True)
                    if err.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                        raise
                    return False
            return True

    def give_up_reserve(self) -> bool:
        """Free one piece of the reserve (the disk is full and the job table must
        write); False where none is left."""
        with self._reserve_lock:
            for piece in self._pieces():
                try:
                    piece.unlink()
                except FileNotFoundError:
                    continue
                log.error(
                    "the state folder's disk is full: %d KiB of its reserve were freed "
                    "so that jobs can still end; free space on it",
                    RESERVE_PIECE_BYTES // 1024,
                )
                return True
            return False

    def writable(self) -> bool:
        """Whether the state folder can be written now: its reserve in place (made
        again where the disk has room) and a small file written and removed."""
        if not self.keep_reserve():
            return False
        probe = self.root / ".ready.probe"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * PROBE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def job_results(self, job_id: str) -> Path:
        """A score job's results: ``predictions.csv`` and ``predictions.json``."""
        return self.results / job_id

    def upload(self, upload_id: str) -> Path:
        """An upload kept: ``upload.json`` and ``files/``."""
        return self.uploads / upload_id

    def upload_staging(self, upload_id: str) -> Path:
        """An upload arriving (removed if it is cut off)."""
        return self.uploads / f".{upload_id}.partial"

    def kept_uploads(self) -> list[Path]:
        """The ``upload.json`` of every upload kept."""
        return sorted(self.uploads.glob("upload-*/upload.json"))

    def staged_uploads(self) -> list[Path]:
        """Uploads left arriving (by a killed service)."""
        return sorted(self.uploads.glob(".upload-*.partial"))


def _allocate(fd: int, size: int) -> None:
    """Blocks of ``size`` bytes really held by ``fd`` (not a sparse file)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except (AttributeError, OSError) as err:
        if isinstance(err, OSError) and err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    block = b"\0" * 2**20
    for _ in range(size // len(block)):
        os.write(fd, block)
