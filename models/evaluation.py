"""Evaluating heads on labelled clips, with bootstrap confidence intervals (``emi evaluate``).

For each head: the challenge score (mean Pearson over targets of predictions clamped
to [0, 1]) and per-target Pearson, CCC and MSE, computed with the trainer's metrics
(``models.metrics``). Uncertainty comes from a bootstrap over clips: ``resamples`` sets
of clips drawn with replacement (seeded), every metric recomputed on each, and the
percentile interval reported. For two heads, a **paired** bootstrap draws the same clips
for both, so the interval of the difference in score says whether one head is really
better on data like this (an interval that excludes 0).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurestore.store import FeatureStore
from manifests.atomic import atomic_file
from manifests.labels import LabelTable, read_labels
from models.bootstrap import (
    METRICS,
    HeadScores,
    bootstrap_indices,
    percentile_interval,
    score_head,
)
from models.head_files import LoadedHead
from models.metrics import constant_columns
from models.prediction import load_heads, predict_store

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass
class Evaluation:
    """What :func:`evaluate_heads` found."""

    clips: int
    targets: list[str]
    resamples: int
    confidence: float
    seed: int
    heads: list[HeadScores]
    differences: list[dict] = field(default_factory=list)  # paired, per pair of heads
    skipped: list[str] = field(default_factory=list)  # labelled clips not in the store
    # what the numbers cannot say (a head predicting a constant: Pearson undefined, shown 0)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "clips": self.clips,
            "targets": self.targets,
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "heads": {
                h.head: {
                    "means": {m: i.to_dict() for m, i in h.means.items()},
                    "per_target": {
                        m: {t: i.to_dict() for t, i in by_target.items()}
                        for m, by_target in h.per_target.items()
                    },
                }
                for h in self.heads
            },
            "differences": self.differences,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }

    def write_csv(self, path: str | os.PathLike) -> Path:
        """One row per head, metric and target (``mean`` for the mean over targets)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)  # as the predictions CSV does
        with atomic_file(path) as temporary, temporary.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["head", "metric", "target", "value", "low", "high"])
            for h in sorted(self.heads, key=lambda h: h.head):
                for metric in METRICS:
                    rows = [*h.per_target[metric].items(), ("mean", h.means[metric])]
                    for target, i in rows:
                        writer.writerow(
                            [
                                h.head,
                                metric,
                                target,
                                f"{i.value:.6f}",
                                f"{i.low:.6f}",
                                f"{i.high:.6f}",
                            ]
                        )
        return path


def paired_difference(
    a: str,
    b: str,
    a_samples: np.ndarray,
    b_samples: np.ndarray,
    a_full: float,
    b_full: float,
    confidence: float,
) -> dict:
    """The score of ``a`` minus that of ``b`` over the same resampled clips."""
    diff = a_samples - b_samples
    interval = percentile_interval(a_full - b_full, diff, confidence)
    return {
        "a": a,
        "b": b,
        "difference": interval.to_dict(),
        "share_a_better": float(np.mean(diff > 0)) if len(diff) else float("nan"),
    }


def evaluate_heads(
    store: str | os.PathLike | FeatureStore,
    heads: Sequence[str | os.PathLike | LoadedHead],
    labels: str | os.PathLike | LabelTable,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    skip_missing: bool = False,
    device: str = "auto",
    output_csv: str | os.PathLike | None = None,
) -> Evaluation:
    """Score heads against labelled clips of a store (``emi evaluate``).

    Args:
        store: a store path or URL, or an open :class:`FeatureStore`.
        heads: head folders (or loaded heads); each must predict the label columns.
        labels: a label CSV in the challenge format (or a read table).
        resamples: bootstrap resamples over clips (0: no intervals).
        confidence: the interval's coverage (0.95: the 2.5th to 97.5th percentile).
        seed: the bootstrap's seed (the same seed, the same intervals).
        skip_missing: score the labelled clips that are stored; else missing ones are
            an error, as in training.
        output_csv: also write the table of metrics there.

    Raises:
        ManifestError: bad labels, or labelled clips missing from the store.
        HeadError: a head trained on another fingerprint, or without a label column.

    Examples:
        >>> from models import evaluate_heads  # doctest: +SKIP
        >>> result = evaluate_heads("feats.zarr", ["heads/a"], "test.csv")  # doctest: +SKIP
        >>> result.heads[0].score  # doctest: +SKIP
        Interval(value=0.41, low=0.37, high=0.45)
    """
    from featurestore.errors import ArgumentError
    from models.errors import HeadError
    from models.head_files import sets_for_head
    from models.training import resolve_labels

    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ArgumentError(f"resamples {resamples!r}: give a whole number >= 0 (0: no intervals)")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not (0 < confidence < 1)
    ):
        raise ArgumentError(f"confidence {confidence!r}: give a number between 0 and 1 (0.95)")
    opened = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    table = labels if isinstance(labels, LabelTable) else read_labels(labels)
    loaded = load_heads(heads, device=device)
    # every set the heads read: a clip is evaluated where all of them hold it
    every = list({s.feature_set: s for h in loaded for s in sets_for_head(opened, h)}.values())
    split = resolve_labels(every, table, role="evaluation", skip_missing=skip_missing)
    targets = list(loaded[0].targets)
    for h in loaded:
        lacking = [t for t in h.targets if t not in table.targets]
        if lacking:
            raise HeadError(f"head {h.name!r} predicts {lacking}, which {table.path} lacks")
    ids = sorted(split.clip_ids)
    ids, predictions = predict_store(opened, loaded, clip_ids=ids, device=device)
    rows = {c: split.values[i] for i, c in enumerate(split.clip_ids)}
    indices = bootstrap_indices(len(ids), resamples, seed)
    results, samples, full, warnings = [], {}, {}, []
    for h in loaded:
        constant = [
            t for t, c in zip(h.targets, constant_columns(predictions[h.name]), strict=True) if c
        ]
        if constant and ids:
            warnings.append(
                f"head {h.name} predicts the same value for every clip for "
                f"{', '.join(constant)}: Pearson is undefined there (shown as 0.000)"
            )
        columns = [table.targets.index(t) for t in h.targets]
        true = np.array([rows[c][columns] for c in ids], dtype=np.float64)
        scores, samples[h.name] = score_head(
            h.name, predictions[h.name], true, h.targets, indices, confidence
        )
        full[h.name] = scores.score.value
        results.append(scores)
    names = [h.name for h in loaded]
    differences = [
        paired_difference(a, b, samples[a], samples[b], full[a], full[b], confidence)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    evaluation = Evaluation(
        clips=len(ids),
        targets=targets,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
        heads=results,
        differences=differences,
        skipped=sorted(c for c in table.rows if not all(c in s for s in every)),
        warnings=warnings,
    )
    if output_csv is not None:
        evaluation.write_csv(output_csv)
    return evaluation
