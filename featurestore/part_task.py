"""The work of one extraction task: decode a part's clips, encode them, write the part.

Runs on a dask worker. The backbone is loaded once per worker process and kept in a
module-level cache keyed by (model, revision, device): tasks never reload it.

The stages overlap (``featurestore.pipeline``): threads decode the next clips, a
device thread encodes the current round of clips, the task's thread assembles the
round before (windows joined, means, the head on the mean), and a thread compresses
and writes the rounds already assembled. A part's first round is short (the device starts
after :data:`FIRST_ROUND_SECONDS` of audio are decoded), later rounds double up to one
batch (``batch_seconds``, at least :data:`MIN_ROUND_SECONDS`); parts hold clips of
similar lengths, longest first, so rounds in arrival order batch with little padding.
The features of a clip do not depend on its round.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from featurestore.audio import SAMPLE_RATE_HZ, AudioError, DecodedClip, decode_clip
from featurestore.backbone import LoadedBackbone, load_backbone
from featurestore.devices import require_device
from featurestore.encode import (
    BatchEncoder,
    ClipFeatures,
    assemble_clips,
    encode_rounds,
    segments_of,
)
from featurestore.options import GPU_BATCH_SECONDS
from featurestore.pipeline import WriteBehind, available_cpus, decode_ahead, run_ahead
from featurestore.records import ClipFailure
from featurestore.run_watch import progress_reporter
from featurestore.spec import build_spec, fingerprint
from featurestore.store import PartRecord, PartWriter, StoredClip, open_zarr_store
from manifests.records import planning_seconds

COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

FIRST_ROUND_SECONDS = 10.0  # audio of a part's first round: the device starts early
MIN_ROUND_SECONDS = 30.0  # rounds then double up to max(this, batch_seconds)
WRITE_DEPTH = 2  # encoded rounds that may wait for the writer

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
    decode_threads: int | None = None  # None: see decode_threads_for
    layers: tuple[int, ...] = ()  # the spec's stored layers (): the last only
    parts_path: str = "parts"  # the feature set's part folders, relative to the store
    stop_event: str | None = None  # a dask Event's name: once set, the part stops
    resolved_paths: bool = False  # paths resolved at listing: links swapped in are refused
    progress_queue: str | None = None  # a dask Queue's name: one report per round


def _stop_signal(name: str | None):
    """A callable answering whether the driver asked the run to stop (a cancelled job),
    through the dask Event ``name``; None where the run cannot be stopped. The Event is
    made here, on the task's thread, so the device thread may ask it too."""
    if name is None:
        return None
    from distributed import Event

    event = Event(name)
    return event.is_set


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


def decode_threads_for(job: PartJob, device: str) -> int:
    """Decoding threads for ``job``: the job's setting, ``EMI_DECODE_THREADS``, else on
    a GPU the worker's torch threads (``EMI_TORCH_THREADS``) or every CPU this process
    may use, and on a CPU 0 (the forward pass is nearly all the work there, and threads
    beside torch's own slow it down more than overlapping saves)."""
    for value in (job.decode_threads, os.environ.get("EMI_DECODE_THREADS")):
        if value not in (None, ""):
            return max(0, int(value))
    if not device.startswith("cuda"):
        return 0
    # A worker's CPU share: what torch was given, else the CPUs this process may use
    # (in a container that is often the whole node: set EMI_DECODE_THREADS there).
    return job.torch_threads or int(os.environ.get("EMI_TORCH_THREADS") or 0) or available_cpus()


@dataclass
class PartResult:
    """What one part's task hands back to the driver.

    Attributes:
        part: the part's name.
        record: its record, to commit (None: skipped).
        clips, frames: stored in it.
        frames_computed: frames the backbone ran, padding included (a stand-in
            encoder may not count).
        audio_s: audio seconds of its stored clips.
        failures: its clips that failed (``clip_id``, ``path``, ``reason``).
        stopped: the run's stop came while it ran: it holds the clips finished.
        skipped: the run's stop came before it started: nothing was done.
    """

    part: str
    record: PartRecord | None = None
    clips: int = 0
    frames: int = 0
    frames_computed: int = 0
    audio_s: float = 0.0
    failures: list[ClipFailure] = field(default_factory=list)
    stopped: bool = False
    skipped: bool = False


