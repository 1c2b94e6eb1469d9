"""The answers of the service's routes other than jobs (pydantic, published in the
OpenAPI document, so a generated client reads typed objects): its limits, the
folders below the source roots, the managed stores, the head registry and uploads."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class Limits(BaseModel):
    max_file_bytes: int
    max_request_bytes: int
    max_files: int
    max_body_bytes: int
    max_archive_ratio: float
    upload_quota_bytes: int | None
    uploads_kept_bytes: int = Field(description="bytes of uploads kept now")


class ServiceInfo(BaseModel):
    """What a client may send, and how long what it sends is kept."""

    limits: Limits
    keep_days: float | None = Field(description="uploads and results kept this long")
    source_roots: list[str]
    callbacks: bool = Field(description="whether jobs may name a callback_url")


class Folder(BaseModel):
    name: str
    path: str


class SourceListing(BaseModel):
    """The source roots (no ``path``), or the folders in a folder below them."""

    path: str | None
    parent: str | None = None
    folders: list[Folder]
    audio_files: int = Field(description="audio files directly in the folder")


class FeatureSetView(BaseModel):
    feature_set: str | None = None
    fingerprint: str | None = None
    backbone: str | None = Field(None, description="a hub name, or a local folder's name")
    layers: list[int] | None = None
    clips: int | None = None
    hours_audio: float | None = None
    set_size_bytes: int | None = None
    damaged: bool | None = None


class StoreView(BaseModel):
    """A managed store (``error`` alone where it cannot be read)."""

    name: str
    kind: str | None = Field(None, description="named, or score (a score job's own store)")
    feature_sets: list[FeatureSetView] = Field(default_factory=list)
    clips: int | None = None
    hours: float | None = None
    size_bytes: int | None = None
    error: str | None = None


class StoreList(BaseModel):
    stores: list[StoreView]


class HeadFeatures(BaseModel):
    feature_set: str | None = None
    fingerprint: str | None = None
    backbone: str | None = None
    random_backbone: bool | None = Field(None, description="trained on a random backbone")


class HeadView(BaseModel):
    """A registry head (``error`` alone where it cannot be read)."""

    name: str
    preset: str | None = None
    preset_summary: str | None = Field(None, description="the preset in a line")
    layer: str | None = None
    features: list[HeadFeatures] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    val_pearson_mean: float | None = None
    val_pearson: dict[str, float] = Field(default_factory=dict)
    best_epoch: int | None = None
    parameters: int | None = None
    train_seconds: float | None = None
    val_clips: int | None = Field(None, description="validation clips its figures rest on")
    val_set: str | None = Field(
        None, description="id of its validation clips and labels (None: not recorded)"
    )
    val_interval: tuple[float, float] | None = Field(
        None, description="95% bootstrap interval of val_pearson_mean"
    )
    nearly_constant: list[str] = Field(
        default_factory=list, description="targets whose predictions barely vary"
    )
    negative: list[str] = Field(
        default_factory=list, description="targets of negative validation Pearson"
    )
    error: str | None = None


class HeadList(BaseModel):
    heads: list[HeadView]
    recommended: str | None = Field(
        None, description="the best head, where every head was validated on the same clips"
    )
    comparable: bool = True
    comparison: str = Field("", description="why that head, or why none")


class UploadView(BaseModel):
    id: str
    files: int
    bytes: int
    created_at: dt.datetime
    skipped: list[str] = Field(
        default_factory=list, description="files left out: not audio, video, CSV or archives"
    )
    names: list[str] = Field(default_factory=list, description="the first 20 files, by name")
