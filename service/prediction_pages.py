"""A score job's predictions a page at a time, for one head: filtered by clip id,
sorted by any column, and each target's distribution over all the job's clips
(``GET /v1/jobs/{id}/predictions``; the page reads them this way, not whole)."""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from service.errors import bad_request

BINS = 10  # histogram bins of width 0.1 over [0, 1]
_CACHE: OrderedDict[tuple[str, int], list[dict]] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def read_rows(path: Path) -> list[dict]:
    """The rows of a job's ``predictions.json`` (the last few files read are kept)."""
    key = (str(path), path.stat().st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    rows = json.loads(path.read_text())["predictions"]
    with _LOCK:
        _CACHE[key] = rows
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return rows


def head_columns(rows: list[dict], heads: list[str], head: str) -> dict[str, str]:
    """For ``head`` of the job's ``heads``: target -> its column in the rows (``Joy``
    with one head, ``<head>/Joy`` with several)."""
    columns = [c for c in (rows[0] if rows else {}) if c != "clip_id"]
    if len(heads) == 1:
        return {c: c for c in columns}
    prefix = f"{head}/"
    return {c[len(prefix) :]: c for c in columns if c.startswith(prefix)}


def distribution(values: list[float | None]) -> dict:
    """Count, mean, five-number summary and a 10-bin histogram over [0, 1] of the
    values that are not None (an empty one where none is)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if not len(finite):
        return {"count": 0, "mean": None, "min": None, "q1": None, "median": None,
                "q3": None, "max": None, "histogram": [0] * BINS}  # fmt: skip
    low, q1, median, q3, high = np.percentile(finite, [0, 25, 50, 75, 100])
    counts, _ = np.histogram(np.clip(finite, 0.0, 1.0), bins=BINS, range=(0.0, 1.0))
    return {
        "count": int(len(finite)),
        "mean": float(finite.mean()),
        "min": float(low),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(high),
        "histogram": counts.tolist(),
    }


def prediction_page(
    rows: list[dict],
    heads: list[str],
    *,
    head: str | None,
    offset: int,
    limit: int,
    sort: str,
    order: str,
    clip: str | None,
) -> dict:
    """One page of one head's predictions (see :class:`service.requests.PredictionPage`).

    Raises:
        RequestError: 400 for a head not of this job, or a sort column it lacks.
    """
    head = head or heads[0]
    if head not in heads:
        raise bad_request(f"head {head!r} did not score this job; its heads: {', '.join(heads)}")
    columns = head_columns(rows, heads, head)
    if sort != "clip_id" and sort not in columns:
        raise bad_request(f"sort: {sort!r} is not clip_id or a target ({', '.join(columns)})")
    wanted = clip.casefold() if clip else None
    chosen = [r for r in rows if wanted is None or wanted in r["clip_id"].casefold()]
    if sort == "clip_id":
        chosen.sort(key=lambda r: r["clip_id"], reverse=order == "desc")
    else:
        column = columns[sort]
        valued = [r for r in chosen if r.get(column) is not None]
        unvalued = [r for r in chosen if r.get(column) is None]  # last, either way
        valued.sort(key=lambda r: (r[column], r["clip_id"]), reverse=order == "desc")
        chosen = valued + unvalued
    shown = chosen[offset : offset + limit]
    return {
        "head": head,
        "heads": heads,
        "targets": list(columns),
        "clips": len(rows),
        "total": len(chosen),
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "rows": [
            {"clip_id": r["clip_id"], "values": {t: r.get(c) for t, c in columns.items()}}
            for r in shown
        ],
        "distribution": {t: distribution([r.get(c) for r in rows]) for t, c in columns.items()},
    }
