"""A score job's clips as the page opens them: the clip's audio (read beneath its
source root or upload, with HTTP range requests), its frame-level valence, arousal and
dominance from the store, and every head's six intensities.

A score job keeps an index of the clips it listed (``results/<job>/clips.json``: per
clip id its file, content sha256, duration, and the store key of its features); only
those clips, of a job the caller can read, are served.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path

import numpy as np

from manifests.atomic import atomic_file
from manifests.beneath import OutsideRoot, open_beneath, relative_below
from service.config import ServiceConfig, is_url
from service.errors import RequestError, not_found

MAX_CURVE_POINTS = 600  # frame VAD points sent per clip (blocks of frames averaged)
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
               ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4",
               ".aac": "audio/aac", ".webm": "audio/webm", ".mp4": "video/mp4"}  # fmt: skip


def index_path(config: ServiceConfig, job_id: str) -> Path:
    return config.state_folder.job_results(job_id) / "clips.json"


def write_clip_index(
    config: ServiceConfig,
    job_id: str,
    records: list,
    features_at: dict[str, tuple[str, str]],
    fingerprint: str,
) -> None:
    """Keep the clips a score job listed: file, sha256 and seconds each, and where its
    features were read (``features_at``: clip id -> (store location, its id there);
    none for a clip that failed), of the set ``fingerprint``."""
    folder = config.state_folder.job_results(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    clips = {
        r.clip_id: {
            "path": r.path,
            "sha256": r.sha256,
            "duration_s": r.duration_s,
            "store": features_at.get(r.clip_id, (None, None))[0],
            "key": features_at.get(r.clip_id, (None, None))[1],
        }
        for r in records
    }
    with atomic_file(index_path(config, job_id)) as temporary:
        temporary.write_text(json.dumps({"fingerprint": fingerprint, "clips": clips}))


def _indexed(config: ServiceConfig, job_id: str, clip_id: str) -> dict:
    """The index entry of ``clip_id`` in job ``job_id``.

    Raises:
        RequestError: 404, the job kept no index (an earlier version's, or removed
            past the keep time) or the clip is not one of its clips.
    """
    try:
        index = json.loads(index_path(config, job_id).read_text())
        index["clips"]
    except (OSError, ValueError, KeyError, TypeError):
        raise not_found(
            f"job {job_id} keeps no clip index (scored before clips could be opened, or "
            "its results were removed); score the audio again to open its clips"
        ) from None
    entry = index["clips"].get(clip_id)
    if entry is None:
        raise not_found(f"clip {clip_id!r} is not a clip of job {job_id}")
    return {**entry, "fingerprint": index.get("fingerprint")}


def frame_curves(frames: np.ndarray, frame_rate_hz: float) -> tuple[list[float], np.ndarray]:
    """``(seconds, values)`` of ``(frames, 3)`` VAD frames, averaged over blocks so at
    most :data:`MAX_CURVE_POINTS` points remain (each at its block's middle)."""
    frames = np.asarray(frames, np.float64)
    block = max(1, int(np.ceil(len(frames) / MAX_CURVE_POINTS)))
    count = int(np.ceil(len(frames) / block)) if len(frames) else 0
    values = (
        np.stack([frames[i * block : (i + 1) * block].mean(0) for i in range(count)])
        if count
        else np.zeros((0, frames.shape[1] if frames.ndim == 2 else 3))
    )
    seconds = [
        round(((i * block) + min(block, len(frames) - i * block) / 2) / frame_rate_hz, 3)
        for i in range(count)
    ]
    return seconds, values


def clip_view(config: ServiceConfig, job, clip_id: str, predictions: dict) -> dict:
    """``GET /v1/jobs/{id}/clip``: the clip's file (as a client names it), seconds, its
    frame VAD curves from the store (``None`` where the store no longer holds them) and
    ``predictions`` (per head, per target)."""
    from featurestore.store import FeatureStore
    from service.sources import public_path

    entry = _indexed(config, job.id, clip_id)
    curves, labels, rate = None, [], None
    try:
        whole = FeatureStore.open(entry["store"])
        opened = whole.set_for_fingerprint(entry["fingerprint"]) or whole
        rate = float(opened.spec.frame_rate_hz)
        labels = list(opened.spec.vad_labels)
        seconds, values = frame_curves(opened.frame_vad(entry["key"]), rate)
        curves = {
            "seconds": seconds,
            **{n: values[:, k].round(4).tolist() for k, n in enumerate(labels)},
        }
    except Exception:  # noqa: BLE001 (gone, damaged or rewritten since: the curves only)
        curves = None
    return {
        "job": job.id,
        "clip_id": clip_id,
        "file": public_path(config, entry["path"]),
        "duration_s": entry.get("duration_s"),
        "audio": f"/v1/jobs/{job.id}/clip/audio?clip_id={_quoted(clip_id)}",
        "audio_playable": not is_url(entry["path"]),
        "frame_rate_hz": rate,
        "vad_labels": labels,
        "frame_vad": curves,
        "predictions": predictions,
    }


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def open_clip_audio(config: ServiceConfig, job_id: str, clip_id: str) -> tuple[int, int, str]:
    """The clip's file opened beneath the source root or upload folder it lies in (a
    link leading out is refused): ``(descriptor, size, media type)``; the caller closes
    the descriptor.

    Raises:
        RequestError: 404 (not a clip of the job, gone, or an s3:// source), 403 (the
            file now resolves outside its root).
    """
    from service.sources import uploads_root

    path = _indexed(config, job_id, clip_id)["path"]
    if is_url(path):
        raise not_found(f"clip {clip_id!r} is in object storage; its audio is not served here")
    roots = [r for r in config.source_roots if not is_url(r)] + [uploads_root(config)]
    for root in roots:
        relative = relative_below(path, root)
        if relative is None:
            continue
        try:
            fd, _ = open_beneath(root, relative, os.O_RDONLY)
        except OutsideRoot:
            raise RequestError(
                403, "forbidden", f"clip {clip_id!r} now resolves outside its root"
            ) from None
        except OSError:
            raise not_found(
                f"clip {clip_id!r}: its file is gone (moved, or past the keep time)"
            ) from None
        size = os.fstat(fd).st_size
        suffix = Path(path).suffix.lower()
        media = (
            AUDIO_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"
        )
        return fd, size, media
    raise not_found(f"clip {clip_id!r}: its file is below no source root now")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range ``bytes=a-b`` (or ``a-``, ``-n``) asks for, as ``(first, last)``
    within ``size``; None for no header, several ranges or one that is malformed
    (the whole file is sent).

    Raises:
        RequestError: 416 for a range that starts past the end.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":
            count = int(last)
            if count <= 0:
                return None
            return max(0, size - count), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or start < 0:
        raise RequestError(416, "range not satisfiable", f"bytes {start}- of a {size}-byte file",
                           headers={"Content-Range": f"bytes */{size}"})  # fmt: skip
    if end < start:
        return None
    return start, min(end, size - 1)
