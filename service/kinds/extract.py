"""``extract``: extract a folder's features into a managed store (``emi extract``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from service.errors import RequestError
from service.kinds.clips import (
    LOCK_WAIT_S,
    ClipProgress,
    compute_settings,
    fail_on_a_full_disk,
    finished,
    list_clips,
    run_hooks,
)
from service.kinds.context import JobContext
from service.kinds.kind import JobKind, JobRequestBase
from service.names import FeatureSetName, Source, StoredLayers, StoreName


class ExtractJobRequest(JobRequestBase):
    """Extract a folder's features into a managed store (``emi extract``)."""

    kind: Literal["extract"]
    source: Source
    store: StoreName
    feature_set: FeatureSetName | None = None
    layers: StoredLayers | None = None


class ExtractResult(BaseModel):
    """What an extract job stored."""

    clips: int
    extracted: int
    reused: int
    failed: int
    store: str
    feature_set: str | None
    audio_seconds: float


def check(config, request: ExtractJobRequest) -> None:
    from service.backbone_check import unusable_for_new_stores
    from service.registry import check_store_name, store_exists
    from service.sources import resolve_source

    resolve_source(config, request.source)
    check_store_name(request.store)
    if not store_exists(config.store_location(request.store)):
        why = unusable_for_new_stores(config)
        if why:
            raise RequestError(503, "not available", why)


def run(context: JobContext) -> ExtractResult | None:
    from featurestore.extraction import extract
    from featurestore.options import ExtractOptions, FeatureChoice, WritePolicy
    from service.registry import store_exists

    config, request = context.config, context.request
    location = config.store_location(request.store)
    records, refused = list_clips(context, request.source)
    total = len(records) + len(refused)
    new = not store_exists(location)
    features = FeatureChoice(
        model=config.model if new else None,
        feature_set=request.feature_set,
        layers=request.layers,
    )
    # listed by manifest_below_roots: real paths; another writer of the store: wait
    writing = WritePolicy(resolved_paths=True, wait_for_lock_s=LOCK_WAIT_S)
    options = ExtractOptions(features, compute_settings(context), writing, quiet=True)
    hooks = run_hooks(context, total, len(refused))
    summary = extract(records, location, options, hooks) if records else None
    failures = [*refused, *(summary.failed if summary else [])]
    context.failures(failures)
    if summary is not None:
        fail_on_a_full_disk(failures, summary.extracted + summary.already_stored)
    if summary is not None and summary.stopped:
        return None
    extracted = summary.extracted if summary else 0
    reused = summary.already_stored if summary else 0
    context.metrics.outcomes(extracted, reused, len(failures))
    finished(context, "extracted", total, records, failures, reused)
    return ExtractResult(
        clips=total,
        extracted=extracted,
        reused=reused,
        failed=len(failures),
        store=request.store,
        feature_set=summary.feature_set if summary else None,
        audio_seconds=round(summary.audio_s, 3) if summary else 0.0,
    )


KIND = JobKind(
    name="extract",
    request=ExtractJobRequest,
    progress=ClipProgress,
    result=ExtractResult,
    run=run,
    check=check,
    source_fields=("source",),
)
