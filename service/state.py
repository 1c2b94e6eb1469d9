"""The service's state folder (``emi serve --state``): the job table, uploads, results.

Layout::

    STATE/emi-service.json   marker: this folder is an emi service's (format 1)
    STATE/jobs.sqlite        the job table (SQLite, WAL): the truth about every job
    STATE/serve.lock         held (flock) by the one service process using the folder
    STATE/uploads/<id>/      uploaded files, streamed to disk
    STATE/results/<job>/     predictions.csv and predictions.json of score jobs

A new or empty folder is made into a state folder; a folder holding anything else is
refused, so a mistyped ``--state`` never mixes jobs into someone's files.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from service.errors import ServiceSetupError

MARKER = "emi-service.json"
FORMAT = 1
KNOWN = {
    MARKER,
    "jobs.sqlite",
    "jobs.sqlite-wal",
    "jobs.sqlite-shm",
    "jobs.sqlite-journal",
    "serve.lock",
    "uploads",
    "results",
}


class StateFolder:
    """An opened state folder; :meth:`hold` takes it for this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_file = None

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

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def results(self) -> Path:
        return self.root / "results"
