"""Summaries and integrity checks of a feature store (``emi store info`` / ``verify``)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from featurestore.spec import fingerprint
from featurestore.store import FeatureStore
from manifests.sources import is_url


def size_on_disk(location: str, *, storage_options: dict | None = None) -> int:
    """Bytes under the store (local walk, or the fsspec filesystem's ``du``)."""
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
        return int(fs.du(path))
    total = 0
    for dirpath, _, files in os.walk(location):
        total += sum(os.path.getsize(Path(dirpath) / f) for f in files)
    return total


def store_info(store: FeatureStore, *, storage_options: dict | None = None) -> dict:
    """Clips, frames, hours, size, spec and failed clips, as a JSON-able dict."""
    frames = 0
    audio_s = 0.0
    for name in store.complete_parts:
        marker = store.part_marker(name)
        frames += int(marker.get("frames", 0))
        if marker.get("clips"):
            audio_s += float(np.sum(store.part_group(name)["duration_s"][...]))
    return {
        "store": store.location,
        "fingerprint": store.fingerprint,
        "clips": len(store),
        "frames": frames,
        "hours_audio": audio_s / 3600.0,
        "hours_extracted": frames / store.spec["frame_rate_hz"] / 3600.0,
        "parts": len(store.complete_parts),
        "incomplete_parts": store.incomplete_parts,
        "size_bytes": size_on_disk(store.location, storage_options=storage_options),
        "spec": store.spec,
        "failed": store.failures,
    }


def verify_store(store: FeatureStore) -> list[str]:
    """Check every part; returns the problems found (empty: the store is sound).

    Checks: parts complete and readable; offsets start at 0, rise, and match frame
    counts and array lengths; per-clip arrays have one row per clip; clip ids unique
    across parts; the root fingerprint matches its spec and every part's; values finite;
    stored means agree with the stored frames (within float16 error).
    """
    problems: list[str] = []
    if fingerprint(store.spec) != store.fingerprint:
        problems.append("root fingerprint does not match the spec it was computed from")
    for name in store.incomplete_parts:
        problems.append(f"part {name}: incomplete (no marker); the next extract rewrites it")
    counts: Counter[str] = Counter()
    width = store.hidden_size
    for name in store.complete_parts:
        marker = store.part_marker(name)
        if marker.get("fingerprint") != store.fingerprint:
            problems.append(f"part {name}: fingerprint {marker.get('fingerprint')} != store's")
        try:
            group = store.part_group(name)
            arrays = {key: group[key][...] for key in group.array_keys()}
        except Exception as err:
            problems.append(f"part {name}: unreadable ({type(err).__name__}: {err})")
            continue
        problems += [f"part {name}: {p}" for p in _check_part(arrays, marker, width)]
        counts.update(str(c) for c in arrays.get("clip_id", []))
    duplicated = sorted(cid for cid, n in counts.items() if n > 1)
    if duplicated:
        problems.append(f"clip ids stored more than once: {duplicated[:10]}")
    return problems


def _check_part(arrays: dict[str, np.ndarray], marker: dict, width: int) -> list[str]:
    expected = {
        "clip_id",
        "source_path",
        "sha256",
        "duration_s",
        "frames",
        "offsets",
        "hidden",
        "frame_vad",
        "hidden_mean",
        "vad_mean",
        "clip_vad",
    }
    lacking = expected - set(arrays)
    if lacking:
        return [f"arrays missing: {sorted(lacking)}"]
    problems = []
    n = len(arrays["clip_id"])
    offsets = arrays["offsets"]
    if marker.get("clips") != n:
        problems.append(f"marker says {marker.get('clips')} clips, arrays hold {n}")
    if len(offsets) != n + 1 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
        problems.append("offsets are not 0, rising, one per clip plus one")
        return problems
    if not np.array_equal(np.diff(offsets), arrays["frames"]):
        problems.append("frames do not equal the offset differences")
    for key, rows, cols in (
        ("hidden", offsets[-1], width),
        ("frame_vad", offsets[-1], 3),
        ("hidden_mean", n, width),
        ("vad_mean", n, 3),
        ("clip_vad", n, 3),
    ):
        if arrays[key].shape != (rows, cols):
            problems.append(f"{key} has shape {arrays[key].shape}, expected {(rows, cols)}")
        elif not np.isfinite(arrays[key]).all():
            problems.append(f"{key} holds non-finite values")
    for key in ("source_path", "sha256", "duration_s", "frames"):
        if len(arrays[key]) != n:
            problems.append(f"{key} has {len(arrays[key])} rows, expected {n}")
    if problems or n == 0:
        return problems
    for row in range(n):
        frames = arrays["hidden"][offsets[row] : offsets[row + 1]].astype(np.float32)
        mean = frames.mean(axis=0)
        scale = 1.0 + float(np.abs(frames).max())
        if np.abs(mean - arrays["hidden_mean"][row]).max() > 2e-3 * scale:
            problems.append(f"clip {arrays['clip_id'][row]}: hidden_mean disagrees with hidden")
    return problems
