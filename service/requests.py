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
