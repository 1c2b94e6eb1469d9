"""The job table: one SQLite database (WAL) under the state folder, the truth about
every job. A job's row is written on each transition and progress step, so a service
killed at any moment restarts knowing what each job was doing.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``; a queued
job cancelled never starts. A job found ``running`` when the service starts (the
service was killed) goes back to ``queued`` and resumes: the store skips what was
committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
KINDS = ("score", "extract", "train")
SCHEMA_VERSION = 1
MAX_FAILURES_KEPT = 10_000  # a job's listed failed clips (the count is always exact)
# a score job that ran: cancelled, it still ends with its finished clips' predictions
_FINISHING = "(kind='score' AND runs>0)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    failures TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    body_sha256 TEXT,
    callback TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
-- /metrics counts jobs by kind and state on every scrape: from this index, not the rows
-- (10 ms a scrape over 14,500 jobs without it, under the table's lock)
CREATE INDEX IF NOT EXISTS jobs_kind_state ON jobs(kind, state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def iso(seconds: float | None) -> str | None:
    """A UTC time as ISO 8601 (``2026-11-29T23:42:31.123Z``)."""
    if seconds is None:
        return None
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_digest(body: dict) -> str:
    """The sha256 of a request body's canonical JSON (for ``Idempotency-Key``)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _number(value, default: float = 0.0) -> float | None:
    """A numeric column, or ``default`` where it holds something else."""
    return value if isinstance(value, int | float) else default


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:20]


@dataclass
class Job:
    """One row of the table."""

    id: str
    kind: str
    state: str
    request: dict
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    result: dict | None = None
    error: dict | None = None
    cancel_requested: bool = False
    runs: int = 0
    callback: dict | None = None
    damaged: list[str] = field(default_factory=list)  # columns of the row not readable

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def failures_count(self) -> int:
        """Clips that failed (exact; the listed ones are at most MAX_FAILURES_KEPT)."""
        counted = self.progress.get("clips_failed") if isinstance(self.progress, dict) else None
        return max(len(self.failures), counted if isinstance(counted, int) else 0)

    def to_api(self) -> dict:
        """The job as the API shows it (times as ISO 8601 UTC)."""
        request = {k: v for k, v in self.request.items() if k != "callback_url"}
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "updated_at": iso(self.updated_at),
            "request": request,
            "progress": self.progress,
            "failures_count": self.failures_count,
            "result": self.result,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "runs": self.runs,
            "callback": self.callback,
        }


