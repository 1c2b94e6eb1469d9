"""``emi train``, ``emi predict``, ``emi score``: parse, call the library, print."""

from __future__ import annotations

import sys

import click

from cli.shared_options import (
    TRAINING_HELP,
    device_option,
    scheduler_option,
    standardize_option,
    training_option,
    workers_option,
)
from featurestore.errors import EXIT_CLIPS_FAILED
from manifests.records import count_of
from models.options import (
    DEFAULT_CACHE_GB,
    DEFAULT_PRESET,
    PRESETS,
    SIZE_RULES,
    TrainSettings,
)


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


SIZE_HELP = {
    "lstm_hidden": "LSTM hidden units of a fusion head (default: the preset's; paper: the "
    "input width).",
    "lstm_layers": "LSTM layers of a fusion head (default: the preset's; paper: 2).",
    "mlp_hidden": "Hidden units of the head's MLP (default: the preset's; paper: twice the "
    "input width).",
    "dropout": "Dropout before each linear layer, in [0, 1) (default: the preset's, 0).",
}


def _size(name: str):
    return click.option(
        f"--{name.replace('_', '-')}", type=SIZE_RULES[name].click_type(), help=SIZE_HELP[name]
    )


DEVICE_OPTION = device_option()


@click.command()
@click.argument("store")
@click.option(
    "--labels",
    "train_labels",
    required=True,
    type=click.Path(dir_okay=False),
    help="Training labels, challenge CSV format (Filename,<targets>).",
)
@click.option(
    "--val-labels",
    required=True,
    type=click.Path(dir_okay=False),
    help="Validation labels (best epoch = best mean Pearson on these).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Head folder; with --grid, the parent of one folder per head.",
)
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=DEFAULT_PRESET,
    show_default=True,
    help="Head and recipe: compact (a 256-unit fusion head, emi's recipe), fusion (the "
    "paper's architecture, emi's recipe), paper (the paper's recipe exactly), mean-linear "
    "(closed-form ridge). See the docs: Heads.",
)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file of many heads trained over one data load (see the docs: Heads).",
)
@click.option("--targets", default=None, help="Comma-separated subset of label columns.")
@click.option(
    "--features",
    default=None,
    help="Feature set(s) of STORE to train on (emi store info lists them): a name, or "
    "names joined per frame (a,b). Default: the store's only or default set.",
)
@click.option(
    "--layer",
    default=None,
    help="Stored layer to read: a layer number of the store (emi store info lists them) "
    "or last (the last hidden state, the default).",
)
@click.option(
    "--layers",
    type=click.Choice(["weighted"]),
    default=None,
    help="weighted: learn a softmax weighting of every stored layer (SUPERB style); "
    "the weights go in the head's metrics.json and plot.",
)
@_size("lstm_hidden")
@_size("lstm_layers")
@_size("mlp_hidden")
@_size("dropout")
@training_option("epochs")
@training_option("batch_size")
@training_option("lr")
@training_option("weight_decay")
@training_option("warmup_epochs")
@training_option("clip_value", help=TRAINING_HELP["clip_value"])
@training_option("patience", help=TRAINING_HELP["patience"])
@standardize_option()
@training_option("seed")
@training_option("max_seconds", help=TRAINING_HELP["max_seconds"])
@DEVICE_OPTION
@click.option("--no-mixed-precision", is_flag=True, help="Full precision on a GPU too.")
@click.option(
    "--cache-gb",
    type=click.FloatRange(min=0),
    default=DEFAULT_CACHE_GB,
    show_default=True,
    help="Memory for cached sequences; larger data streams from the store.",
)
@click.option(
    "--skip-missing",
    is_flag=True,
    help="Train on the labelled clips that are stored; ignore the rest.",
)
@click.option(
    "--scheduler",
    default=None,
    help="Spread a --grid over a running dask scheduler (one task per head; STORE and "
    "--out must be reachable from the workers).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace existing head folders (without it, an existing head is refused).",
)
@click.option("--quiet", is_flag=True, help="No per-epoch lines.")
def train(store: str, train_labels: str, val_labels: str, out: str, **options) -> None:
    """Train heads on the features in STORE (never touches audio or the backbone)."""
    from models.trainer import train as train_heads

    sizes = {k: options.pop(k) for k in ("lstm_hidden", "lstm_layers", "mlp_hidden", "dropout")}
    settings = TrainSettings(
        **{k: options.pop(k) for k in list(options) if k in TrainSettings.__dataclass_fields__},
        mixed_precision=not options.pop("no_mixed_precision"),
    )
    quiet = options.pop("quiet")
    layers = options.pop("layers")
    if layers and options["layer"]:
        raise click.UsageError("give --layer or --layers weighted, not both")
    if (layers or options["layer"] or options["features"]) and options["grid"]:
        raise click.UsageError("with --grid, give features, layer or layers in the grid file")
    options["layer"] = layers or options["layer"]
    if options["scheduler"] and not options["grid"]:
        raise click.UsageError("--scheduler spreads a --grid of heads; give --grid")
    results = train_heads(
        store,
        train_labels,
        val_labels,
        out,
        sizes=sizes,
        settings=settings,
        log=(lambda _: None) if quiet else _echo_err,
        **options,
    )
    click.echo(f"{'head':24s} {'best epoch':>10s} {'val mean Pearson':>17s}  folder")
    for r in sorted(results, key=lambda r: -r.best_val_pearson):
        click.echo(f"{r.name:24s} {r.best_epoch:10d} {r.best_val_pearson:17.4f}  {r.folder}")
    if options["grid"]:
        folder = out.rstrip("/") or out
        click.echo(f"summary -> {folder}/summary.csv, {folder}/summary.json")


