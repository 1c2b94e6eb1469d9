"""The options several commands take, each written once: where the work runs (the
device, local workers, a scheduler) and quiet output. A command gives its own help
where the option means a little more there."""

from __future__ import annotations

import click

from featurestore.options import DEVICES, ExtractOptions

DEFAULT_COMPUTE = ExtractOptions().compute


def device_option(help: str | None = None):  # noqa: A002 (click's own name)
    """``--device auto|cpu|cuda`` (default auto)."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default=DEFAULT_COMPUTE.device,
        show_default=True,
        help=help or "auto: cuda where torch sees a GPU, else cpu.",
    )


def workers_option(help: str | None = None):  # noqa: A002
    """``--workers N``: local dask worker processes (1 runs in this process)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=DEFAULT_COMPUTE.workers,
        show_default=True,
        help=help or "Local dask worker processes (1 runs in this process).",
    )


def scheduler_option(help: str | None = None):  # noqa: A002
    """``--scheduler ADDRESS``: a running dask scheduler instead of local workers."""
    return click.option(
        "--scheduler", default=None, help=help or "Address of a running dask scheduler."
    )


def quiet_option(help: str = "No progress bar."):  # noqa: A002
    return click.option("--quiet", is_flag=True, help=help)
