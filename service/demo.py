"""The whole job, offline, on a synthetic labelled corpus (``emi demo``)."""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

DISCLAIMER = """\
NOTE: the backbone in this demo is a *random* wav2vec 2.0 ({size}), not the emotion
model, and the corpus is synthetic (targets are functions of pitch, syllable rate and
pauses). The scores measure whether the pipeline carries audible structure from audio
to the heads; they say nothing about emotion recognition.
For real features, download the checkpoint and run (the default head, compact, on
emi's recipe: the one to start with; docs: Heads):
  {emi} extract data/audio feats.zarr --model audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim
  {emi} train feats.zarr --labels train_split.csv --val-labels valid_split.csv --out heads/compact
"""
SERVE_ADVICE = """\
To score, extract and train from the service's page, serve what the demo made (from
this folder; EMI_PORT or --port chooses the port, 8000 by default):
  {command}
"""
MARKER = ".emi-demo"
SERVICE_STATE = "service-state"  # the served demo's state folder, inside the demo folder
DEMO_SIZES = ("tiny", "small", "base")  # random backbone sizes the demo offers


@dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        folder: the demo folder.
        targets: the label columns.
        scores: per head name, the held-out test metrics (``models.metrics.evaluate``).
        seconds: wall time of the whole run.
    """

    folder: Path
    targets: list[str]
    scores: dict[str, dict]
    seconds: float


def _every_fifth(line: str) -> bool:
    """Keep the training log short: epochs 1, 5, 10, ... and the last of ``epoch k/n``
    lines; every other line (an early stop, a ridge solution) is kept."""
    found = re.search(r"\bepoch (\d+)/(\d+)\b", line)
    if found is None:
        return True
    epoch, total = found.groups()
    return int(epoch) == 1 or int(epoch) % 5 == 0 or epoch == total


def check_demo_folder(folder: Path) -> None:
    """Refuse a folder that exists, is not empty and was not made by the demo.

    Raises:
        ManifestError: with the folder named; nothing is changed.
    """
    from manifests import ManifestError

    ours = (folder / MARKER).is_file()
    if folder.exists() and not ours and (folder.is_file() or any(folder.iterdir())):
        raise ManifestError(
            f"{folder} exists and is not an emi demo folder; the demo writes audio, "
            "labels, a store and heads there. Give a new or empty folder. Nothing was "
            "changed."
        )


def _prepare_folder(folder: Path, settings: dict, echo) -> None:
    """A demo folder for a run with ``settings``: an earlier run's folder (its marker)
    is reused where the settings are the same (the store resumes: nothing to extract;
    the heads are rewritten) and emptied where they differ; the marker records them."""
    import json
    import shutil

    check_demo_folder(folder)
    marker = folder / MARKER
    if marker.is_file():
        try:
            earlier = json.loads(marker.read_text()).get("settings")
        except (ValueError, AttributeError):
            earlier = None
        if earlier != settings:
            echo(f"      {folder} holds an earlier demo run with other settings; rewriting it")
            for item in folder.iterdir():
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
        else:
            echo(f"      {folder} holds an earlier demo run with these settings; reusing its store")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {"written_by": "emi demo; the demo may rewrite this folder", "settings": settings},
            indent=1,
        )
    )


def emi_command() -> str:
    """How to call emi from here: ``emi`` where it is on PATH, else ``./run emi``."""
    import shutil

    return "emi" if shutil.which("emi") else "./run emi"


def serve_arguments(folder: str | os.PathLike) -> list[str]:
    """``emi serve``'s options that serve what ``emi demo`` made in ``folder``: its
    store (the managed store ``feats``), its heads (the registry), the folder as the
    source root (its audio and label files), its random backbone (extract jobs into new
    stores) and a state folder inside it (``service-state``). Paths as ``folder`` is
    given: relative ones hold from where the demo ran.

    Raises:
        ManifestError: ``folder`` holds no finished demo run, naming it and what to run.
    """
    import json

    from manifests import ManifestError

    folder = Path(folder)
    try:
        size = json.loads((folder / MARKER).read_text())["settings"]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        size = None
    backbone, heads = folder / f"backbone-{size}", folder / "heads"
    if size is None or not backbone.is_dir() or not heads.is_dir():
        raise ManifestError(
            f"{folder} holds no finished emi demo run (its {MARKER}, backbone and heads): "
            f"run `emi demo --out {folder}` (or ./run demo) first, or name the folder the "
            "demo wrote"
        )
    return [
        "--stores", str(folder), "--heads", str(heads), "--state", str(folder / SERVICE_STATE),
        "--source-root", str(folder), "--model", str(backbone),
    ]  # fmt: skip


def serve_command(folder: str | os.PathLike, emi: str = "emi") -> list[str]:
    """The ``emi serve`` command that serves a demo folder (:func:`serve_arguments`)."""
    return [*emi.split(), "serve", *serve_arguments(folder)]


def run_demo(
    out: str | os.PathLike = "emi-demo",
    *,
    clips: int = 240,
    size: str = "small",
    workers: int = 1,
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    layers: str = "last",
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Synthesise a labelled corpus, extract it with a random backbone on a dask
    LocalCluster, train the default head (preset ``compact``, named ``compact``) and the
    mean-linear baseline, score the held-out split and write plots (``emi demo``);
    progress goes to ``echo``.

    ``layers`` other than ``"last"`` (``"all"``, ``"0,2,4"``) stores those layers too
    and trains each head a second time on a learned weighting of them
    (``compact-weighted``, ``mean-linear-weighted``), compared side by side.

    Examples:
        >>> from service import run_demo  # doctest: +SKIP
        >>> result = run_demo("emi-demo", clips=40, size="tiny", epochs=2)  # doctest: +SKIP
        >>> result.scores["compact"]["pearson_mean"]  # doctest: +SKIP
    """
    started = time.perf_counter()
    folder = Path(out)
    settings = {"clips": clips, "size": size, "seed": seed, "layers": layers}
    _prepare_folder(folder, settings, echo)
    splits, store = _extract_corpus(folder, clips, size, workers, seed, layers, echo)
    trained = _train_heads(folder, store, splits, epochs, lr, echo)
    targets, scores = _score_test_split(folder, store, splits["test"], trained, echo)
    _list_outputs(folder, trained, echo)
    seconds = time.perf_counter() - started
    echo(f"finished in {seconds:.0f} s\n")
    echo(DISCLAIMER.format(size=size, emi=emi_command()))
    echo(SERVE_ADVICE.format(command=shlex.join(serve_command(folder, emi_command()))))
    if Path("run").is_file():  # in a checkout: the same through ./run
        echo(f"  (or: ./run serve {shlex.quote(str(folder))})")
    return DemoResult(folder, targets, scores, seconds)


