"""The service process's memory bounded: fewer glibc malloc arenas, a smaller oneDNN
primitive cache.

glibc gives each thread that allocates concurrently an arena of its own, up to eight
per CPU, and memory freed in one arena is not reused by another. The service runs many
short-lived allocations on many threads (the HTTP thread pool, job threads, dask's
in-process worker), so its resident memory crept up job after job: 27 KB per job over
3,000 score jobs (``bench/soak.py``), none of it Python objects. Two arenas stop that
(measured flat) at no cost in throughput. The dask workers, which decode and compute on
threads of their own, keep glibc's default.

oneDNN (torch's CPU kernels) caches a compiled primitive for every input shape it has
seen, up to 1024 of them; clips of every length make every shape new, so the service's
in-process worker kept up to hundreds of MB of primitives it rarely used again. The
service keeps 64 (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; the operator's value wins).
"""

from __future__ import annotations

import ctypes
import os
import sys

ONEDNN_CACHE = "64"  # primitives; oneDNN's default is 1024
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
SERVICE_ARENAS = 2


def limit_malloc_arenas(arenas: int = SERVICE_ARENAS) -> bool:
    """Cap this process's malloc arenas at ``arenas`` (call before threads start);
    False where it does not apply: not glibc, or ``MALLOC_ARENA_MAX`` already set by the
    operator (theirs wins)."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl and others: no glibc mallopt
        return False


def limit_onednn_cache(capacity: str = ONEDNN_CACHE) -> None:
    """Cap oneDNN's primitive cache (before torch is imported; the operator's
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` wins)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", capacity)
