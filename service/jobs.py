"""The job table: one SQLite database (WAL) under the state folder, the truth about
every job. A job's row is written on each transition and progress step, so a service
killed at any moment restarts knowing what each job was doing.

The states and the moves between them are :data:`TRANSITIONS`; every move is a
compare-and-set (:meth:`JobTable.transition` names the states it expects), so of two
racing moves one wins and the other learns it lost::

    queued -> running -> succeeded | failed
    queued -> cancelled                      (cancelled before it started)
    running -> cancelling -> cancelled       (stopped at its next boundary)
    running | cancelling -> queued           (the service stopped: resumed at its start)

A kind whose cancelled run keeps what it finished (score: the predictions of its
finished clips) and that ran before goes back to the queue when its cancel comes
while the service is away, and ``queued -> cancelling`` when it is taken again.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class JobState(str, enum.Enum):
    """Where a job is in its life."""

    queued = "queued"
    running = "running"
    cancelling = "cancelling"  # running, asked to stop: ends at its next boundary
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
CANCELABLE_STATES = frozenset({JobState.queued, JobState.running, JobState.cancelling})
RUNNING_STATES = frozenset({JobState.running, JobState.cancelling})  # a job thread has it
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset(
        {JobState.running, JobState.cancelling, JobState.cancelled, JobState.failed}
    ),
    JobState.running: frozenset(
        {JobState.succeeded, JobState.failed, JobState.cancelling, JobState.queued}
    ),
    JobState.cancelling: frozenset(
        {JobState.cancelled, JobState.succeeded, JobState.failed, JobState.queued}
    ),
    **{state: frozenset() for state in FINISHED_STATES},
}
STATE_NAMES = tuple(state.value for state in JobState)
SCHEMA_VERSION = 1
MAX_FAILURES_KEPT = 10_000  # a job's listed failed clips (the count is always exact)

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


def utc(seconds: float | None) -> dt.datetime | None:
    """Seconds since the epoch as an aware UTC datetime (None stays None)."""
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def body_digest(body: dict) -> str:
    """The sha256 of a request body's canonical JSON (for ``Idempotency-Key``)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _number(value, default: float | None = 0.0) -> float | None:
    """A numeric column, or ``default`` where it holds something else."""
    return value if isinstance(value, int | float) else default


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:20]


def _states(states: Iterable[JobState]) -> str:
    """SQL list of states (from the enum only: never a caller's text)."""
    return ", ".join(f"'{JobState(s).value}'" for s in states)


_UNFINISHED = _states(CANCELABLE_STATES)
_FINISHED = _states(FINISHED_STATES)


class KindLookup(Protocol):
    """The registry of job kinds as the table reads it (:class:`service.kinds.KindRegistry`)."""

    names: tuple[str, ...]

    def __iter__(self) -> Any: ...

    def __getitem__(self, name: str) -> Any: ...

    def get(self, name: Any) -> Any: ...


class StateConflict(Exception):
    """A transition that is not in :data:`TRANSITIONS` (a bug in the caller)."""


@dataclass
class Job:
    """One row of the table; ``request``, ``progress`` and ``result`` are the kind's
    models (None where the row's column could not be read: ``damaged`` names it)."""

    id: str
    kind: str
    state: JobState
    request: Any
    created_at: float
    updated_at: float
    progress: Any = None
    started_at: float | None = None
    finished_at: float | None = None
    failures: list = field(default_factory=list)
    result: Any = None
    error: dict | None = None
    cancel_requested: bool = False
    runs: int = 0
    callback: dict | None = None
    damaged: list[str] = field(default_factory=list)  # columns of the row not readable

    @property
    def final(self) -> bool:
        return self.state.finished

    @property
    def failures_count(self) -> int:
        """Clips that failed (exact; the listed ones are at most MAX_FAILURES_KEPT)."""
        counted = getattr(self.progress, "clips_failed", None)
        return max(len(self.failures), counted if isinstance(counted, int) else 0)


