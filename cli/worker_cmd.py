"""``emi worker``: a dask worker for emi's tasks, its device checked before it joins."""

from __future__ import annotations

import os
import sys

import click

from cli.shared_options import device_option


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("scheduler")
@device_option(
    "cuda: refuse to start without a GPU, and declare the GPU resource that "
    "extraction asks for; auto: cuda where torch sees a GPU."
)
@click.option("--nthreads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--memory-limit", default="auto", show_default=True)
@click.option("--name", default=None, help="The worker's name on the scheduler.")
@click.argument("dask_worker_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    scheduler: str,
    device: str,
    nthreads: int,
    memory_limit: str,
    name: str | None,
    dask_worker_args: tuple[str, ...],
) -> None:
    """Run one dask worker process on SCHEDULER (tcp://host:8786) for emi's tasks.

    The device is checked first: ``--device cuda`` on a machine where torch sees no GPU
    ends here with one line and exit status 2, so a GPU pod or SLURM job without its
    GPU never joins the cluster to fail every task. Further options after the known
    ones go to ``dask worker`` unchanged (``--resources``, ``--local-directory``, ...).

    \b
    Examples:
      emi worker tcp://emi-scheduler:8786 --device cuda
      emi worker tcp://10.0.0.5:8786 --device cpu --nthreads 4 --memory-limit 8GiB
    """
    from featurestore.devices import require_device

    resolved = require_device(device)  # DeviceError: one line, exit 2 (cli.main)
    command = worker_command(
        scheduler, resolved, nthreads, memory_limit, name, list(dask_worker_args)
    )
    click.echo(f"emi worker: {resolved} worker for {scheduler} ({sys.executable})", err=True)
    sys.stderr.flush()
    from featurestore.cluster import LOG_LIMITS

    for name, value in LOG_LIMITS.items():  # dask reads DASK_A__B_C as a.b-c
        variable = "DASK_" + name.replace(".", "__").replace("-", "_").upper()
        os.environ.setdefault(variable, str(value))
    os.execv(command[0], command)


def worker_command(
    scheduler: str,
    device: str,
    nthreads: int,
    memory_limit: str,
    name: str | None,
    extra: list[str],
) -> list[str]:
    """The ``dask worker`` command line of a worker on ``device`` (already resolved):
    a GPU worker declares ``GPU=1`` (extraction's parts ask for it) unless ``extra``
    declares resources itself."""
    command = [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        scheduler,
        "--nworkers",
        "1",
        "--nthreads",
        str(nthreads),
        "--memory-limit",
        memory_limit,
    ]
    if name:
        command += ["--name", name]
    if device.startswith("cuda") and "--resources" not in extra:
        command += ["--resources", "GPU=1"]
    return command + extra
