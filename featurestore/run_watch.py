"""What a running extraction's driver watches while its parts work: a stop asked for
(``should_stop``: the parts are told through a dask Event, and stop after their current
round) and the parts' progress reports (a dask Queue: one message per round), added up
so progress moves within a part, not in jumps of a part."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

POLL_S = 0.2  # how often a running extraction asks should_stop and reads progress


class RunWatcher:
    """A thread polling every :data:`POLL_S` while the parts run.

    Attributes:
        stop_event: the dask Event's name the parts watch (None: the run cannot stop).
        progress_queue: the dask Queue's name the parts report to (None: no reports).
        stopped: ``should_stop`` answered True.
    """

    def __init__(
        self,
        client,
        run_id: str,
        *,
        should_stop: Callable[[], bool] | None,
        on_progress: Callable[[int, int, float], None] | None,
    ) -> None:
        self.client = client
        self.stop_event = f"emi-stop-{run_id}" if should_stop is not None else None
        self.progress_queue = f"emi-progress-{run_id}" if on_progress is not None else None
        self.stopped = False
        self._should_stop = should_stop
        self._on_progress = on_progress
        self._running: dict[str, dict] = {}  # part -> its last report
        self._committed: set[str] = set()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # the watcher thread and drain() read the queue
        self._done = threading.Event()
        self._queue = None
        self._thread = threading.Thread(target=self._watch, name="emi-run-watch", daemon=True)

    def __enter__(self) -> RunWatcher:
        if self.progress_queue is not None:
            from distributed import Queue

            self._queue = Queue(self.progress_queue, client=self.client)
        if self.stop_event or self._queue is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(Exception):  # a dask Event lives on the scheduler until cleared
            if self.stop_event:
                from distributed import Event

                Event(self.stop_event, client=self.client).clear()
        if self._queue is not None:
            with contextlib.suppress(Exception):
                self._queue.close()

    def drain(self) -> None:
        """Read every report already on the queue now (call it before a finished part's
        clips count as extracted: its last rounds are reported, not skipped)."""
        self._read_progress()

    def committed(self, part: str) -> None:
        """``part`` is committed: its clips count in the summary now, not as running."""
        with self._lock:
            self._committed.add(part)
            self._running.pop(part, None)

    def running(self) -> tuple[int, int, float]:
        """(clips done, clips failed, audio seconds) of the parts still running."""
        with self._lock:
            reports = list(self._running.values())
        return (
            sum(r["clips"] for r in reports),
            sum(r["failed"] for r in reports),
            float(sum(r["audio_s"] for r in reports)),
        )

    def _watch(self) -> None:
        while not self._done.wait(POLL_S):
            self._check_stop()
            self._read_progress()

    def _check_stop(self) -> None:
        if self.stop_event is None or self.stopped:
            return
        try:
            wanted = self._should_stop()
        except Exception:  # noqa: BLE001 - asked again at the next poll
            return
        if wanted:
            from distributed import Event

            self.stopped = True
            Event(self.stop_event, client=self.client).set()

    def _read_progress(self) -> None:
        """Read the reports queued since the last read and pass them on one by one, in
        the order the parts sent them (a poll that finds two rounds shows both)."""
        if self._queue is None:
            return
        with self._reading:
            try:
                reports = self._queue.get(batch=True)
            except Exception:  # noqa: BLE001 - progress is a courtesy: read at the next poll
                return
            for report in reports:
                with self._lock:
                    if report.get("part") in self._committed:
                        continue
                    self._running[report["part"]] = report
                self._on_progress(*self.running())


def progress_reporter(name: str | None):
    """On a worker: a callable putting one round's report on the run's progress queue,
    and a callable closing it (both no-ops where the run asked for no reports)."""
    if name is None:
        return (lambda report: None), (lambda: None)
    from distributed import Queue

    queue = Queue(name)

    def put(report: dict) -> None:
        with contextlib.suppress(Exception):  # progress never fails a part
            queue.put(report)

    def close() -> None:
        with contextlib.suppress(Exception):
            queue.close()

    return put, close
