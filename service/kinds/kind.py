"""A job kind as one record (:class:`JobKind`: its request, progress and result models,
its checks at submit, its run and what follows its end) and the registry of kinds the
service runs (:class:`KindRegistry`). Adding a kind is one module holding one record,
and a line in :mod:`service.kinds` (the maintainers' page shows one)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from service.jobs import Job, JobState, utc

if TYPE_CHECKING:
    from service.config import ServiceConfig
    from service.kinds.context import JobContext

CallbackUrl = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]


class JobRequestBase(BaseModel):
    """What every job request may hold beside its kind's fields."""

    model_config = ConfigDict(extra="forbid")
    callback_url: CallbackUrl | None = Field(
        None, description="POSTed once the job ends (signed: see the docs' service page)"
    )


class JobError(BaseModel):
    """Why a job failed: a short label and what to do."""

    error: str
    detail: str


class CallbackState(BaseModel):
    """The delivery of a finished job's callback."""

    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_error: str | None = None


class JobEndedBase(BaseModel):
    """The body of a job's callback (POSTed to its ``callback_url`` once it ends)."""

    id: str
    kind: str
    state: JobState
    finished_at: dt.datetime | None
    counts: dict[str, int] = Field(description="the clip or epoch counts of its progress")
    error: JobError | None


COUNTS = ("clips_total", "clips_done", "clips_reused", "clips_failed", "epochs_done")


class JobViewBase(BaseModel):
    """What every job shows beside its kind's request, progress and result."""

    id: str
    kind: str
    state: JobState
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    failures_count: int = Field(description="clips that failed; GET /v1/jobs/{id}/failures")
    error: JobError | None
    cancel_requested: bool
    runs: int
    callback: CallbackState | None


def _no_check(config: ServiceConfig, request: Any) -> None:
    return None


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    Attributes:
        name: the ``kind`` of its requests and jobs.
        request: its request body (a :class:`JobRequestBase` with ``kind: Literal[name]``).
        progress: its progress (every field with a default: a new job's is the default).
        result: what a job that succeeded holds.
        run: runs one job (its request is ``context.request``); returns the result, or
            None where the job stopped at a boundary (a cancel, or the service stopping).
        check: what can be checked before the job is queued (raises ``RequestError``).
        claim: takes what the job will own (a registry name) once it passed ``check``;
            ``release`` gives it back when the job ends or is not queued.
        release: see ``claim``.
        keeps_partial_on_cancel: a cancelled run ends with what it finished (a job of
            this kind that ran, cancelled while the service is away, runs again to do so).
        uses_cluster: its failure while the dask cluster is lost is the cluster's (the
            job is queued again); False: it runs in the service's process.
        source_fields: the request's fields naming sources or label files (kept from
            expiry while the job is not finished).
    """

    name: str
    request: type[JobRequestBase]
    progress: type[BaseModel]
    result: type[BaseModel]
    run: Callable[[JobContext], BaseModel | None]
    check: Callable[[ServiceConfig, Any], None] = _no_check
    claim: Callable[[ServiceConfig, Any, str], None] | None = None
    release: Callable[[ServiceConfig, Any, str], None] | None = None
    keeps_partial_on_cancel: bool = False
    uses_cluster: bool = True
    source_fields: tuple[str, ...] = ()

    def view_model(self) -> type[BaseModel]:
        """The job as the API shows it, with this kind's request, progress and result."""
        return create_model(
            f"{_title(self.name)}Job",
            __base__=JobViewBase,
            __doc__=f"A {self.name} job as the API shows it.",
            kind=(Literal[self.name], ...),
            request=(self.request | None, Field(description="its request (no callback_url)")),
            progress=(self.progress, ...),
            result=(self.result | None, ...),
        )

    def ended_model(self) -> type[BaseModel]:
        """The body of this kind's callbacks."""
        return create_model(
            f"{_title(self.name)}JobEnded",
            __base__=JobEndedBase,
            __doc__=f"The callback of a {self.name} job that ended.",
            kind=(Literal[self.name], ...),
            result=(self.result | None, ...),
        )


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


class KindRegistry:
    """The job kinds a service runs, by name (in the order given)."""

    def __init__(self, kinds: Iterable[JobKind]) -> None:
        self._kinds = {kind.name: kind for kind in kinds}
        self._views = {name: kind.view_model() for name, kind in self._kinds.items()}
        self._ended = {name: kind.ended_model() for name, kind in self._kinds.items()}

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())

    def __getitem__(self, name: str) -> JobKind:
        return self._kinds[name]

    def get(self, name: Any) -> JobKind | None:
        return self._kinds.get(name) if isinstance(name, str) else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    def with_kind(self, kind: JobKind) -> KindRegistry:
        """These kinds and ``kind`` (a kind of the same name replaced)."""
        return KindRegistry([*(k for k in self if k.name != kind.name), kind])

    def request_model(self) -> Any:
        """A request body of any kind (chosen by its ``kind``)."""
        return _union([kind.request for kind in self])

    def view_model(self) -> Any:
        """A job of any kind as the API shows it (chosen by its ``kind``)."""
        return _union(list(self._views.values()))

    def view(self, job: Job) -> BaseModel:
        """``job`` as the API shows it."""
        kind = self[job.kind]
        request = job.request
        if request is not None and getattr(request, "callback_url", None) is not None:
            request = request.model_copy(update={"callback_url": None})
        return self._views[job.kind](
            id=job.id,
            kind=job.kind,
            state=job.state,
            created_at=utc(job.created_at),
            started_at=utc(job.started_at),
            finished_at=utc(job.finished_at),
            updated_at=utc(job.updated_at),
            request=request,
            progress=job.progress if job.progress is not None else kind.progress(),
            result=job.result,
            failures_count=job.failures_count,
            error=_error(job.error),
            cancel_requested=job.cancel_requested,
            runs=job.runs,
            callback=CallbackState.model_validate(job.callback) if job.callback else None,
        )

    def ended(self, job: Job) -> BaseModel:
        """The body of ``job``'s callback."""
        progress = job.progress
        counts = {k: getattr(progress, k) for k in COUNTS if hasattr(progress, k)}
        return self._ended[job.kind](
            id=job.id,
            kind=job.kind,
            state=job.state,
            finished_at=utc(job.finished_at),
            counts={k: v for k, v in counts.items() if isinstance(v, int)},
            result=job.result,
            error=_error(job.error),
        )

    def callback_routes(self) -> list:
        """The callbacks in the OpenAPI document (``callbacks=`` of the submit route)."""
        from fastapi import APIRouter

        def job_ended(body) -> None:
            """POSTed once the job ends, signed: ``X-Emi-Signature: sha256=<HMAC-SHA256
            of the body under the operator's secret>``; ``X-Emi-Job`` names the job. A
            2xx answer ends the delivery; others are retried with backoff."""

        job_ended.__annotations__ = {"body": _union(list(self._ended.values())), "return": None}
        router = APIRouter()
        router.add_api_route("{$request.body#/callback_url}", job_ended, methods=["POST"])
        return router.routes


def _union(models: list[type[BaseModel]]) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


def _error(error: dict | None) -> JobError | None:
    if not error:
        return None
    detail = error.get("detail", "")
    return JobError(error=str(error.get("error", "error")), detail=str(detail))
