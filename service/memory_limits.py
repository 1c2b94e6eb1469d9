"""The service process's memory bounded: a smaller oneDNN primitive cache.

oneDNN (torch's CPU kernels) caches a compiled primitive for every input shape it has
seen, up to 1024 of them; clips of every length make every shape new, so the service's
in-process worker kept up to hundreds of MB of primitives it rarely used again (an
in-process probe grew 106-115 KB per extracting job with the default, 34 KB with no
cache). The service keeps 64 (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; the operator's value
wins), at no cost in throughput (``bench/service_throughput.py``: 233 jobs/min against
230 with 1024).

Capping glibc's malloc arenas was tried too (``MALLOC_ARENA_MAX=2``): it left the soak's
growth as it was and cost a tenth of the throughput of jobs that extract, so it is not
done.
"""

from __future__ import annotations

import os

ONEDNN_CACHE = "64"  # primitives; oneDNN's default is 1024


def limit_onednn_cache(capacity: str = ONEDNN_CACHE) -> None:
    """Cap oneDNN's primitive cache (call before torch is imported; the operator's
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` wins)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", capacity)