class JobTable:
    """Thread-safe access to the job table (one connection, one lock). ``kinds`` reads
    each row's request, progress and result back into its kind's models."""

    def __init__(
        self,
        path: Path,
        kinds: KindLookup,
        *,
        on_full: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self.kinds = kinds
        self.on_full = on_full  # frees room when the disk is full (True: try again)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # a job of these kinds that ran keeps what it finished when cancelled: its
        # cancel is finished by a run (names from the registry, never a caller's text)
        finishing = ", ".join(f"'{k.name}'" for k in kinds if k.keeps_partial_on_cancel)
        self._finishing = f"(kind IN ({finishing}) AND runs>0)" if finishing else "0"
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

    def _job(self, row: sqlite3.Row) -> Job:
        """A row as a :class:`Job`; a column that is not what it should be (a damaged
        row) reads as None or empty, and ``damaged`` names it."""
        damaged: list[str] = []
        kind = self.kinds.get(row["kind"])
        if kind is None:
            damaged.append("kind")
        try:
            state = JobState(row["state"])
        except ValueError:
            state = JobState.failed
            damaged.append("state")

        def loaded(column: str, model=None, empty=None):
            text = row[column]
            if text is None or text == "":
                return empty
            try:
                value = json.loads(text)
                if model is not None:
                    return model.model_validate(value)
            except ValueError:  # not JSON, or not the kind's model (pydantic's too)
                damaged.append(column)
                return empty
            if not isinstance(value, type(empty) if empty is not None else dict):
                damaged.append(column)
                return empty
            return value

        job = Job(
            id=row["id"],
            kind=kind.name if kind is not None else self.kinds.names[0],
            state=state,
            request=loaded("request", kind.request if kind else None),
            progress=loaded("progress", kind.progress if kind else None),
            result=loaded("result", kind.result if kind else None),
            created_at=_number(row["created_at"]),
            updated_at=_number(row["updated_at"]),
            started_at=_number(row["started_at"], None),
            finished_at=_number(row["finished_at"], None),
            failures=loaded("failures", empty=[]),
            error=loaded("error"),
            cancel_requested=bool(row["cancel_requested"]),
            runs=int(_number(row["runs"])),
            callback=loaded("callback"),
            damaged=damaged,
        )
        if job.progress is None:
            job.progress = (kind or self.kinds[job.kind]).progress()
        if job.request is None and "request" not in damaged:
            damaged.append("request")
        return job

    def _row(self, job_id: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._row(job_id)
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
            args.append(str(state))
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
        job = self.get(job_id)
        return job.failures if job else None

    def finished_before(self, moment: float) -> list[str]:
        """Jobs that ended before ``moment`` (seconds since the epoch)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({_FINISHED}) AND finished_at < ?",
                (moment,),
            ).fetchall()
        return [r["id"] for r in rows]

    def sources_in_use(self) -> set[str]:
        """The sources and label files named by jobs not yet finished."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT kind, request FROM jobs WHERE state IN ({_UNFINISHED})"
            ).fetchall()
        named: set[str] = set()
        for row in rows:
            kind = self.kinds.get(row["kind"])
            try:
                request = json.loads(row["request"])
            except (TypeError, ValueError):
                continue
            if kind is not None and isinstance(request, dict):
                named |= {str(request.get(k)) for k in kind.source_fields if request.get(k)}
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

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        return bool(row and row["cancel_requested"])

    def pending_callbacks(self) -> list[Job]:
        """Finished jobs whose callback is not yet delivered (nor given up)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE callback IS NOT NULL AND "
                f"json_extract(callback, '$.status') = 'pending' AND state IN ({_FINISHED}) "
                "ORDER BY rowid"
            ).fetchall()
        return [self._job(r) for r in rows]

    # -- moves between states (each a compare-and-set) ----------------------------

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
        progress = self.kinds[kind].progress().model_dump_json()
        with self._lock:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key=?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["body_sha256"] != digest:
                        raise KeyError(idempotency_key)
                    return self._job(row), False
            new_id = job_id or new_job_id()
            self._write(
                "INSERT INTO jobs(id, kind, state, request, created_at, updated_at, progress,"
                " idempotency_key, body_sha256) VALUES(?,?,?,?,?,?,?,?,?)",
                (
                    new_id,
                    kind,
                    JobState.queued.value,
                    json.dumps(request),
                    now,
                    now,
                    progress,
                    idempotency_key,
                    digest,
                ),
            )
            row = self._row(new_id)
        return self._job(row), True

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: Collection[JobState],
        error: dict | None = None,
        result: Any = None,
    ) -> bool:
        """Move a job to ``to`` if its state is one of ``expect`` (compare-and-set);
        False where it was not (another move won). Moving to a finished state sets
        ``finished_at`` and the progress's stage; taking a queued job sets
        ``started_at`` (the first time) and counts the run; ``cancelling`` records the
        cancel; ``error`` and ``result`` (a kind's result model) are written with it.

        Raises:
            StateConflict: a move :data:`TRANSITIONS` does not have.
        """
        to = JobState(to)
        expected = [JobState(s) for s in expect]
        wrong = [s for s in expected if to not in TRANSITIONS[s]]
        if wrong or not expected:
            raise StateConflict(f"job {job_id}: no move {wrong or 'from nothing'} -> {to}")
        now = time.time()
        sets, args = ["state=?", "updated_at=?"], [to.value, now]
        if to.finished:
            # a damaged row's progress (not JSON) is replaced, never a reason to fail
            sets += [
                "finished_at=?",
                "progress=CASE WHEN json_valid(progress) THEN json_set(progress, '$.stage', ?) "
                "ELSE json_object('stage', ?) END",
            ]
            args += [now, to.value, to.value]
        if to in RUNNING_STATES and JobState.queued in expected:
            sets += ["started_at=COALESCE(started_at, ?)", "runs=runs+1"]
            args.append(now)
        if to in (JobState.cancelling, JobState.cancelled):
            sets.append("cancel_requested=1")
        if error is not None:
            sets.append("error=?")
            args.append(json.dumps(error))
        if result is not None:
            sets.append("result=?")
            args.append(_json(result))
        with self._lock:
            cursor = self._write(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND state IN ({_states(expected)})",
                (*args, job_id),
            )
        return cursor.rowcount == 1

    def claim_next(self) -> Job | None:
        """The oldest queued job, now ``running`` (None when none is queued); a queued
        job whose cancel was asked is taken only to finish its cancel (``cancelling``:
        a kind that keeps what it finished). A queued row that cannot be read (a
        damaged row) ends ``failed`` saying so, and the next is taken."""
        while True:
            with self._lock:
                row = self._db.execute(
                    f"SELECT * FROM jobs WHERE state='queued' AND (cancel_requested=0 OR "
                    f"{self._finishing}) ORDER BY rowid LIMIT 1"
                ).fetchone()
            if row is None:
                return None
            job = self._job(row)
            if job.damaged:
                self.transition(
                    job.id,
                    JobState.failed,
                    expect=[JobState.queued],
                    error={
                        "error": "damaged job",
                        "detail": f"this job's row in the job table is damaged ("
                        f"{', '.join(job.damaged)} not readable); it cannot run. Submit it again",
                    },
                )
                continue
            to = JobState.cancelling if job.cancel_requested else JobState.running
            if self.transition(job.id, to, expect=[JobState.queued]):
                return self.get(job.id)

    def requeue_running(self) -> list[str]:
        """Jobs left running by a killed service go back to the queue (resumed first,
        in their order); a job cancelling that keeps what it finished goes back too, to
        end ``cancelled`` with it."""
        where = f"state='running' OR (state='cancelling' AND {self._finishing})"
        return self._move_all(where, JobState.queued, RUNNING_STATES)

    def cancelled_while_away(self) -> list[str]:
        """Jobs whose cancel was asked but that were left unfinished (the service
        stopped first): they end ``cancelled`` now, never run again; those that keep
        what they finished are left to finish their cancel (:meth:`requeue_running`)."""
        where = (
            f"state IN ('cancelling', 'queued') AND cancel_requested=1 AND NOT {self._finishing}"
        )
        expect = (JobState.queued, JobState.cancelling)
        return self._move_all(where, JobState.cancelled, expect)

    def _move_all(self, where: str, to: JobState, expect: Collection[JobState]) -> list[str]:
        """Move every job matching ``where`` to ``to`` (at the service's start)."""
        with self._lock:
            ids = [r["id"] for r in self._db.execute(f"SELECT id FROM jobs WHERE {where}")]
        return [job_id for job_id in ids if self.transition(job_id, to, expect=expect)]

    def request_cancel(self, job_id: str) -> tuple[Job, JobState | None] | None:
        """Ask a job to stop; the job and the state its cancel moved it to (None: no
        move). A queued job is cancelled at once; a running one goes ``cancelling``
        and ends at its next boundary; one already cancelling, or queued to finish its
        cancel, stays as it is (asked again). A finished one is left as it is: the
        caller refuses it. None: no such job."""
        for _ in range(3):  # a move lost to the runner's own is tried from the new state
            job = self.get(job_id)
            if job is None:
                return None
            if job.final or job.state is JobState.cancelling:
                return job, None
            if job.state is JobState.running:
                if self.transition(job_id, JobState.cancelling, expect=[JobState.running]):
                    return self.get(job_id), JobState.cancelling
                continue
            with self._lock:  # queued: cancelled, or marked to finish its cancel
                finishing = self._write(
                    f"UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=? AND "
                    f"state='queued' AND {self._finishing}",
                    (time.time(), job_id),
                ).rowcount
            if finishing:
                return self.get(job_id), None
            if self.transition(job_id, JobState.cancelled, expect=[JobState.queued]):
                return self.get(job_id), JobState.cancelled
        return self.get(job_id), None

    # -- what a job reports while it runs -------------------------------------------

    def set_progress(self, job_id: str, progress: Any) -> None:
        """A job's progress (its kind's progress model)."""
        self._set(job_id, "progress", _json(progress))

    def set_failures(self, job_id: str, failures: list[dict]) -> None:
        """A job's failed clips (``clip_id``, ``path``, ``reason``)."""
        self._set(job_id, "failures", json.dumps(failures[:MAX_FAILURES_KEPT]))

    def set_result(self, job_id: str, result: Any) -> None:
        """A job's result before it ends (a score job's partial predictions)."""
        self._set(job_id, "result", _json(result))

    def set_callback(self, job_id: str, callback: dict) -> None:
        """A finished job's callback delivery: url, status, attempts, last error."""
        self._set(job_id, "callback", json.dumps(callback))

    def _set(self, job_id: str, column: str, text: str) -> None:
        assert column in ("progress", "failures", "result", "callback")
        with self._lock:
            self._write(
                f"UPDATE jobs SET {column}=?, updated_at=? WHERE id=?", (text, time.time(), job_id)
            )

    def delete(self, job_id: str) -> bool:
        """Forget a finished job; False where it is not finished (or not there)."""
        with self._lock:
            cursor = self._write(
                f"DELETE FROM jobs WHERE id=? AND state IN ({_FINISHED})", (job_id,)
            )
        return cursor.rowcount == 1


def _json(value: Any) -> str:
    """A model or plain value as JSON text."""
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return json.dumps(value)


def _is_full(err: sqlite3.OperationalError) -> bool:
    """SQLite's ``database or disk is full`` (SQLITE_FULL)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code == 13 or "database or disk is full" in str(err)
