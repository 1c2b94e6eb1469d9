"""``score``: score every audio file of a folder with registry heads (``emi score``);
the predictions are kept under the state folder's ``results/<job>/``. A cancelled run
keeps the predictions of the clips it finished (partial)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from service.kinds.clips import (
    ClipProgress,
    compute_settings,
    fail_on_a_full_disk,
    finished,
    list_clips,
    run_hooks,
)
from service.kinds.context import JobContext
from service.kinds.kind import JobKind, JobRequestBase
from service.names import HeadName, Source, StoreName


class ScoreJobRequest(JobRequestBase):
    """Score every audio file of a folder with registry heads (``emi score``)."""

    kind: Literal["score"]
    source: Source = Field(description="a folder below a source root, or an upload id")
    heads: list[HeadName] = Field(min_length=1, max_length=64, description="registry names")
    store: StoreName | None = Field(
        None, description="a managed store to extract into; none: the content-keyed score store"
    )


class ScoreResult(BaseModel):
    """A score job's predictions (partial: a cancelled or failed job's finished clips)."""

    clips: int
    predicted: int
    partial: bool
    predictions_csv: str = Field(description="the path of GET .../predictions.csv")
    predictions_json: str = Field(description="the path of GET .../predictions.json")
    extracted: int | None = None
    reused: int | None = None
    failed: int | None = None
    store: str | None = Field(None, description="the store the features are in")
    heads: list[str] | None = None


def check(config, request: ScoreJobRequest) -> None:
    from service.registry import check_store_name, head_folder
    from service.sources import resolve_source

    resolve_source(config, request.source)
    if request.store:
        check_store_name(request.store)
    for name in request.heads:
        head_folder(config, name)


def run(context: JobContext) -> ScoreResult | None:
    from models.prediction import load_heads
    from service.clip_views import write_clip_index
    from service.registry import head_folder, managed_stores
    from service.score import score_folder

    config, request = context.config, context.request
    # each head by its registry name: the predictions' columns, whatever its card says
    loaded = load_heads([head_folder(config, n) for n in request.heads], device=config.own_device,
                        distinct=False)  # fmt: skip
    heads = [replace(h, name=name) for h, name in zip(loaded, request.heads, strict=True)]
    # a stopped score job still predicts what is stored: no stop once listed
    records, refused = list_clips(context, request.source, stop=False)
    total = len(records) + len(refused)
    location = config.store_location(request.store) if request.store else None
    result = score_folder(
        records,
        heads,
        store=location,
        compute=compute_settings(context),
        head_device=config.own_device,
        quiet=True,
        cache_store_for=config.score_store_for,
        hooks=run_hooks(context, total, len(refused)),
        resolved_paths=True,  # listed by manifest_below_roots: real paths
        on_partial=lambda partial: _keep(context, partial, total, partial=True),
        on_predicting=lambda: context.progress(stage="predicting"),
        # features the managed stores hold for a file's content are read there
        reuse_from=lambda fingerprint: managed_stores(config),
    )
    # the clips the page may open: their files, and the store keys of their features
    write_clip_index(config, context.job.id, records, result.features_at, heads[0].fingerprint)
    failures = [*refused, *result.failed]
    context.failures(failures)
    fail_on_a_full_disk(failures, result.extracted + result.reused)
    if result.stopped:  # the clips finished before the stop, as partial predictions
        _keep(context, result.predictions, total, partial=True)
        return None
    context.metrics.outcomes(result.extracted, result.reused, len(failures))
    finished(context, "predicted", total, records, failures, result.reused)
    kept = _keep(context, result.predictions, total, partial=False)
    return kept.model_copy(
        update={
            "extracted": result.extracted,
            "reused": result.reused,
            "failed": len(failures),
            "store": Path(result.store).name.removesuffix(".zarr"),
            "heads": list(request.heads),
        }
    )


def _keep(context: JobContext, predictions, total: int, *, partial: bool) -> ScoreResult:
    """Write a score job's predictions under its results folder; partial ones (a job
    cancelled or failed: the clips finished before it ended) are recorded as the
    job's result at once, marked ``partial``."""
    from service.results import write_predictions

    job_id = context.job.id
    rows = write_predictions(context.config, job_id, predictions, partial=partial)
    kept = ScoreResult(
        clips=total,
        predicted=rows,
        partial=partial,
        predictions_csv=f"/v1/jobs/{job_id}/predictions.csv",
        predictions_json=f"/v1/jobs/{job_id}/predictions.json",
    )
    if partial:
        context.partial_result(kept)
    return kept


KIND = JobKind(
    name="score",
    request=ScoreJobRequest,
    progress=ClipProgress,
    result=ScoreResult,
    run=run,
    check=check,
    keeps_partial_on_cancel=True,
    source_fields=("source",),
)