def run_part(job: PartJob, *, encoder: BatchEncoder | None = None) -> PartResult:
    """Extract and write one part; per-clip problems become failures, not exceptions.

    Args:
        job: the part.
        encoder: the device step, with the ``identity`` of its backbone; None: the
            worker's backbone on ``job.device`` (benchmarks and tests pass a stand-in).

    Returns:
        The part's result; the part is not in the store until the driver commits its
        record. Once ``job.stop_event`` is set, a part not started is ``skipped``,
        and a running one stops before its next round: its record holds the clips
        finished (``stopped``).

    Raises:
        RuntimeError: the backbone on this worker does not match the store's spec, or
            the store cannot be written (the driver records the part's clips as failed).
    """
    stop_requested = _stop_signal(job.stop_event)
    if stop_requested is not None and stop_requested():
        return PartResult(job.part, skipped=True)
    device = require_device(job.device)
    encoder, spec = _encoder_for(job, device, encoder)
    batch_seconds = job.batch_seconds
    if batch_seconds is None:  # batching does not pay on a CPU (docs/benchmarks.md)
        batch_seconds = GPU_BATCH_SECONDS if device.startswith("cuda") else 0.0
    round_seconds = max(MIN_ROUND_SECONDS, batch_seconds)
    part = PartWriter(
        open_zarr_store(job.store, mode="a", storage_options=job.storage_options),
        job.part,
        spec,
        job.parts_path,
    )
    # On a CPU the stages run in turn (the forward pass is nearly all the work, and
    # threads beside torch's own slow it); on a GPU they overlap.
    threads = decode_threads_for(job, device)
    overlap = device.startswith("cuda") or threads > 0
    writer = WriteBehind(lambda work: part.append(*work), depth=WRITE_DEPTH if overlap else 0)
    failures: list[dict] = []
    audio_s, done = 0.0, 0
    stopped = False
    report, close_reports = progress_reporter(job.progress_queue)
    computed_before = getattr(encoder, "frames_computed", 0)

    def planned() -> Iterator[tuple[list, list, list]]:
        nonlocal stopped
        for batch in _rounds(job, threads, round_seconds, failures):
            if stop_requested is not None and stop_requested():
                stopped = True  # the rounds done so far are written and committed
                return
            audio = [decoded.samples for _, decoded in batch]
            yield batch, audio, segments_of(audio, window_seconds=job.window_seconds)

    # The device thread runs the decoded rounds through the device, one batch in
    # flight across rounds; this thread assembles finished rounds and hands them on.
    device_rounds = encode_rounds(encoder, planned(), batch_seconds=batch_seconds)
    try:
        for batch, outputs in run_ahead(device_rounds, depth=1 if overlap else 0):
            results = assemble_clips(encoder, len(batch), outputs)
            kept, decoded = [clip for clip, _ in batch], [d for _, d in batch]
            stored, features = _usable(kept, decoded, results, failures)
            audio_s += sum(c.duration_s for c in stored)
            done += len(stored)
            writer.submit((stored, features))
            report({"part": job.part, "clips": done, "failed": len(failures), "audio_s": audio_s})
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            writer.close()
        raise
    finally:
        close_reports()
    writer.close()
    record = part.finish()
    return PartResult(
        part=job.part,
        record=record,
        clips=record.clips,
        frames=record.frames,
        frames_computed=getattr(encoder, "frames_computed", 0) - computed_before,
        audio_s=float(audio_s),
        failures=[ClipFailure.from_dict(f) for f in failures],
        stopped=stopped,
    )


