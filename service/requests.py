"""The shapes of the job routes' answers beside the jobs themselves (whose request
and view models are their kinds', :mod:`service.kinds`), and of every error answer
(pydantic, published in the OpenAPI document at ``/openapi.json``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error answer: a short label and what was wrong and what to do."""

    error: str
    detail: str | list[str]


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


class PredictionRow(BaseModel):
    clip_id: str
    values: dict[str, float | None] = Field(description="target -> intensity (None: unscored)")


class TargetDistribution(BaseModel):
    """One target's predictions over all the job's clips."""

    count: int
    mean: float | None
    min: float | None
    q1: float | None
    median: float | None
    q3: float | None
    max: float | None
    histogram: list[int] = Field(description="clips per bin of 0.1 over [0, 1]")


class PredictionPage(BaseModel):
    """One page of one head's predictions, and each target's distribution."""

    job: str
    head: str = Field(description="the head these values are of")
    heads: list[str] = Field(description="every head that scored the job")
    targets: list[str]
    clips: int = Field(description="clips the job predicted")
    total: int = Field(description="clips matching the filter")
    offset: int
    limit: int
    sort: str
    order: str
    rows: list[PredictionRow]
    distribution: dict[str, TargetDistribution] = Field(
        description="per target, over all the job's clips (not the filter's)"
    )
    partial: bool


class ClipCurves(BaseModel):
    """A clip's frame-level VAD over time (blocks of frames averaged to at most 600)."""

    seconds: list[float]
    arousal: list[float] = Field(default_factory=list)
    dominance: list[float] = Field(default_factory=list)
    valence: list[float] = Field(default_factory=list)


class ClipView(BaseModel):
    """One clip of a score job: its file, audio, VAD over time and intensities."""

    job: str
    clip_id: str
    file: str = Field(description="the file as a client names it")
    duration_s: float | None
    audio: str = Field(description="the path of its audio (range requests answered)")
    audio_playable: bool = Field(description="False for an object-storage source")
    frame_rate_hz: float | None
    vad_labels: list[str]
    frame_vad: ClipCurves | None = Field(description="None where the store lost them")
    predictions: dict[str, dict[str, float | None]] = Field(
        description="per head, per target (empty for a clip that failed)"
    )
