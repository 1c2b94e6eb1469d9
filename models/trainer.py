"""The one call that trains heads from a store (``emi train``, ``models.train``): on
this machine, sharing one load of the features between a grid's heads, or spread over
a dask cluster one task per head (:mod:`models.cluster_training`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from featurestore.store import FeatureStore
from manifests.labels import LabelTable, read_labels
from models.cluster_training import train_heads_on_cluster
from models.errors import SettingsError
from models.heads import PRESETS
from models.options import (
    DEFAULT_CACHE_GB,
    DEFAULT_PRESET,
    TrainSettings,
    check_features,
    check_setting,
    check_targets,
    parse_layer,
)
from models.training import EpochStep, HeadPlan, TrainedHead, plans_from_grid, train_heads


def train(
    store: str | os.PathLike | FeatureStore,
    labels: str | os.PathLike | LabelTable,
    val_labels: str | os.PathLike | LabelTable,
    out: str | os.PathLike,
    *,
    preset: str = DEFAULT_PRESET,
    grid: str | os.PathLike | dict | None = None,
    targets: str | tuple[str, ...] | None = None,
    layer: int | str | None = None,
    sizes: dict | None = None,
    settings: TrainSettings | None = None,
    device: str = "auto",
    cache_gb: float = DEFAULT_CACHE_GB,
    skip_missing: bool = False,
    scheduler: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    overwrite: bool = False,
    features: str | tuple[str, ...] | None = None,
    progress: Callable[[EpochStep], None] | None = None,
) -> list[TrainedHead]:
    """Train one head, or a grid of heads over one load of the features (``emi train``).

    Args:
        store: a store path or URL, or an open :class:`FeatureStore`.
        labels: the training labels: a CSV in the challenge format (or a read table).
        val_labels: the validation labels, likewise; the best epoch is the one with the
            best mean validation Pearson.
        out: the head folder; with ``grid``, the parent of one folder per head.
        preset: ``compact`` (the default: a 256-unit fusion head, emi's recipe),
            ``fusion`` (the paper's architecture, emi's recipe), ``paper`` (the paper's
            recipe exactly) or ``mean-linear`` (closed-form ridge), without ``grid``.
        grid: a grid file (path) or its dict: many heads, one data load (docs/heads.md).
        targets: label columns to train on (``"A,B"`` or a tuple); None: all.
        layer: the representation (without ``grid``): None or ``"last"``: the last
            hidden state; k: stored layer k; ``"weighted"``: a learned softmax
            weighting of every stored layer.
        sizes: overrides of ``lstm_hidden``, ``lstm_layers``, ``mlp_hidden``, ``dropout``.
        settings: overrides of the preset's recipe (fields left None keep it).
        cache_gb: memory for cached sequences; larger data streams from the store.
        scheduler: spread a grid over a running dask scheduler (one task per head).
        log: receives per-epoch lines.
        progress: receives an :class:`~models.training.EpochStep` after every epoch (a
            ridge head: once); an exception it raises stops the training there (heads
            already saved stay).
        overwrite: replace existing head folders (else they are refused before work).
        features: the feature set(s) to train on (without ``grid``; ``"a"``, ``"a,b"``
            or a tuple: several are joined per frame); None: the store's only or default
            set (or the set an open ``store`` is on).

    Raises:
        ManifestError: bad labels, or labelled clips missing (unless ``skip_missing``).
        SettingsError: a bad grid or setting (the message names head and key).
        HeadError: ``out`` holds something that is not a head.

    Examples:
        >>> from models import train  # doctest: +SKIP
        >>> train("feats.zarr", "train.csv", "valid.csv", "heads/paper")  # doctest: +SKIP
    """
    settings = settings or TrainSettings()
    tables = [t if isinstance(t, LabelTable) else read_labels(t) for t in (labels, val_labels)]
    if grid is not None:
        if not isinstance(grid, dict):
            try:
                grid = json.loads(Path(grid).read_text())
            except (OSError, ValueError) as err:
                raise SettingsError(f"grid file {grid}: {err}") from err
            except RecursionError:
                raise SettingsError(
                    f"grid file {grid}: nested too deeply to be a grid (a grid is an object "
                    "of 'defaults', 'heads' and 'grid', each one level deep)"
                ) from None
        plans = plans_from_grid(grid, defaults=settings)
    else:
        if preset not in PRESETS:
            raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        plans = [
            HeadPlan(
                name=Path(out).name,
                preset=preset,
                sizes={k: check_setting(k, v) for k, v in (sizes or {}).items() if v is not None},
                settings=settings,
                targets=None if targets is None else check_targets(targets),
                layer=parse_layer(layer),
                features=check_features(features),
            )
        ]
    budget = int(cache_gb * 2**30)
    if scheduler:
        if grid is None:
            raise SettingsError("a scheduler spreads a grid of heads; give a grid")
        location = store.location if isinstance(store, FeatureStore) else str(store)
        opened = store if isinstance(store, FeatureStore) else FeatureStore.open(location)
        for plan in plans:  # fail here, not on every worker, if a set is missing
            plan.feature_stores(opened)
        return train_heads_on_cluster(
            location,
            *tables,
            plans,
            out,
            scheduler=scheduler,
            device=device,
            budget_bytes=budget,
            skip_missing=skip_missing,
            overwrite=overwrite,
            feature_set=opened.feature_set,
        )
    opened = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    return train_heads(
        opened,
        *tables,
        plans,
        out,
        device=device,
        budget_bytes=budget,
        skip_missing=skip_missing,
        single=grid is None,
        log=log,
        overwrite=overwrite,
        progress=progress,
    )
