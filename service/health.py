"""``/readyz`` and ``/healthz`` from checks run in the background.

A kubelet gives a probe one second by default: a probe that asked an object store or a
scheduler itself would time out exactly when one of them hangs. Here each check runs in
a thread of its own every few seconds and keeps its last answer; a probe reads those
answers and never waits. A check that has not answered for ``stale_s`` (it hangs on
its dependency) counts as failing, in words saying for how long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("emi.service")
EVERY_S = 2.0
STALE_S = 10.0

Probe = Callable[[], tuple[bool, str]]  # (passes, words for /readyz)


@dataclass(frozen=True)
class Answer:
    passes: bool
    words: str
    at: float  # time.monotonic() when the check answered


class HealthMonitor:
    """Named checks, each run every ``every_s`` in its own thread (see the module's
    docstring). Checks must catch nothing: an exception fails the check, its words the
    exception's type."""

    def __init__(
        self, probes: dict[str, Probe], *, every_s: float = EVERY_S, stale_s: float = STALE_S
    ) -> None:
        self.probes = probes
        self.every_s = every_s
        self.stale_s = stale_s
        now = time.monotonic()
        self._answers = {name: Answer(False, "starting", now) for name in probes}
        self._stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    def start(self) -> None:
        for name in self.probes:
            thread = threading.Thread(
                target=self._watch, args=(name,), name=f"emi-check-{name}", daemon=True
            )
            thread.start()
            self._threads[name] = thread

    def stop(self) -> None:
        self._stopping.set()

    def alive(self) -> bool:
        """Whether every check's thread runs."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads.values())

    def answers(self) -> dict[str, tuple[bool, str]]:
        """Each check's last answer; one older than ``stale_s`` fails ("no answer for N
        s": its dependency hangs)."""
        now = time.monotonic()
        out = {}
        for name, answer in self._answers.items():
            age = now - answer.at  # since the start, for a check that never answered
            if age > self.stale_s:
                out[name] = (False, f"no answer for {age:.0f} s")
            else:
                out[name] = (answer.passes, answer.words)
        return out

    def _watch(self, name: str) -> None:
        probe = self.probes[name]
        while not self._stopping.is_set():
            try:
                passes, words = probe()
            except Exception as err:  # a failing dependency, not a dead watch
                passes, words = False, type(err).__name__
                if self._answers[name].passes or self._answers[name].words == "starting":
                    log.warning("readiness check %s: %s: %s", name, type(err).__name__, err)
            before = self._answers[name]
            if passes != before.passes and before.words != "starting":
                log.info("readiness check %s: %s -> %s", name, before.words, words)
            self._answers[name] = Answer(passes, words, time.monotonic())
            self._stopping.wait(self.every_s)
