"""One writer per store: a lease-based lock made of exclusively created objects.

The lock lives in the store as zarr groups ``emi_lock/g<generation>/`` whose attributes
name the holder (host, process, run, since, last heartbeat). A driver holds the lock
by creating the next generation exclusively (``O_EXCL`` locally, an S3 conditional
write ``If-None-Match: *``): of two drivers racing for one generation, exactly one
wins. While it runs, a heartbeat thread rewrites its own generation's ``zarr.json``
every ``lease / 4`` seconds. A lock whose heartbeat is older than the lease (a crashed
driver) is taken over by creating the generation after it; on the same host a holder
whose process is gone is taken over at once. A holder that finds a newer generation
than its own has lost the lock and stops before committing anything. Releasing marks
the generation released and leaves it, so generation numbers only ever grow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid

from featurestore.errors import StoreError, StoreLocked
from featurestore.location import StoreLocation, group_node

LOCK_DIR = "emi_lock"
DEFAULT_LEASE_S = 60.0


def lease_seconds() -> float:
    """The lease (``EMI_LOCK_LEASE_S``, default 60 s)."""
    return float(os.environ.get("EMI_LOCK_LEASE_S", DEFAULT_LEASE_S))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _generation_key(generation: int) -> str:
    return f"{LOCK_DIR}/g{generation:08d}/zarr.json"


def _node(record: dict) -> bytes:
    return group_node({"emi_lock": record})


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """The writer lock of the store at ``location`` (use as a context manager).

    Raises:
        StoreLocked: another driver holds the lock and its heartbeat is fresh.
    """

    def __init__(
        self,
        location: StoreLocation,
        *,
        purpose: str = "extract",
        wait_s: float = 0.0,
        on_wait=None,
        give_up=None,
    ) -> None:
        """``wait_s``: how long to wait for another holder to finish before raising
        :class:`StoreLocked` (0: not at all); ``on_wait(message)`` is called once when
        waiting starts; ``give_up()``, asked each second of the wait, ends it (raising
        :class:`StoreLocked`) once it answers True (a cancelled job)."""
        self.location = location
        self.purpose = purpose
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.give_up = give_up
        self.lease_s = lease_seconds()
        self.run_id = uuid.uuid4().hex[:8]
        self.generation: int | None = None
        self.since = _now()
        self.lost_to: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the holder's record -------------------------------------------------------
    def _record(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": self.run_id,
            "purpose": self.purpose,
            "since": self.since.isoformat(timespec="seconds"),
            "heartbeat_at": _now().isoformat(timespec="seconds"),
            "lease_s": self.lease_s,
        }

    def _generations(self) -> list[int]:
        names = self.location.entries(LOCK_DIR)
        return sorted(int(n[1:]) for n in names if n.startswith("g") and n[1:].isdigit())

    def _read(self, generation: int) -> dict | None:
        try:
            node = json.loads(self.location.read(_generation_key(generation)))
            return node["attributes"]["emi_lock"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return {}  # being written, or damaged: treated as expired below

    def _expired(self, holder: dict) -> bool:
        if not holder or holder.get("released"):
            return True
        try:
            beat = dt.datetime.fromisoformat(holder["heartbeat_at"])
            lease = float(holder.get("lease_s", self.lease_s))
        except (KeyError, ValueError, TypeError):
            return True
        if holder.get("host") == socket.gethostname() and not _process_alive(int(holder["pid"])):
            return True  # a crashed driver on this machine: no need to wait for the lease
        return (_now() - beat).total_seconds() > lease

    # -- acquire, heartbeat, release ------------------------------------------------
    def acquire(self) -> StoreLock:
        # The lock folder is a zarr group itself, so plain zarr sees a valid hierarchy.
        self.location.create(
            f"{LOCK_DIR}/zarr.json",
            group_node({"emi_lock": "writer lock generations (see the README)"}),
        )
        for _ in range(20):
            generations = self._generations()
            current = generations[-1] if generations else 0
            if current:
                holder = self._read(current)
                if holder is None:
                    # released between the listing and the read, being created right now,
                    # or a folder whose creation failed (a full disk, a kill): look again
                    # after a moment, then take the generation after it
                    time.sleep(0.2)
                    if self._read(current) is None and current in self._generations():
                        holder = {}
                    else:
                        continue
                if not self._expired(holder):
                    raise StoreLocked(describe_holder(self.location.url, holder))
            if self.location.create(_generation_key(current + 1), _node(self._record())):
                self.generation = current + 1
                self._forget_older()
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return self
        raise StoreError(f"{self.location.url}: could not take the writer lock (contended)")

    def _forget_older(self) -> None:
        for generation in self._generations():
            if generation < (self.generation or 0):
                self.location.delete(f"{LOCK_DIR}/g{generation:08d}", recursive=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self.check()
            if self.lost_to is not None:
                return
            # A missed heartbeat is harmless; the next one may succeed.
            with contextlib.suppress(OSError):
                self.location.write(_generation_key(self.generation), _node(self._record()))

    def check(self) -> None:
        """Notice a newer generation than ours (our lock was taken over)."""
        if self.generation is None or self.lost_to is not None:
            return
        newer = [g for g in self._generations() if g > self.generation]
        if newer:
            self.lost_to = self._read(newer[-1]) or {"host": "?", "pid": "?"}

    def ensure_held(self) -> None:
        """Raise unless this driver still holds the lock (called before every commit)."""
        self.check()
        if self.lost_to is not None:
            raise StoreLocked(
                f"{self.location.url}: this run lost the writer lock to "
                f"{self.lost_to.get('host')}:{self.lost_to.get('pid')} (its heartbeat "
                f"stopped for more than {self.lease_s:.0f} s?); it stops without committing"
            )

    def release(self) -> None:
        """Mark our generation released (it stays, so generation numbers only grow and
        a stalled former holder always finds a newer one); if the lock was taken over,
        just delete ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None:
            self.check()
            if self.lost_to is None:
                record = {**self._record(), "released": True}
                self.location.write(_generation_key(self.generation), _node(record))
            else:
                self.location.delete(f"{LOCK_DIR}/g{self.generation:08d}", recursive=True)
        self.generation = None

    def acquire_waiting(self) -> StoreLock:
        """:meth:`acquire`, retried once a second for up to ``wait_s`` seconds while
        another driver holds the lock."""
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            try:
                return self.acquire()
            except StoreLocked as err:
                if time.monotonic() >= deadline or (self.give_up and self.give_up()):
                    raise
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting for the writer lock: {str(err).split('. One', 1)[0]}")
                    told = True
                time.sleep(1.0)

    def __enter__(self) -> StoreLock:
        return self.acquire_waiting()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(url: str, holder: dict) -> str:
    """The refusal message: who holds the lock, since when, and what to do."""
    beat = holder.get("heartbeat_at", "?")
    try:
        age = f"{(_now() - dt.datetime.fromisoformat(beat)).total_seconds():.0f} s ago"
    except (TypeError, ValueError):
        age = "at an unknown time"
    return (
        f"{url} is being written by another `emi {holder.get('purpose', 'extract')}` "
        f"(host {holder.get('host', '?')}, process {holder.get('pid', '?')}, since "
        f"{holder.get('since', '?')}, last heartbeat {age}). One writer at a time: wait "
        f"for it to finish; a lock whose holder stopped is taken over {holder.get('lease_s', '?')}"
        " s after its last heartbeat, at once on the same host."
    )