def _encoder_for(job: PartJob, device: str, encoder: BatchEncoder | None):
    """The device step and the feature spec it makes; (encoder, spec).

    Raises:
        RuntimeError: the spec's fingerprint is not the store's (another checkpoint).
    """
    backbone = cached_backbone(job, device) if encoder is None else None
    spec = build_spec(
        encoder.identity if backbone is None else backbone.identity,
        max_seconds=job.max_seconds,
        window_seconds=job.window_seconds,
        compute_dtype=job.compute_dtype,
        layers=job.layers,
    )
    if encoder is None:
        encoder = BatchEncoder(
            backbone.model,
            device,
            COMPUTE_DTYPES[job.compute_dtype],
            identity=backbone.identity,
            layers=spec.layers,
        )
    if fingerprint(spec) != job.fingerprint:
        raise RuntimeError(
            f"backbone {job.model!r} on this worker has fingerprint {fingerprint(spec)[:12]}, "
            f"the store expects {job.fingerprint[:12]}: the checkpoint differs between "
            "the driver and this worker"
        )
    return encoder, spec


def _rounds(
    job: PartJob, threads: int, round_seconds: float, failures: list[dict]
) -> Iterator[list[tuple[dict, DecodedClip]]]:
    """The part's decoded clips in rounds: :data:`FIRST_ROUND_SECONDS` of audio, then
    twice as much up to ``round_seconds``, and shrinking again towards the part's end (a
    round is at most a quarter of the audio still to come), so the device starts early
    and little is left to write after its last batch. Clips that cannot be decoded are
    added to ``failures`` (the decoder is the authority on a file, whatever the
    manifest's probe said)."""
    expected = {id(clip): _expected_seconds(clip, job.max_seconds) for clip in job.clips}
    decoded = decode_ahead(
        job.clips,
        lambda clip: decode_clip(
            clip["path"],
            max_seconds=job.max_seconds,
            expected_sha256=clip.get("sha256"),
            exact=job.resolved_paths,
        ),
        threads=threads,
        ahead_seconds=2 * round_seconds,
        seconds=lambda clip: expected[id(clip)],
    )
    left = sum(expected.values())
    current: list[tuple[dict, DecodedClip]] = []
    seconds, grown = 0.0, min(FIRST_ROUND_SECONDS, round_seconds)
    for clip, result in decoded:
        left -= expected[id(clip)]
        if isinstance(result, Exception):
            failures.append(_failure(clip, _decode_reason(result)))
            continue
        current.append((clip, result))
        seconds += len(result.samples) / SAMPLE_RATE_HZ
        if seconds >= min(grown, max(FIRST_ROUND_SECONDS, left / 4)):
            yield current
            current, seconds, grown = [], 0.0, min(2 * grown, round_seconds)
    if current:
        yield current


def _expected_seconds(clip: dict, max_seconds: float | None) -> float:
    seconds = planning_seconds(clip.get("duration_s"))
    return min(seconds, max_seconds) if max_seconds else seconds


def _decode_reason(err: Exception) -> str:
    if isinstance(err, AudioError):
        return str(err)
    return f"decoding failed: {type(err).__name__}: {err}"


def _failure(clip: dict, reason: str) -> dict:
    return {"clip_id": clip["clip_id"], "path": clip["path"], "reason": reason}


def _usable(
    kept: list[dict],
    decoded: list[DecodedClip],
    results: list[ClipFeatures | Exception],
    failures: list[dict],
) -> tuple[list[StoredClip], list[ClipFeatures]]:
    """The clips whose encoding succeeded (with finite features, checked on the device),
    as (stored, features); the others are added to ``failures``."""
    stored, features = [], []
    for clip, audio, result in zip(kept, decoded, results, strict=True):
        if isinstance(result, Exception):
            failures.append(_failure(clip, str(result)))
            continue
        stored.append(
            StoredClip(
                clip_id=clip["clip_id"],
                source_path=clip["path"],
                sha256=audio.sha256,  # of the bytes decoded (the listing's, or refused)
                duration_s=audio.duration_s,
            )
        )
        features.append(result)
    return stored, features
