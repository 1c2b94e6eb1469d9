"""``emi demo``: the whole job, offline, on a synthetic labelled corpus."""

from __future__ import annotations

import time
from pathlib import Path

import click

DISCLAIMER = """\
NOTE: the backbone in this demo is a *random* wav2vec 2.0 ({size}), not the emotion
model, and the corpus is synthetic (targets are functions of pitch, syllable rate and
pauses). The scores measure whether the pipeline carries audible structure from audio
to the heads; they say nothing about emotion recognition.
For real features, download the checkpoint and run:
  emi extract data/audio feats.zarr --model audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim
  emi train feats.zarr --labels train_split.csv --val-labels valid_split.csv --out heads/paper
"""


def _every_fifth(line: str) -> bool:
    """Keep the training log short: epochs 1, 5, 10, ... and the last."""
    if "epoch " not in line:
        return True
    epoch, total = line.split("epoch ")[1].split()[0].split("/")
    return int(epoch) == 1 or int(epoch) % 5 == 0 or epoch == total


@click.command()
@click.option(
    "--out",
    default="emi-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the corpus, store, heads, predictions and plots.",
)
@click.option("--clips", type=click.IntRange(min=20), default=240, show_default=True)
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "base"]),
    default="small",
    show_default=True,
    help="Random backbone size.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="LocalCluster worker processes for extraction.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--lr",
    type=float,
    default=1e-3,
    show_default=True,
    help="Learning rate (the paper's 1e-4 is slow for a few hundred clips).",
)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str, clips: int, size: str, workers: int, epochs: int, lr: float, seed: int) -> None:
    """Synthesise a labelled corpus, extract it with a random backbone on a dask
    LocalCluster, train the fusion head and the mean-linear baseline, score the
    held-out split, print per-target Pearson and write plots."""
    import numpy as np

    from featurestore.extract import ExtractOptions, extract
    from featurestore.random_backbone import write_random_backbone
    from featurestore.store import FeatureStore
    from manifests import build_manifest, read_labels
    from manifests.synthetic import write_corpus
    from models.head_files import load_head
    from models.metrics import evaluate
    from models.plots import plot_predictions
    from models.predict import predict_store, write_predictions_csv
    from models.training import HeadPlan, TrainSettings, train_heads

    started = time.perf_counter()
    folder = Path(out)
    marker = folder / ".emi-demo"
    if folder.exists() and not marker.is_file() and (folder.is_file() or any(folder.iterdir())):
        raise click.BadParameter(
            f"{folder} exists and is not an emi demo folder; the demo writes audio, labels, "
            "a store and heads there. Give a new or empty folder. Nothing was changed.",
            param_hint="--out",
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by `emi demo`; the demo may rewrite this folder\n")
    click.echo(f"[1/5] synthesising {clips} labelled clips -> {folder / 'audio'}")
    splits = write_corpus(folder, clips=clips, seed=seed)
    backbone = write_random_backbone(folder / f"backbone-{size}", size=size, seed=seed)
    click.echo(
        f"[2/5] extracting with a random {size} backbone on a LocalCluster "
        f"({workers} worker{'s' if workers > 1 else ''})"
    )
    records = build_manifest(folder / "audio", label_files=list(splits.values()))
    summary = extract(
        records, str(folder / "feats.zarr"), ExtractOptions(model=str(backbone), workers=workers)
    )
    click.echo(
        f"      {summary.extracted} clips extracted, {summary.already_stored} already "
        f"stored, {len(summary.failed)} failed "
        f"({summary.audio_s / max(summary.wall_s, 1e-9):.0f} audio s per s)"
    )
    store = FeatureStore.open(folder / "feats.zarr")
    settings = TrainSettings(epochs=epochs, lr=lr, seed=1)
    plans = [
        HeadPlan(name="fusion", preset="paper", settings=settings),
        HeadPlan(name="mean-linear", preset="mean-linear", settings=settings),
    ]
    click.echo(f"[3/5] training {len(plans)} heads ({epochs} epochs, one data load)")
    trained = train_heads(
        store,
        read_labels(splits["train"]),
        read_labels(splits["valid"]),
        plans,
        folder / "heads",
        log=lambda line: click.echo(f"      {line}") if _every_fifth(line) else None,
    )
    click.echo("[4/5] scoring the held-out test split")
    test = read_labels(splits["test"])
    heads = [load_head(t.folder) for t in trained]
    ids = [c for c in test.rows if c in store]
    ids, predictions = predict_store(store, heads, clip_ids=ids)
    write_predictions_csv(folder / "test_predictions.csv", ids, heads, predictions)
    true = np.array([test.rows[c] for c in ids])
    targets = list(test.targets)
    scores = {h.name: evaluate(predictions[h.name], true, targets) for h in heads}
    for h in heads:
        plot_predictions(
            predictions[h.name],
            true,
            targets,
            folder / f"test_{h.name}_pred_vs_true.png",
            title=f"{h.name}: held-out test split",
        )
    click.echo("[5/5] held-out test Pearson r per target\n")
    names = [h.name for h in heads]
    click.echo(f"  {'target':16s}" + "".join(f"{n:>14s}" for n in names))
    for t in targets:
        click.echo(f"  {t:16s}" + "".join(f"{scores[n]['pearson'][t]:14.3f}" for n in names))
    click.echo(f"  {'mean':16s}" + "".join(f"{scores[n]['pearson_mean']:14.3f}" for n in names))
    click.echo(
        f"\noutputs in {folder}/: feats.zarr, heads/*/ (config.json, model.safetensors, "
        "metrics.json, learning_curves.png), test_predictions.csv, "
        "test_*_pred_vs_true.png"
    )
    click.echo(f"finished in {time.perf_counter() - started:.0f} s\n")
    click.echo(DISCLAIMER.format(size=size))