class JobTable:
    """Thread-safe access to the job table (one connection, one lock)."""

    def __init__(self, path: Path, *, on_full: Callable[[], bool] | None = None) -> None:
        self.path = path
        self.on_full = on_full  # frees room when the disk is full (True: try again)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row["value"]) != SCHEMA_VERSION:
                from service.errors import ServiceSetupError

                raise ServiceSetupError(
                    f"{path}: job table schema {row['value']}; this emi reads {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """One writing statement (the caller holds the lock). On a full disk the
        state's reserve is freed (``on_full``) and the statement tried again once, so
        a job's end is recorded whatever filled the disk."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as err:
            if not _is_full(err) or self.on_full is None or not self.on_full():
                raise
        return self._db.execute(sql, args)

    # -- reading -------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        """A row as a :class:`Job`; a column that is not the JSON it should be (a damaged
        row) reads as empty, and ``damaged`` names it."""
        damaged: list[str] = []

        def loaded(column: str, empty):
            text = row[column]
            if text is None or text == "":
                return empty
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                damaged.append(column)
                return empty
            if empty is not None and not isinstance(value, type(empty)):
                damaged.append(column)
                return empty
            return value

        job = Job(
            id=row["id"],
            kind=row["kind"] if row["kind"] in KINDS else "score",
            state=row["state"] if row["state"] in STATES else "failed",
            request=loaded("request", {}),
            created_at=_number(row["created_at"]),
            updated_at=_number(row["updated_at"]),
            started_at=_number(row["started_at"], None),
            finished_at=_number(row["finished_at"], None),
            progress=loaded("progress", {}),
            failures=loaded("failures", []),
            result=loaded("result", None),
            error=loaded("error", None),
            cancel_requested=bool(row["cancel_requested"]),
            runs=int(_number(row["runs"])),
            callback=loaded("callback", None),
        )
        for column in ("result", "error", "callback"):
            value = getattr(job, column)
            if value is not None and not isinstance(value, dict):
                damaged.append(column)
                setattr(job, column, None)
        if row["kind"] not in KINDS:
            damaged.append("kind")
        if row["state"] not in STATES:
            damaged.append("state")
        job.damaged = damaged
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> tuple[list[Job], int | None]:
        """Jobs newest first; returns the page and the cursor of the next (or None)."""
        where, args = ["1=1"], []
        if state:
            where.append("state=?")
            args.append(state)
        if kind:
            where.append("kind=?")
            args.append(kind)
        if before is not None:
            where.append("rowid<?")
            args.append(before)
        query = (
            f"SELECT rowid AS seq, * FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY rowid DESC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(query, (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [self._job(r) for r in rows], (rows[-1]["seq"] if more and rows else None)

    def failures(self, job_id: str) -> list[dict] | None:
        """The failed clips listed for a job (None: no such job)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row).failures if row else None

    def finished_before(self, moment: float) -> list[str]:
        """Jobs that ended before ``moment`` (seconds since the epoch)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                "AND finished_at < ?",
                (moment,),
            ).fetchall()
        return [r["id"] for r in rows]

    def sources_in_use(self) -> set[str]:
        """The sources and label files named by queued and running jobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT request FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
        named = set()
        for row in rows:
            try:
                request = json.loads(row["request"])
            except (TypeError, ValueError):
                continue
            if isinstance(request, dict):
                named |= {str(request.get(k)) for k in ("source", "labels", "val_labels")}
        return named

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (kind, state)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state"
            ).fetchall()
        return {(r["kind"], r["state"]): r["n"] for r in rows}

    def by_key(self, key: str) -> tuple[Job, str] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE idempotency_key=?", (key,)).fetchone()
        return (self._job(row), row["body_sha256"]) if row else None

    # -- writing -------------------------------------------------------------------

    def add(
        self,
        kind: str,
        request: dict,
        *,
        idempotency_key: str | None = None,
        job_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; with an ``idempotency_key`` already used for the same body, the
        existing job and False (no second job).

        Raises:
            KeyError: the key was used with another body.
        """
        digest = body_digest(request)
        now = time.time()
        job = Job(
            id=job_id or new_job_id(),
            kind=kind,
            state="queued",
            request=request,
            created_at=now,
            updated_at=now,
            progress={"stage": "queued"},
        )
        with self._lock:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key=?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["body_sha256"] != digest:
                        raise KeyError(idempotency_key)
                    return self._job(row), False
            self._write(
                "INSERT INTO jobs(id, kind, state, request, created_at, updated_at, progress,"
                " idempotency_key, body_sha256) VALUES(?,?,?,?,?,?,?,?,?)",
                (
                    job.id, kind, job.state, json.dumps(request), now, now,
                    json.dumps(job.progress), idempotency_key, digest,
                ),
            )  # fmt: skip
        return job, True

    def claim_next(self) -> Job | None:
        """The oldest queued job, now ``running`` (None when none is queued); a queued
        job whose cancel was asked is never claimed. A queued row that cannot be read (a
        damaged row) ends ``failed`` saying so, and the next is taken."""
        while True:
            now = time.time()
            with self._lock:
                row = self._db.execute(
                    f"SELECT * FROM jobs WHERE state='queued' AND (cancel_requested=0 OR "
                    f"{_FINISHING}) ORDER BY rowid LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                job = self._job(row)
                if job.damaged:
                    error = {
                        "error": "damaged job",
                        "detail": f"this job's row in the job table is damaged ("
                        f"{', '.join(job.damaged)} not readable); it cannot run. Submit it again",
                    }
                    self._write(
                        "UPDATE jobs SET state='failed', finished_at=?, updated_at=?, error=? "
                        "WHERE id=?",
                        (now, now, json.dumps(error), row["id"]),
                    )
                    continue
                self._write(
                    "UPDATE jobs SET state='running', started_at=COALESCE(started_at, ?), "
                    "updated_at=?, runs=runs+1 WHERE id=?",
                    (now, now, row["id"]),
                )
                row = self._db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
            return self._job(row)

    def requeue_running(self) -> list[str]:
        """Jobs left ``running`` by a killed service go back to the queue (resumed first,
        in their order); a score job whose cancel was asked goes back too, to end
        ``cancelled`` with the predictions of the clips it finished (from the store)."""
        with self._lock:
            ids = [
                r["id"]
                for r in self._db.execute(
                    f"SELECT id FROM jobs WHERE state='running' AND (cancel_requested=0 OR "
                    f"{_FINISHING})"
                ).fetchall()
            ]
            self._write(
                "UPDATE jobs SET state='queued', updated_at=? WHERE state='running' "
                f"AND (cancel_requested=0 OR {_FINISHING})",
                (time.time(),),
            )
        return ids

    def cancelled_while_away(self) -> list[str]:
        """Jobs whose cancel was asked but that were left ``running`` or ``queued`` (the
        service stopped first): they end ``cancelled`` now, never run again; score jobs
        that ran are left to finish their cancel (:meth:`requeue_running`)."""
        now = time.time()
        where = f"state IN ('running', 'queued') AND cancel_requested=1 AND NOT {_FINISHING}"
        with self._lock:
            ids = [r["id"] for r in self._db.execute(f"SELECT id FROM jobs WHERE {where}")]
            self._write(
                "UPDATE jobs SET state='cancelled', finished_at=?, updated_at=?, "
                f"progress=json_set(progress, '$.stage', 'cancelled') WHERE {where}",
                (now, now),
            )
        return ids

    def update(self, job_id: str, **fields) -> None:
        """Set columns of a job (dicts and lists stored as JSON)."""
        if not fields:
            return
        fields["updated_at"] = time.time()
        encoded = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
        sets = ", ".join(f"{k}=?" for k in encoded)
        with self._lock:
            self._write(f"UPDATE jobs SET {sets} WHERE id=?", (*encoded.values(), job_id))

    def finish(self, job_id: str, state: str, **fields) -> None:
        self.update(job_id, state=state, finished_at=time.time(), **fields)

    def request_cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop: a queued one is cancelled at once, a running one at its
        next boundary (a score job that ran before, queued again, too: it keeps the
        predictions of the clips it finished); a finished one is left as it is."""
        now = time.time()
        with self._lock:
            self._write(
                "UPDATE jobs SET state='cancelled', cancel_requested=1, finished_at=?, "
                "updated_at=?, progress=json_set(progress, '$.stage', 'cancelled') "
                f"WHERE id=? AND state='queued' AND NOT {_FINISHING}",
                (now, now, job_id),
            )
            self._write(
                "UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=? AND "
                f"(state='running' OR state='queued' AND {_FINISHING})",
                (now, job_id),
            )
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        return bool(row and row["cancel_requested"])

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._write("DELETE FROM jobs WHERE id=?", (job_id,))

    def pending_callbacks(self) -> list[Job]:
        """Finished jobs whose callback is not yet delivered (nor given up)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE callback IS NOT NULL AND "
                "json_extract(callback, '$.status') = 'pending' AND state IN "
                "('succeeded', 'failed', 'cancelled') ORDER BY rowid"
            ).fetchall()
        return [self._job(r) for r in rows]


def _is_full(err: sqlite3.OperationalError) -> bool:
    """SQLite's ``database or disk is full`` (SQLITE_FULL)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code == 13 or "database or disk is full" in str(err)
