"""``--cluster slurm`` and its ``--cluster-*`` options, shared by ``emi extract`` and
``emi serve``: the command gets ``slurm`` (a
:class:`~featurestore.options.SlurmOptions`, or None for the local cluster)."""

from __future__ import annotations

import functools
import re

import click

from featurestore.options import CLUSTERS, SlurmOptions

DEFAULTS = SlurmOptions()
WALLTIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # sbatch -t: [D-]HH[:MM[:SS]]


SLURM_WORD = re.compile(r"^[\w.,:@+-]+$")  # a partition list, an account, 16GB: no spaces


def _slurm_word(ctx, param, value: str | None) -> str | None:
    """A value that goes into an ``#SBATCH`` line as one word (a space or a line break
    would add to the job script)."""
    if value is not None and not SLURM_WORD.match(value):
        raise click.BadParameter(f"{value!r}: letters, digits and . , : @ + - _ only")
    return value


def _walltime(ctx, param, value: str | None) -> str | None:
    if value is not None and not WALLTIME.match(value):
        raise click.BadParameter(f"{value!r} is not a SLURM time such as 02:00:00 or 1-00:00:00")
    return value


def _options(*, on_demand: bool) -> list:
    """The click options, ``--cluster`` first."""
    config = "(default: jobqueue.slurm in the dask configuration)"
    if on_demand:
        count = [
            click.option(
                "--cluster-max-jobs",
                "cluster_count",
                type=click.IntRange(1),
                default=2,
                show_default=True,
                help="--cluster slurm: worker jobs at most, started when jobs "
                "arrive and released when idle.",
            ),
            click.option(
                "--cluster-idle",
                "cluster_idle",
                type=click.FloatRange(min=1),
                default=DEFAULTS.idle_s,
                show_default=True,
                help="--cluster slurm: seconds a worker job may sit idle before it is released.",
            ),
        ]
    else:
        count = [
            click.option(
                "--cluster-jobs",
                "cluster_count",
                type=click.IntRange(1),
                default=1,
                show_default=True,
                help="--cluster slurm: worker jobs (one dask worker each), kept "
                "for the run and released at its end; a job that ends is "
                "replaced.",
            ),
        ]
    options = [
        click.option(
            "--cluster",
            "cluster",
            type=click.Choice(CLUSTERS),
            default="local",
            show_default=True,
            help="Where the dask workers come from: local (this machine, or "
            "--scheduler) or slurm (SLURM jobs, submitted with sbatch from "
            "here; settings from jobqueue.slurm in the dask configuration).",
        ),
        *count,
        click.option(
            "--cluster-queue", default=None, callback=_slurm_word, help=f"SLURM partition {config}."
        ),
        click.option(
            "--cluster-account", default=None, callback=_slurm_word, help=f"SLURM account {config}."
        ),
        click.option(
            "--cluster-walltime",
            default=None,
            callback=_walltime,
            help=f"Each job's time limit, HH:MM:SS {config}.",
        ),
        click.option(
            "--cluster-cores",
            type=click.IntRange(1),
            default=None,
            help=f"CPUs per job {config}, else 1.",
        ),
        click.option(
            "--cluster-memory",
            default=None,
            callback=_slurm_word,
            help=f"Memory per job, such as 16GB {config}, else 4GB.",
        ),
    ]
    return options


def cluster_options(*, on_demand: bool):
    """The options; ``on_demand`` (the service): ``--cluster-max-jobs`` and
    ``--cluster-idle`` (jobs started when work arrives, released when idle) instead of
    ``--cluster-jobs`` (jobs kept for the whole run)."""
    options = _options(on_demand=on_demand)

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            kwargs["slurm"] = slurm_settings(kwargs, on_demand=on_demand)
            return command(*args, **kwargs)

        for option in reversed(options):
            run = option(run)
        return run

    return decorate


def slurm_settings(kwargs: dict, *, on_demand: bool) -> SlurmOptions | None:
    """Pop the ``--cluster-*`` values from a command's parsed options (``kwargs``, as
    click parsed them); the SLURM settings, or None (local). The commands get them as
    their ``slurm`` option."""
    count = kwargs.pop("cluster_count")
    idle = kwargs.pop("cluster_idle", DEFAULTS.idle_s)
    given = {
        name: kwargs.pop(f"cluster_{name}")
        for name in ("queue", "account", "walltime", "cores", "memory")
    }
    if kwargs.pop("cluster") != "slurm":
        return None
    if kwargs.get("scheduler"):
        raise click.UsageError("give --scheduler or --cluster slurm, not both")
    if on_demand:
        return SlurmOptions(max_jobs=count, idle_s=idle, **given)
    return SlurmOptions(jobs=count, **given)
