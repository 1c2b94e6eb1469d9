"""A dask client for emi's work: an existing scheduler, or a LocalCluster on loopback.

Torch-free, so both the extractor and the heads' cluster training use it without
importing a backbone.
"""

from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def dask_client(
    *,
    workers: int,
    scheduler: str | None,
    quiet: bool,
    dashboard: bool = False,
    connect_timeout_s: float | None = None,
):
    """A distributed client: to ``scheduler`` (or ``DASK_SCHEDULER_ADDRESS``), or a
    ``LocalCluster`` of ``workers`` single-threaded worker processes.

    ``connect_timeout_s`` bounds reaching the scheduler (and a lost one's reconnection);
    None: dask's ``distributed.comm.timeouts.connect`` (30 s).

    One local worker runs in this process (still a real scheduler and worker): it
    shares the already-imported torch and saves seconds of start-up per run. A local
    cluster listens on 127.0.0.1 only, and serves no dashboard unless ``dashboard``
    (then on 127.0.0.1:8787).
    """
    import dask
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        timeout = {} if connect_timeout_s is None else {"timeout": connect_timeout_s}
        with Client(address, set_as_default=False, **timeout) as client:
            yield client
        return
    level = logging.ERROR if quiet else logging.WARNING
    # The workers' statistical profiler samples every thread's stack every 10 ms: about
    # 5% of a CPU extraction, for a dashboard nobody opens here.
    settings = {"distributed.worker.profile.enabled": False}
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
    return max(1, len(client.scheduler_info().get("workers", {})))


def has_gpu_resource(client) -> bool:
    workers = client.scheduler_info().get("workers", {}).values()
    return any(w.get("resources", {}).get("GPU") for w in workers)