HEAD_OPTION = click.option(
    "--head",
    "head_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Head folder; repeatable.",
)


@click.command()
@click.argument("store")
@HEAD_OPTION
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="CSV to write."
)
@DEVICE_OPTION
def predict(store: str, head_paths: tuple[str, ...], output: str, device: str) -> None:
    """Run heads over every clip in STORE; CSV of clip_id + targets, clamped to [0, 1]."""
    from models.prediction import predict as run_predict

    result = run_predict(store, head_paths, output=output, device=device)
    click.echo(
        f"{count_of(len(result.clip_ids), 'clip')} x {count_of(len(result.heads), 'head')} "
        f"-> {output}"
    )
    for name, clips in result.unscored.items():
        if clips:
            _echo_err(
                f"head {name}: {count_of(len(clips), 'clip')} not in its feature sets "
                f"(empty cells), e.g. {', '.join(clips[:5])}"
            )


@click.command()
@click.argument("audio_dir")
@HEAD_OPTION
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV to write: clip_id and one column per target (<head>/<target> with several heads).",
)
@click.option(
    "--store",
    default=None,
    help="Store to extract into (clips already there are reused; clips whose file "
    "changed are recomputed). Default: a cache store keyed by file content under "
    "~/.cache/emi (EMI_CACHE).",
)
@click.option(
    "--model",
    default=None,
    help="Backbone folder or hub id; default: the one the heads' store used.",
)
@workers_option()
@scheduler_option()
@DEVICE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score(audio_dir: str, head_paths: tuple[str, ...], output: str, **options) -> None:
    """Score a folder of audio: manifest, extract (missing clips only), predict, CSV.

    Exit status 3 when some clips could not be extracted (they are left out of the CSV
    and listed).
    """
    from featurestore.options import ComputeSettings
    from service.score import score_folder

    compute = ComputeSettings(
        workers=options.pop("workers"),
        scheduler=options.pop("scheduler"),
        device=options.pop("device"),
    )
    result = score_folder(audio_dir, head_paths, output=output, compute=compute, **options)
    click.echo(
        f"{count_of(len(result.predictions.clip_ids), 'clip')} scored "
        f"({result.extracted} extracted, "
        f"{result.reused} reused from {result.store}) -> {output}"
    )
    if result.failed:
        _echo_err(
            f"{count_of(len(result.failed), 'clip')} could not be extracted and "
            f"{'is' if len(result.failed) == 1 else 'are'} not in the CSV:"
        )
        for f in result.failed:
            _echo_err(f"  {f['clip_id']}: {f['reason']}")
        sys.exit(EXIT_CLIPS_FAILED)
