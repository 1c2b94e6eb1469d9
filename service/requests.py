"""The bodies of the API's requests and the shapes of its answers (pydantic: checked
on arrival, and published in the OpenAPI document at ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.options import PRESETS
from service.config import HEAD_NAME, STORE_NAME, TRAINED_NAME
from service.jobs import KINDS, STATES

StoreName = Annotated[str, StringConstraints(pattern=STORE_NAME)]
HeadName = Annotated[str, StringConstraints(pattern=HEAD_NAME)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
CallbackUrl = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    callback_url: CallbackUrl | None = Field(
        None, description="POSTed once the job ends (signed: see the docs' service page)"
    )


class ScoreJobRequest(_Job):
    """Score every audio file of a folder with registry heads (``emi score``)."""

    kind: Literal["score"]
    source: Source = Field(description="a folder below a source root, or an upload id")
    heads: list[HeadName] = Field(min_length=1, max_length=64, description="registry names")
    store: StoreName | None = Field(
        None, description="a managed store to extract into; none: the content-keyed score store"
    )


class ExtractJobRequest(_Job):
    """Extract a folder's features into a managed store (``emi extract``)."""

    kind: Literal["extract"]
    source: Source
    store: StoreName
    feature_set: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] | None = (
        None
    )
    layers: Annotated[str, StringConstraints(pattern=r"^(last|all|[0-9]+(,[0-9]+)*)$")] | None = (
        None
    )


class TrainJobRequest(_Job):
    """Train heads on a managed store into the registry (``emi train``)."""

    kind: Literal["train"]
    store: StoreName
    labels: Source = Field(description="training labels CSV below a source root, or an upload")
    val_labels: Source
    name: Annotated[str, StringConstraints(pattern=TRAINED_NAME)]
    preset: Literal[PRESETS] | None = None
    grid: dict | None = Field(None, description="a grid (as emi train --grid's file)")
    layer: Annotated[str, StringConstraints(pattern=r"^(last|weighted|[0-9]+)$")] | None = None
    features: Annotated[str, StringConstraints(max_length=256)] | None = None
    epochs: int | None = Field(None, ge=1, le=10_000)
    seed: int | None = Field(None, ge=0)


JobRequest = Annotated[
    ScoreJobRequest | ExtractJobRequest | TrainJobRequest, Field(discriminator="kind")
]


class ErrorBody(BaseModel):
    """Every error answer: a short label and what was wrong and what to do."""

    error: str
    detail: str | list[str]


class JobView(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: Literal[KINDS]
    state: Literal[STATES]
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    request: dict
    progress: dict
    failures_count: int = Field(description="clips that failed; GET /v1/jobs/{id}/failures")
    result: dict | None
    error: dict | None
    cancel_requested: bool
    runs: int
    callback: dict | None


class JobPage(BaseModel):
    jobs: list[JobView]
    next: str | None = Field(description="the cursor of the next page (?before=...)")


class ClipFailureView(BaseModel):
    clip_id: str
    path: str = Field(description="the file, relative to its source root or upload")
    reason: str


class FailurePage(BaseModel):
    failures: list[ClipFailureView]
    total: int = Field(description="failed clips listed for the job")
    next: str | None = Field(description="the cursor of the next page (?after=...)")


class PredictionsView(BaseModel):
    job: str
    predictions: list[dict] = Field(
        description="clip_id and one value per target (per head/target with several heads)"
    )
    partial: bool = Field(description="a cancelled or failed job's: the clips it finished")
