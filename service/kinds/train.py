"""``train``: train heads on a managed store into the registry (``emi train``). The
head's registry name is the job's from its submission (``claim``) to its end."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from models.errors import SettingsError
from models.options import PRESETS, TrainSettings, parse_layer
from service.errors import RequestError, bad_request, not_found
from service.kinds.context import JobContext
from service.kinds.kind import JobKind, JobRequestBase
from service.names import LayerChoice, Source, StoreName, TrainedName

if TYPE_CHECKING:
    from models.training import EpochStep  # torch: imported where a training runs

log = logging.getLogger("emi.service")
MAX_CURVE_POINTS = 2000  # a train job's learning curve points kept in its progress


class TrainJobRequest(JobRequestBase):
    """Train heads on a managed store into the registry (``emi train``)."""

    kind: Literal["train"]
    store: StoreName
    labels: Source = Field(description="training labels CSV below a source root, or an upload")
    val_labels: Source
    name: TrainedName
    preset: Literal[PRESETS] | None = None
    grid: dict | None = Field(None, description="a grid (as emi train --grid's file)")
    layer: LayerChoice | None = None
    features: str | None = Field(None, max_length=256)
    epochs: int | None = Field(None, ge=1, le=10_000)
    seed: int | None = Field(None, ge=0)
    # the recipe's settings (emi train's options of the same names); left out: the
    # preset's (models.options.RECIPES). Checked by TrainSettings' rules (400 naming one).
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    clip_value: float | None = None
    standardize: bool | None = None
    patience: int | None = Field(
        None, description="stop after this many epochs without a better validation score"
    )
    max_seconds: float | None = Field(None, description="crop sequences to their first seconds")

    def settings(self) -> TrainSettings:
        """The training settings this request gives (the rest: the preset's).

        Raises:
            SettingsError: a value outside its rule, naming the field.
        """
        given = {k: getattr(self, k) for k in SETTING_FIELDS if getattr(self, k) is not None}
        return TrainSettings(**given)


SETTING_FIELDS = (
    "epochs", "seed", "batch_size", "lr", "weight_decay", "warmup_epochs", "clip_value",
    "standardize", "patience", "max_seconds",
)  # fmt: skip


class CurvePoint(BaseModel):
    """One epoch of one head: its validation mean Pearson (None: not a number)."""

    head: str
    epoch: int
    val_pearson_mean: float | None


TrainStage = Literal["queued", "loading", "training", "trained", "succeeded", "failed", "cancelled"]


class TrainProgress(BaseModel):
    """A train job's progress: epochs run over all its heads, the best so far."""

    stage: TrainStage = "queued"
    epochs_done: int = 0
    best_val_pearson: float | None = None
    head: str | None = Field(None, description="the head training now")
    epoch: int | None = None
    epochs: int | None = None
    curve: list[CurvePoint] = Field(
        default_factory=list, description=f"the last {MAX_CURVE_POINTS} epochs' points"
    )


class BestHead(BaseModel):
    head: str
    val_pearson_mean: float


class TrainResult(BaseModel):
    """The heads a train job put in the registry (registry names), the best first."""

    heads: list[str]
    best: BestHead
    store: str


def check(config, request: TrainJobRequest) -> None:
    from service.registry import store_exists
    from service.sources import check_label_file

    if not store_exists(config.store_location(request.store)):
        raise not_found(f"store {request.store!r} not found; GET /v1/stores")
    if request.grid is not None and request.preset is not None:
        raise bad_request("give preset or grid, not both")
    try:
        request.settings()
    except SettingsError as err:
        raise bad_request(str(err)) from None
    check_label_file(config, request.labels, what="labels")
    check_label_file(config, request.val_labels, what="val_labels")


def claim(config, request: TrainJobRequest, job_id: str) -> None:
    """The head's name is the job's from now on (409 where it is taken)."""
    from service.registry import reserve_head

    reserve_head(config, request.name, job_id)


def release(config, request: TrainJobRequest, job_id: str) -> None:
    from service.registry import release_head

    release_head(config, request.name, job_id)


def run(context: JobContext) -> TrainResult | None:
    from featurestore.store import FeatureStore
    from models.trainer import train
    from service.registry import check_new_head, store_exists
    from service.sources import read_labels_below_roots

    config, request = context.config, context.request
    location = config.store_location(request.store)
    if not store_exists(location):
        raise RequestError(404, "not found", f"store {request.store!r} not found")
    # read once, through a descriptor opened beneath the root (errors without content)
    labels = read_labels_below_roots(config, request.labels, what="labels")
    val = read_labels_below_roots(config, request.val_labels, what="val_labels")
    out = check_new_head(config, request.name, reserved_by=context.job.id)
    existed = out.exists()  # only a resumed run's own earlier writes, else not ours
    context.progress(stage="loading", epochs_done=0, best_val_pearson=None)
    try:
        trained = train(
            FeatureStore.open(location),
            labels,
            val,
            out,
            preset=request.preset or "compact",
            grid=request.grid,
            layer=parse_layer(request.layer),
            settings=request.settings(),
            features=request.features,
            device=config.own_device,
            progress=_epoch_progress(context),
            # a resumed job rewrites what its earlier run wrote; a first run never
            # writes over a folder it did not make (train refuses it)
            overwrite=context.job.runs > 1,
        )
    except BaseException:
        half = out.is_dir() and not (out / "config.json").exists()
        if request.grid is None and not existed and half:
            shutil.rmtree(out, ignore_errors=True)  # what this run left half written
        raise
    _tidy_after_training(config.heads, request.name)
    names = [str(t.folder.relative_to(config.heads)) for t in trained]  # registry names
    context.progress(stage="trained")
    best = max(range(len(trained)), key=lambda i: trained[i].best_val_pearson)
    return TrainResult(
        heads=names,
        best=BestHead(head=names[best], val_pearson_mean=trained[best].best_val_pearson),
        store=request.store,
    )


def _epoch_progress(context: JobContext):
    """The trainer's hook after each epoch: the progress, then a stop where asked."""
    best, done, curve = -math.inf, 0, []

    def on_epoch(step: EpochStep) -> None:
        nonlocal best, done
        done += 1
        value = step.val_pearson_mean
        finite = value if math.isfinite(value) else None
        if finite is not None:
            best = max(best, finite)
        curve.append(CurvePoint(head=step.head, epoch=step.epoch, val_pearson_mean=finite))
        context.progress(
            stage="training",
            curve=curve[-MAX_CURVE_POINTS:],
            head=step.head,
            epoch=step.epoch,
            epochs=step.epochs,
            epochs_done=done,
            best_val_pearson=best if math.isfinite(best) else None,
        )
        context.check_stop()

    return on_epoch


def _tidy_after_training(heads: Path, name: str) -> None:
    """Remove what earlier runs of a train job left half written (a service killed
    while it wrote): ``.NAME.partial-*`` beside the registry name it holds, and inside
    a grid's folder. Its claim on ``name`` means no other writer is there."""
    from manifests.atomic import clean_leftovers

    for gone in clean_leftovers(heads, name=name, min_age_s=0):
        log.info("removed %s, left by an interrupted run of this training", gone.name)
    if (heads / name).is_dir():
        clean_leftovers(heads / name, min_age_s=0)


KIND = JobKind(
    name="train",
    request=TrainJobRequest,
    progress=TrainProgress,
    result=TrainResult,
    run=run,
    check=check,
    claim=claim,
    release=release,
    uses_cluster=False,  # it runs here: its failure is its own whatever the cluster does
    source_fields=("labels", "val_labels"),
)
