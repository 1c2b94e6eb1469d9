"""What a job kind's ``run`` is given: its job and request, the service's settings,
and the calls that report its progress, failed clips and partial result, and that say
whether it should stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from service.config import ServiceConfig
from service.errors import JobStopped
from service.jobs import Job, JobTable


class JobContext:
    """One run of one job (the runner makes one for each run).

    Attributes:
        job: the job as it was taken; ``request`` its request (its kind's model).
        config: the service's settings.
        metrics: the service's metrics (clips, outcomes).
    """

    def __init__(
        self,
        job: Job,
        *,
        config: ServiceConfig,
        table: JobTable,
        metrics,
        client: Callable[[], Any],
        should_stop: Callable[[], bool],
    ) -> None:
        self.job = job
        self.request: Any = job.request
        self.config = config
        self.metrics = metrics
        self._table = table
        self._client = client
        self._should_stop = should_stop

    def client(self):
        """The service's dask client (waits for the cluster; ``ClusterGone`` if none)."""
        return self._client()

    def should_stop(self) -> bool:
        """Whether the job should stop at its next boundary (cancelled, or the service
        stopping)."""
        return self._should_stop()

    def check_stop(self) -> None:
        """Raise :class:`JobStopped` where :meth:`should_stop`."""
        if self.should_stop():
            raise JobStopped()

    def progress(self, **values: Any) -> BaseModel:
        """Set fields of the job's progress (its kind's model); the progress now."""
        table = self._table
        current = table.get(self.job.id)
        base = current.progress.model_dump() if current and current.progress else {}
        progress = type(self.job.progress).model_validate({**base, **values})
        table.set_progress(self.job.id, progress)
        return progress

    def failures(self, failures: list) -> None:
        """The job's failed clips (``ClipFailure``), with paths as clients see them."""
        from service.sources import public_path, public_paths_in

        config = self.config
        rows = [
            {
                "clip_id": f.clip_id,
                "path": public_path(config, f.path),
                "reason": config.public_text(public_paths_in(config, f.reason)),
            }
            for f in failures
        ]
        self._table.set_failures(self.job.id, rows)

    def partial_result(self, result: BaseModel) -> None:
        """Record a result before the job ends (what a cancelled run keeps)."""
        self._table.set_result(self.job.id, result)
