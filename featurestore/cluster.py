"""A dask client for emi's work: an existing scheduler, or a LocalCluster on loopback.

Torch-free, so both the extractor and the heads' cluster training use it without
importing a backbone.
"""

from __future__ import annotations

import contextlib
import logging
import os

from featurestore.options import SlurmOptions

# A worker keeps its last N state-machine events for debugging, each holding its task's
# arguments: an extraction part's whole clip list. 1000 (dask's default) of them is
# hundreds of MB for long parts; 100 keeps the story of the last few parts. The
# scheduler's and workers' in-memory logs keep 10,000 records by default: 1,000 here.
LOG_LIMITS = {"distributed.admin.low-level-log-length": 100, "distributed.admin.log-length": 1000}
SPANS_KEPT = 20  # finished runs' spans the scheduler keeps (its dashboard shows them)


@contextlib.contextmanager
def dask_client(
    *,
    workers: int,
    scheduler: str | None,
    quiet: bool,
    dashboard: bool = False,
    connect_timeout_s: float | None = None,
    slurm: SlurmOptions | None = None,
    device: str = "auto",
    wait_for_worker: bool = True,
):
    """A distributed client: to ``scheduler`` (or ``DASK_SCHEDULER_ADDRESS``), of
    workers started as SLURM jobs (``slurm``: ``featurestore.slurm``, on ``device``,
    ``wait_for_worker`` until one joined), or of a ``LocalCluster`` of ``workers``
    single-threaded worker processes.

    ``connect_timeout_s`` bounds reaching the scheduler (and a lost one's reconnection);
    None: dask's ``distributed.comm.timeouts.connect`` (30 s).

    One local worker runs in this process (still a real scheduler and worker): it
    shares the already-imported torch and saves seconds of start-up per run. A local
    cluster listens on 127.0.0.1 only, and serves no dashboard unless ``dashboard``
    (then on 127.0.0.1:8787).
    """
    import dask
    from distributed import Client, LocalCluster

    if slurm is not None:
        from featurestore.slurm import slurm_client

        with slurm_client(
            slurm, device=device, quiet=quiet, dashboard=dashboard, wait_for_worker=wait_for_worker
        ) as client:
            yield client
        return
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        timeout = {} if connect_timeout_s is None else {"timeout": connect_timeout_s}
        with Client(address, set_as_default=False, **timeout) as client:
            yield client
        return
    level = logging.ERROR if quiet else logging.WARNING
    # The workers' statistical profiler samples every thread's stack every 10 ms: about
    # 5% of a CPU extraction, for a dashboard nobody opens here.
    settings = {"distributed.worker.profile.enabled": False, **LOG_LIMITS}
    if not dashboard:
        # The HTTP servers that distributed always starts answer nothing (no health,
        # metrics or dashboard routes).
        settings["distributed.scheduler.http.routes"] = []
        settings["distributed.worker.http.routes"] = []
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=workers > 1,
            # Everything on loopback: worker processes talk TCP on 127.0.0.1; one worker
            # runs in-process (inproc transport). The scheduler's and workers' HTTP
            # servers (health, metrics) bind 127.0.0.1 too, and serve the dashboard
            # only when asked for.
            **({"host": "127.0.0.1"} if workers > 1 else {}),
            dashboard_address="127.0.0.1:8787" if dashboard else "127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
            silence_logs=level,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def worker_count(client) -> int:
    """The workers a run plans its parts for: those joined, or the jobs a SLURM cluster
    runs at once where more."""
    joined = len(client.scheduler_info().get("workers", {}))
    return max(1, joined, getattr(client.cluster, "emi_planned_workers", 0))


def has_gpu_resource(client) -> bool:
    workers = client.scheduler_info().get("workers", {}).values()
    return any(w.get("resources", {}).get("GPU") for w in workers)


def forget_finished_spans(client, keep: int = SPANS_KEPT) -> None:
    """Have the scheduler forget the spans of finished runs but the last ``keep``.

    The scheduler opens a span (with its task groups) for each batch of work that comes
    after an idle spell and never drops it: a long-lived scheduler (the service's own, or
    a cluster's that extraction runs against for weeks) grew by each extraction run.
    Best effort: a scheduler that cannot run this keeps its spans."""
    with contextlib.suppress(Exception):
        client.run_on_scheduler(_forget_spans, keep=keep)


def _forget_spans(dask_scheduler=None, keep: int = SPANS_KEPT) -> int:
    """On the scheduler: drop finished root spans (and their children) but the newest
    ``keep``; the number of spans dropped."""
    spans = dask_scheduler.extensions.get("spans")
    if spans is None:
        return 0
    done = [root for root in spans.root_spans if root.done]
    gone = {s.id for root in done[: max(0, len(done) - keep)] for s in root.traverse_spans()}
    if not gone:
        return 0
    spans.root_spans = [root for root in spans.root_spans if root.id not in gone]
    for span_id in gone:
        spans.spans.pop(span_id, None)
    for index in (spans.spans_search_by_name, spans.spans_search_by_tag):
        for key in list(index):
            index[key] = [s for s in index[key] if s.id not in gone]
            if not index[key]:
                del index[key]
    return len(gone)