def _extract_corpus(folder: Path, clips, size, workers, seed, layers, echo):
    """Steps 1 and 2: the synthetic corpus and its features; (label files, the store)."""
    from featurestore.extraction import extract
    from featurestore.options import ExtractOptions
    from featurestore.random_backbone import write_random_backbone
    from featurestore.store import FeatureStore
    from manifests import build_manifest
    from manifests.synthetic import write_corpus

    echo(f"[1/5] synthesising {clips} labelled clips -> {folder / 'audio'}")
    splits = write_corpus(folder, clips=clips, seed=seed)
    backbone = write_random_backbone(folder / f"backbone-{size}", size=size, seed=seed)
    echo(
        f"[2/5] extracting with a random {size} backbone on a LocalCluster "
        f"({workers} worker{'s' if workers > 1 else ''})"
    )
    records = build_manifest(folder / "audio", label_files=list(splits.values()))
    summary = extract(
        records,
        str(folder / "feats.zarr"),
        ExtractOptions.of(model=str(backbone), workers=workers, layers=layers),
    )
    speed = (
        f" ({summary.audio_s / max(summary.wall_s, 1e-9):.0f} audio s per s)"
        if summary.extracted
        else ""
    )
    echo(
        f"      {summary.extracted} clips extracted, {summary.already_stored} already "
        f"stored, {len(summary.failed)} failed{speed}"
    )
    return splits, FeatureStore.open(folder / "feats.zarr")


