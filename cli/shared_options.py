"""The options several commands take, each written once: where the work runs (the
device, local workers, a scheduler) and quiet output. A command gives its own help
where the option means a little more there."""

from __future__ import annotations

import click

from featurestore.options import DEVICES, ExtractOptions
from models.options import EMI_RECIPE, PAPER_RECIPE, RECIPE_KEYS, SETTING_RULES, TrainSettings

DEFAULT_COMPUTE = ExtractOptions().compute
DEFAULT_TRAINING = TrainSettings()


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


def training_option(name: str, help: str | None = None, *, unset: bool = False):  # noqa: A002
    """A training setting's option (``--lr``, ``--patience``, ...), its rule and default
    from ``models.options``; a recipe setting left out takes the preset's value (both
    recipes' values are shown). ``unset``: no default at all (a job's request leaves
    out what was not given; the service applies the same defaults)."""
    default = {"default": getattr(DEFAULT_TRAINING, name), "show_default": True}
    if name in RECIPE_KEYS:
        ours, paper = EMI_RECIPE[name], PAPER_RECIPE[name]
        shown = f"{ours}" if ours == paper else f"{ours}; --preset paper: {paper}"
        default = {"default": None}
        help = f"{help + ' ' if help else ''}[default: the preset's: {shown}]"
    elif unset:
        default, value = {"default": None}, getattr(DEFAULT_TRAINING, name)
        help = f"{help + ' ' if help else ''}" + ("" if value is None else f"[default: {value}]")
    return click.option(
        f"--{name.replace('_', '-')}", type=SETTING_RULES[name].click_type(), help=help, **default
    )


TRAINING_HELP = {
    "clip_value": "Gradient clipping by value.",
    "patience": "Stop after this many epochs without a better validation score (0: run "
    "every epoch).",
    "max_seconds": "Crop sequences to their first seconds (the paper: 12).",
    "standardize": "Scale each input dimension by its training mean and std (stored in the "
    "head). [default: the preset's: on; --preset paper: off]",
}


def standardize_option(prefix: str = ""):
    """``--standardize/--no-standardize`` (default: the preset's)."""
    return click.option(
        "--standardize/--no-standardize", default=None, help=prefix + TRAINING_HELP["standardize"]
    )
