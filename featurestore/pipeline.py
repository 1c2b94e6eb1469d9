"""The stages that keep a device fed: decode ahead on threads, write behind on a thread.

A part task (``featurestore.part_task``) runs its stages at once:

1. :func:`decode_ahead`: a pool of ``decode_threads`` threads decodes, resamples and
   normalises the next clips (libsndfile, soxr and numpy release the GIL) while the
   device works; at most ``ahead_seconds`` of audio (by the manifest's durations) is
   decoded but not yet taken.
2. :func:`run_ahead`: the device step, on a thread of its own, in rounds of clips; the
   task's thread assembles a finished round (joins windows, means, the head on the
   mean) while the device encodes the next one.
3. :class:`WriteBehind`: one thread compresses and writes finished rounds; at most
   ``depth`` rounds wait for it.

So the memory of a task is bounded by the audio decoded ahead, the round on the device,
the round being assembled and the ``depth`` rounds waiting to be written (see the
docs/benchmarks.md for the figures), not by the size of the part.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_ahead(
    items: Iterable[Item],
    decode: Callable[[Item], Result],
    *,
    threads: int,
    ahead_seconds: float,
    seconds: Callable[[Item], float],
) -> Iterator[tuple[Item, Result | Exception]]:
    """Yield ``(item, decode(item))`` in order, decoding ahead on ``threads`` threads.

    ``decode`` errors are yielded in place of the result (one clip's failure never
    stops the others). ``threads`` 0 decodes on the caller's thread, in order, when each
    item is taken. Items are submitted while less than ``ahead_seconds`` (by
    ``seconds(item)``) are decoded or decoding, and always ``threads`` items at least.
    """
    if threads <= 0:
        for item in items:
            yield item, _call(decode, item)
        return
    pending: deque[tuple[Item, Future, float]] = deque()
    source = iter(items)
    end = object()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="emi-decode") as pool:
        try:
            exhausted = False
            while True:
                in_flight = sum(s for _, _, s in pending)
                while not exhausted and (len(pending) < threads or in_flight < ahead_seconds):
                    item = next(source, end)
                    if item is end:
                        exhausted = True
                        break
                    pending.append((item, pool.submit(_call, decode, item), seconds(item)))
                    in_flight += pending[-1][2]
                if not pending:
                    return
                item, future, _ = pending.popleft()
                yield item, future.result()
        finally:  # a consumer that stops early: drop what has not started
            for _, future, _ in pending:
                future.cancel()


def _call(decode: Callable, item):
    try:
        return decode(item)
    except Exception as err:  # noqa: BLE001 - reported per item
        return err


def run_ahead(produce: Iterator[Item], *, depth: int = 1) -> Iterator[Item]:
    """Yield the items of ``produce``, advanced on a background thread at most ``depth``
    items ahead of the consumer (so the producer never waits for the consumer's work
    unless ``depth`` items are ready); ``depth`` 0 advances it on the caller's thread.
    An exception of ``produce`` is raised here; a consumer that stops early stops the
    producer at its next item."""
    if depth <= 0:
        yield from produce
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def advance() -> None:
        try:
            for item in produce:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_STOP, None))
        except BaseException as err:  # noqa: BLE001 - raised in the consumer
            ready.put((_STOP, err))
        finally:  # a producer left early releases its threads and buffers here, now
            close = getattr(produce, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=advance, name="emi-device", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _STOP:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer see the stop
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        thread.join()


class WriteBehind:
    """Runs ``write(round)`` for each submitted round on one background thread.

    ``submit`` blocks while ``depth`` rounds are waiting, so memory stays bounded; depth
    0 writes on the caller's thread, at once. The first error of ``write`` is raised by
    the next ``submit`` or by ``close``; after an error later rounds are dropped.
    """

    def __init__(self, write: Callable[[object], None], *, depth: int = 2) -> None:
        self._write = write
        self._error: BaseException | None = None
        self._thread = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._loop, name="emi-write", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is _STOP:
                return
            if self._error is None:
                try:
                    self._write(work)
                except BaseException as err:  # noqa: BLE001 - handed to the caller
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, work: object) -> None:
        """Queue ``work`` (waits while the queue is full)."""
        self._raise()
        if self._thread is None:
            self._write(work)
        else:
            self._queue.put(work)

    def close(self) -> None:
        """Wait for every queued round to be written; raise the first write error."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()


_STOP = object()
