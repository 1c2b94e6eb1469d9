"""``emi train``, ``emi predict``, ``emi score``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from featurestore.store import FeatureStore
from models.options import SETTING_RULES, SIZE_RULES


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


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
    type=click.Choice(["paper", "compact", "mean-linear"]),
    default="paper",
    show_default=True,
    help="Head architecture (see README).",
)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file of many heads trained over one data load (see README).",
)
@click.option("--targets", default=None, help="Comma-separated subset of label columns.")
@click.option("--lstm-hidden", type=SIZE_RULES["lstm_hidden"].click_type(), default=None)
@click.option("--lstm-layers", type=SIZE_RULES["lstm_layers"].click_type(), default=None)
@click.option("--mlp-hidden", type=SIZE_RULES["mlp_hidden"].click_type(), default=None)
@click.option("--dropout", type=SIZE_RULES["dropout"].click_type(), default=None)
@click.option("--epochs", type=SETTING_RULES["epochs"].click_type(), default=30, show_default=True)
@click.option(
    "--batch-size", type=SETTING_RULES["batch_size"].click_type(), default=32, show_default=True
)
@click.option("--lr", type=SETTING_RULES["lr"].click_type(), default=1e-4, show_default=True)
@click.option(
    "--weight-decay",
    type=SETTING_RULES["weight_decay"].click_type(),
    default=0.01,
    show_default=True,
)
@click.option(
    "--warmup-epochs",
    type=SETTING_RULES["warmup_epochs"].click_type(),
    default=1.0,
    show_default=True,
)
@click.option(
    "--clip-value",
    type=SETTING_RULES["clip_value"].click_type(),
    default=100.0,
    show_default=True,
    help="Gradient clipping by value.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--max-seconds",
    type=SETTING_RULES["max_seconds"].click_type(),
    default=None,
    help="Crop sequences to their first seconds (the paper: 12).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--no-mixed-precision", is_flag=True, help="Full precision on a GPU too.")
@click.option(
    "--cache-gb",
    type=click.FloatRange(min=0),
    default=4.0,
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
@click.option("--quiet", is_flag=True, help="No per-epoch lines.")
def train(
    store: str,
    train_labels: str,
    val_labels: str,
    out: str,
    preset: str,
    grid: str | None,
    targets: str | None,
    lstm_hidden,
    lstm_layers,
    mlp_hidden,
    dropout,
    epochs,
    batch_size,
    lr,
    weight_decay,
    warmup_epochs,
    clip_value,
    seed,
    max_seconds,
    device,
    no_mixed_precision,
    cache_gb,
    skip_missing,
    scheduler,
    quiet,
) -> None:
    """Train heads on the features in STORE (never touches audio or the backbone)."""
    from manifests.labels import read_labels
    from models.training import HeadPlan, TrainSettings, plans_from_grid, train_heads

    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        clip_value=clip_value,
        seed=seed,
        max_seconds=max_seconds,
        mixed_precision=not no_mixed_precision,
    )
    if grid:
        try:
            plans = plans_from_grid(json.loads(Path(grid).read_text()), defaults=settings)
        except (OSError, ValueError) as err:
            raise click.BadParameter(str(err), param_hint="--grid") from err
    else:
        sizes = {
            k: v
            for k, v in dict(
                lstm_hidden=lstm_hidden,
                lstm_layers=lstm_layers,
                mlp_hidden=mlp_hidden,
                dropout=dropout,
            ).items()
            if v is not None
        }
        plans = [
            HeadPlan(
                name=Path(out).name,
                preset=preset,
                sizes=sizes,
                settings=settings,
                targets=_targets_option(targets),
            )
        ]
    if scheduler:
        from models.cluster_training import train_heads_on_cluster

        if not grid:
            raise click.UsageError("--scheduler spreads a --grid of heads; give --grid")
        FeatureStore.open(store)  # fail here, not on every worker, if it is missing
        results = train_heads_on_cluster(
            store,
            read_labels(train_labels),
            read_labels(val_labels),
            plans,
            out,
            scheduler=scheduler,
            device=device,
            budget_bytes=int(cache_gb * 2**30),
            skip_missing=skip_missing,
        )
        _print_results(results)
        return
    results = train_heads(
        FeatureStore.open(store),
        read_labels(train_labels),
        read_labels(val_labels),
        plans,
        out,
        device=device,
        budget_bytes=int(cache_gb * 2**30),
        skip_missing=skip_missing,
        single=grid is None,
        log=(lambda _: None) if quiet else _echo_err,
    )
    _print_results(results)


def _targets_option(targets: str | None) -> tuple[str, ...] | None:
    from models.options import check_targets

    if targets is None:
        return None
    try:
        return check_targets(targets)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--targets") from err


def _print_results(results) -> None:
    click.echo(f"{'head':24s} {'best epoch':>10s} {'val mean Pearson':>17s}  folder")
    for r in results:
        click.echo(f"{r.name:24s} {r.best_epoch:10d} {r.best_val_pearson:17.4f}  {r.folder}")


HEAD_OPTION = click.option(
    "--head",
    "head_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Head folder; repeatable.",
)


def _load_heads(paths: tuple[str, ...], device: str):
    from models.head_files import load_head, torch_device

    heads = [load_head(p, device=torch_device(device)) for p in paths]
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise click.UsageError(f"--head folders share names {names}; rename a folder")
    return heads


@click.command()
@click.argument("store")
@HEAD_OPTION
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="CSV to write."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def predict(store: str, head_paths: tuple[str, ...], output: str, device: str) -> None:
    """Run heads over every clip in STORE; CSV of clip_id + targets, clamped to [0, 1]."""
    from models.predict import predict_store, write_predictions_csv

    heads = _load_heads(head_paths, device)
    ids, predictions = predict_store(FeatureStore.open(store), heads, device=device)
    write_predictions_csv(output, ids, heads, predictions)
    click.echo(f"{len(ids)} clips x {len(heads)} heads -> {output}")


def default_score_store(fingerprint: str) -> Path:
    """The cache store for features of one spec, under the user cache.

    Its clips are keyed by the sha256 of the file's bytes, not by path: a file whose
    content changes is a new clip, so the cache never serves features of other audio.
    """
    root = Path(os.environ.get("EMI_CACHE", Path.home() / ".cache" / "emi"))
    return root / "score" / f"{fingerprint[:16]}.zarr"


@click.command()
@click.argument("audio_dir")
@HEAD_OPTION
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
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
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--scheduler", default=None, help="Address of a running dask scheduler.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--quiet", is_flag=True)
def score(
    audio_dir: str,
    head_paths: tuple[str, ...],
    output: str,
    store: str | None,
    model: str | None,
    workers: int,
    scheduler: str | None,
    device: str,
    quiet: bool,
) -> None:
    """Score a folder of audio: manifest, extract (missing clips only), predict, CSV.

    Exit status 3 when some clips could not be extracted (they are left out of the CSV
    and listed).
    """
    from featurestore.extract import ExtractOptions, extract
    from manifests import build_manifest
    from models.predict import predict_store, write_predictions_csv

    heads = _load_heads(head_paths, device)
    fingerprints = {h.fingerprint for h in heads}
    if len(fingerprints) > 1:
        raise click.UsageError(
            "the heads were trained on stores with different fingerprints; "
            "score with heads of one feature spec at a time"
        )
    spec = heads[0].config["store"]["spec"]
    folder = build_manifest(audio_dir)
    cached = store is None
    location = str(default_score_store(heads[0].fingerprint)) if cached else store
    if cached:  # keyed by content: the clip id is the sha256 of the file's bytes
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        unique = {}
        for r in folder:
            unique.setdefault(r.sha256, replace(r, clip_id=r.sha256, labels={}))
        records = list(unique.values())
    else:
        records = folder

    def key(record) -> str:
        return record.sha256 if cached else record.clip_id

    options = ExtractOptions(
        model=model or spec["backbone"]["ref"],
        revision=spec["backbone"].get("revision"),
        device=device,
        compute_dtype=spec["compute_dtype"],
        workers=workers,
        scheduler=scheduler,
        max_seconds=spec["max_seconds"],
        window_seconds=spec["window_seconds"],
        refresh_changed=True,  # never serve features of a file's earlier content
        expect_fingerprint=heads[0].fingerprint,
        quiet=quiet,
    )
    summary = extract(records, location, options)
    opened = FeatureStore.open(location)
    stored = opened.sha256_by_clip()
    # Served only where the stored features are of the file's current content.
    ids = sorted({key(r) for r in folder if stored.get(key(r)) == r.sha256})
    ids, predictions = predict_store(opened, heads, clip_ids=ids, device=device)
    row_of = {cid: i for i, cid in enumerate(ids)}
    rows = sorted((r.clip_id, row_of[key(r)]) for r in folder if key(r) in row_of)
    write_predictions_csv(
        output,
        [cid for cid, _ in rows],
        heads,
        {name: values[[i for _, i in rows]] for name, values in predictions.items()},
    )
    click.echo(
        f"{len(rows)} clips scored ({summary.extracted} extracted, "
        f"{summary.already_stored} reused from {location}) -> {output}"
    )
    if summary.failed:
        names: dict[str, list[str]] = {}
        for r in folder:
            names.setdefault(key(r), []).append(r.clip_id)
        _echo_err(f"{len(summary.failed)} clips could not be extracted and are not in the CSV:")
        for f in summary.failed:
            for cid in names.get(f["clip_id"], [f["clip_id"]]):
                _echo_err(f"  {cid}: {f['reason']}")
        sys.exit(3)
