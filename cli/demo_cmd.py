"""``emi demo``: the whole job, offline, on a synthetic labelled corpus."""

from __future__ import annotations

import inspect

import click

from service.demo import DEMO_SIZES, run_demo

DEFAULTS = {
    name: p.default for name, p in inspect.signature(run_demo).parameters.items()
}  # the library's defaults, so the command and a notebook call agree


@click.command()
@click.option(
    "--out",
    default=DEFAULTS["out"],
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the corpus, store, heads, predictions and plots.",
)
@click.option("--clips", type=click.IntRange(min=20), default=DEFAULTS["clips"], show_default=True)
@click.option(
    "--size",
    type=click.Choice(DEMO_SIZES),
    default=DEFAULTS["size"],
    show_default=True,
    help="Random backbone size.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULTS["workers"],
    show_default=True,
    help="LocalCluster worker processes for extraction.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS["epochs"], show_default=True)
@click.option(
    "--lr",
    type=float,
    default=DEFAULTS["lr"],
    show_default=True,
    help="Learning rate of the fusion head (emi's recipe; the paper's 1e-4 is slow for a "
    "few hundred clips).",
)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True)
@click.option(
    "--layers",
    default=DEFAULTS["layers"],
    show_default=True,
    help="Layers to store (as emi extract --layers); other than last, each head is "
    "also trained on a learned weighting of them and compared with the last layer.",
)
def demo(
    out: str, clips: int, size: str, workers: int, epochs: int, lr: float, seed: int, layers: str
) -> None:
    """Synthesise a labelled corpus, extract it with a random backbone on a dask
    LocalCluster, train the fusion head and the mean-linear baseline, score the
    held-out split, print per-target Pearson and write plots."""
    run_demo(
        out,
        clips=clips,
        size=size,
        workers=workers,
        epochs=epochs,
        lr=lr,
        seed=seed,
        layers=layers,
        echo=click.echo,
    )
