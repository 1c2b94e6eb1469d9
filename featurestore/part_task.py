"""The work of one extraction task: decode a part's clips, encode them, write the part.

Runs on a dask worker. The backbone is loaded once per worker process and kept in a
module-level cache keyed by (model, revision, device): tasks never reload it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from featurestore.audio import AudioError, DecodedClip, decode_clip
from featurestore.backbone import LoadedBackbone, load_backbone
from featurestore.devices import require_device
from featurestore.encode import encode_clips
from featurestore.options import GPU_BATCH_SECONDS
from featurestore.spec import build_spec, fingerprint
from featurestore.store import StoredClip, open_zarr_store, write_part

COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_BACKBONES: dict[tuple, LoadedBackbone] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PartJob:
    """Everything a worker needs to write one part (sent to the worker by dask)."""

    store: str
    part: str
    clips: list[dict]  # clip_id, path, sha256, duration_s
    model: str
    revision: str | None
    device: str
    compute_dtype: str
    fingerprint: str
    batch_seconds: float | None  # None: by device (CPU 0, GPU 120)
    window_seconds: float | None
    max_seconds: float | None
    torch_threads: int | None = None
    storage_options: dict = field(default_factory=dict)


def cached_backbone(job: PartJob, device: str) -> LoadedBackbone:
    """The worker process's backbone for ``job``, loaded on first use."""
    key = (job.model, job.revision, device)
    with _LOCK:
        if key not in _BACKBONES:
            threads = job.torch_threads or int(os.environ.get("EMI_TORCH_THREADS", "0"))
            if threads:
                torch.set_num_threads(threads)
            _BACKBONES.clear()  # one backbone per process: free the previous one
            _BACKBONES[key] = load_backbone(job.model, device=device, revision=job.revision)
        return _BACKBONES[key]


def run_part(job: PartJob) -> dict:
    """Extract and write one part; per-clip problems become failures, not exceptions.

    Returns:
        ``{"part", "record" (to commit), "clips", "frames", "audio_s",
        "failures": [{clip_id, path, reason}]}``. The part is not in the store until
        the driver commits its record.

    Raises:
        RuntimeError: the backbone on this worker does not match the store's spec, or
            the store cannot be written (the driver records the part's clips as failed).
    """
    device = require_device(job.device)
    backbone = cached_backbone(job, device)
    spec = build_spec(
        backbone.identity,
        max_seconds=job.max_seconds,
        window_seconds=job.window_seconds,
        compute_dtype=job.compute_dtype,
    )
    if fingerprint(spec) != job.fingerprint:
        raise RuntimeError(
            f"backbone {job.model!r} on this worker has fingerprint {fingerprint(spec)[:12]}, "
            f"the store expects {job.fingerprint[:12]}: the checkpoint differs between "
            "the driver and this worker"
        )
    failures: list[dict] = []
    kept, decoded = _decode(job, failures)
    batch_seconds = job.batch_seconds
    if batch_seconds is None:  # batching does not pay on a CPU (method.md, pitfalls)
        batch_seconds = GPU_BATCH_SECONDS if device.startswith("cuda") else 0.0
    results = encode_clips(
        backbone.model,
        [d.samples for d in decoded],
        batch_seconds=batch_seconds,
        window_seconds=job.window_seconds,
        device=device,
        dtype=COMPUTE_DTYPES[job.compute_dtype],
    )
    stored, features = _usable(kept, decoded, results, failures)
    del decoded
    record = write_part(
        open_zarr_store(job.store, mode="a", storage_options=job.storage_options),
        job.part,
        spec,
        stored,
        features,
    )
    return {
        "part": job.part,
        "record": record,
        "clips": record["clips"],
        "frames": record["frames"],
        "audio_s": float(sum(c.duration_s for c in stored)),
        "failures": failures,
    }


def _failure(clip: dict, reason: str) -> dict:
    return {"clip_id": clip["clip_id"], "path": clip["path"], "reason": reason}


def _decode(job: PartJob, failures: list[dict]) -> tuple[list[dict], list[DecodedClip]]:
    """The part's clips decoded (the decoder is the authority on a file, whatever the
    manifest's probe said); those that cannot be are added to ``failures``."""
    kept, decoded = [], []
    for clip in job.clips:
        try:
            decoded.append(decode_clip(clip["path"], max_seconds=job.max_seconds))
            kept.append(clip)
        except AudioError as err:
            failures.append(_failure(clip, str(err)))
    return kept, decoded


def _usable(kept, decoded, results, failures: list[dict]):
    """The clips whose encoding succeeded with finite features, as (stored, features);
    the others are added to ``failures``."""
    stored, features = [], []
    for clip, audio, result in zip(kept, decoded, results, strict=True):
        if isinstance(result, Exception):
            failures.append(_failure(clip, str(result)))
            continue
        if not (np.isfinite(result.hidden).all() and np.isfinite(result.frame_vad).all()):
            failures.append(
                _failure(clip, "backbone produced non-finite features (float16 overflow?)")
            )
            continue
        stored.append(
            StoredClip(
                clip_id=clip["clip_id"],
                source_path=clip["path"],
                sha256=clip.get("sha256") or "",
                duration_s=audio.duration_s,
            )
        )
        features.append(result)
    return stored, features