def _train_heads(folder: Path, store, splits: dict, epochs: int, lr: float, echo) -> list:
    """Step 3: the default head (under its preset's name) and the ridge baseline, and
    with stored layers each again on a learned weighting of them; the comparison plot."""
    from manifests import read_labels
    from models.compare import compare_heads, comparison_figure
    from models.options import DEFAULT_PRESET, TrainSettings
    from models.training import HeadPlan, train_heads

    settings = TrainSettings(epochs=epochs, lr=lr, seed=1)
    plans = [
        HeadPlan(name=DEFAULT_PRESET, preset=DEFAULT_PRESET, settings=settings),
        HeadPlan(name="mean-linear", preset="mean-linear", settings=settings),
    ]
    if store.layers:  # the same heads on a learned weighting of the stored layers
        plans += [replace(p, name=f"{p.name}-weighted", layer="weighted") for p in list(plans)]
    echo(f"[3/5] training {len(plans)} heads ({epochs} epochs, one data load)")
    trained = train_heads(
        store,
        read_labels(splits["train"]),
        read_labels(splits["valid"]),
        plans,
        folder / "heads",
        overwrite=True,  # the demo's own folder
        log=lambda line: echo(f"      {line}") if _every_fifth(line) else None,
    )
    for t in trained:
        total = len(t.metrics["epochs"])
        how = (
            "closed-form ridge" if "ridge" in t.metrics else f"best epoch {t.best_epoch} of {total}"
        )
        echo(f"      {t.name}: {how} (validation mean Pearson {t.best_val_pearson:.3f})")
        if "layer_weights" in t.metrics:
            weights = ", ".join(f"{k}: {w:.2f}" for k, w in t.metrics["layer_weights"].items())
            echo(f"        learned layer weights {weights}")
    comparison_figure(compare_heads([folder / "heads"]), folder / "heads_comparison.png")
    return trained


def _score_test_split(folder: Path, store, test_labels, trained: list, echo):
    """Steps 4 and 5: every head on the held-out split, its plots and the Pearson
    table; (targets, per head name its metrics)."""
    import numpy as np

    from manifests import read_labels
    from models.head_files import load_head
    from models.metrics import evaluate
    from models.plots import plot_predictions
    from models.prediction import predict_store, write_predictions_csv

    echo("[4/5] scoring the held-out test split")
    test = read_labels(test_labels)
    heads = [load_head(t.folder) for t in trained]
    ids = sorted(c for c in test.rows if c in store)
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
    echo("[5/5] held-out test Pearson r per target\n")
    names = [h.name for h in heads]
    width = max(14, *(len(n) + 2 for n in names))
    echo(f"  {'target':16s}" + "".join(f"{n:>{width}s}" for n in names))
    for t in targets:
        echo(f"  {t:16s}" + "".join(f"{scores[n]['pearson'][t]:{width}.3f}" for n in names))
    echo(f"  {'mean':16s}" + "".join(f"{scores[n]['pearson_mean']:{width}.3f}" for n in names))
    return targets, scores


def _list_outputs(folder: Path, trained: list, echo) -> None:
    """What the demo wrote, one line each."""
    echo(f"\noutputs in {folder}/:")
    outputs = [
        ("audio/, *_split.csv", "the synthetic corpus and its labels"),
        ("feats.zarr", "the feature store"),
        *(
            (
                f"heads/{t.name}/",
                "config.json, model.safetensors, metrics.json, "
                + ("ridge_penalty.png" if "ridge" in t.metrics else "learning_curves.png"),
            )
            for t in trained
        ),
        ("heads_comparison.png", "the heads side by side (validation Pearson)"),
        ("test_predictions.csv", "held-out predictions of every head"),
        *(
            (f"test_{t.name}_pred_vs_true.png", "predicted against true, per target")
            for t in trained
        ),
    ]
    for name, what in outputs:
        echo(f"  {name:34s} {what}")
