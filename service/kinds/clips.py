"""What the kinds that read a folder of clips share (score and extract): their
progress, the folder's listing below the roots, the extraction's progress hook and
run settings, and the rule that a job none of whose clips was kept for a full disk
fails."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from featurestore.options import ComputeSettings, RunHooks
from service.kinds.context import JobContext

LOCK_WAIT_S = 24 * 3600.0  # a job waits this long for another writer of its store
WAITING = "waiting for the dask cluster"  # a job queued again while its cluster is away
ClipStage = Literal[
    "queued",
    "listing",
    "extracting",
    "extracted",
    "predicting",
    "predicted",
    "waiting for the dask cluster",
    "succeeded",
    "failed",
    "cancelled",
]


class ClipProgress(BaseModel):
    """A score or extract job's progress over its folder's clips."""

    stage: ClipStage = "queued"
    clips_total: int = Field(0, description="clips listed (0 until listed)")
    clips_done: int = Field(0, description="clips extracted, reused or failed so far")
    clips_reused: int = Field(0, description="clips already in the store")
    clips_failed: int = Field(0, description="clips that failed (GET /v1/jobs/{id}/failures)")
    audio_seconds: float = Field(0.0, description="audio of the clips done (reused included)")


def list_clips(context: JobContext, source: str, *, stop: bool = True) -> tuple[list, list]:
    """The clips of ``source`` (a folder below a source root, or an upload) and those
    refused while listing; ``stop``: honour a cancel once listed."""
    from service.sources import manifest_below_roots, resolve_source

    folder = resolve_source(context.config, source)
    context.progress(stage="listing")
    records, refused = manifest_below_roots(folder, context.config)
    context.progress(
        stage="extracting",
        clips_total=len(records) + len(refused),
        clips_done=0,
        clips_reused=0,
        clips_failed=len(refused),
        audio_seconds=0.0,
    )
    if stop:
        context.check_stop()
    return records, refused


def compute_settings(context: JobContext) -> ComputeSettings:
    """Where the service's extractions run: its workers (local, a scheduler or SLURM
    jobs), their device, and its part size."""
    config = context.config
    return ComputeSettings(
        device=config.device,
        workers=config.workers,
        scheduler=config.scheduler,
        slurm=config.slurm,
        part_seconds=config.part_seconds,
    )


def run_hooks(context: JobContext, total: int, refused: int) -> RunHooks:
    """The service's dask client, the job's progress hook and its stop."""
    return RunHooks(
        client=context.client(),
        on_part=_part_progress(context, total, refused),
        should_stop=context.should_stop,
    )


def _part_progress(context: JobContext, total: int, refused: int):
    """The extraction's progress hook (after each committed part, and as running
    parts report their rounds): clips done, reused, failed, and the audio seconds
    of the clips done, the reused ones included."""
    seen = {"audio_s": 0.0}

    def on_part(summary) -> None:
        failed = len(summary.failed) + refused + summary.running_failed
        context.metrics.clips(summary.audio_s - seen["audio_s"])
        seen["audio_s"] = summary.audio_s
        done = summary.extracted + summary.already_stored + summary.running_clips + failed
        context.progress(
            stage="extracting",
            clips_total=total,
            clips_done=done,
            clips_reused=summary.already_stored,
            clips_failed=failed,
            audio_seconds=round(
                summary.audio_s + summary.running_audio_s + summary.reused_audio_s, 3
            ),
        )

    return on_part


def finished(
    context: JobContext, stage: str, total: int, records: list, failures: list, reused: int
) -> None:
    """The progress of a job whose ``total`` clips are all done."""
    context.progress(
        stage=stage,
        clips_total=total,
        clips_done=total,
        clips_reused=reused,
        clips_failed=len(failures),
        audio_seconds=audio_seconds(records, failures),
    )


NO_SPACE = ("No space left on device", "Disk quota exceeded", "database or disk is full")


class DiskFull(OSError):
    """Every clip of a job failed and the disk was full for some: the job fails."""


def disk_full_advice() -> str:
    return (
        "the disk of the stores, results or state folder is full; free space (or ask "
        "the operator to) and submit the job again"
    )


def fail_on_a_full_disk(failures: list, kept: int) -> None:
    """A job none of whose clips was kept, with clips failed for a full disk, fails
    saying so (never ``succeeded`` with nothing in it).

    Raises:
        DiskFull: that case.
    """
    full = [f for f in failures if any(words in f.reason for words in NO_SPACE)]
    if kept == 0 and full:
        raise DiskFull(
            f"no space left on the disk of the stores or the state folder: {len(full)} of "
            f"{len(failures)} clips failed for it and none was kept. Free space (or ask "
            "the operator to) and submit the job again"
        )


def audio_seconds(records: list, failures: list) -> float:
    """The audio of a finished job's clips that did not fail (reused ones included)."""
    failed = {f.clip_id for f in failures}
    return round(sum(r.duration_s or 0.0 for r in records if r.clip_id not in failed), 3)
