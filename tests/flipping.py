"""A symbolic link that flips between two targets, for the tests that try to slip an
outside file past a check."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def flipping(link: Path, inside: str, outside: str, stop: threading.Event) -> threading.Thread:
    """A thread swapping ``link`` between ``inside`` and ``outside`` (each swap atomic)
    until ``stop`` is set."""

    def flip() -> None:
        k = 0
        while not stop.is_set():
            spare = link.with_name(f".{link.name}.{k % 2}")
            spare.unlink(missing_ok=True)
            os.symlink(inside if k % 2 else outside, spare)
            os.replace(spare, link)
            k += 1
            time.sleep(0.0002)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    return thread
