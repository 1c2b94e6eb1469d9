"""Running trained heads over a store: one data pass, CSV out, clamped to [0, 1]."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from featurestore.store import FeatureStore
from manifests.atomic import atomic_file
from models.errors import HeadError
from models.head_files import LoadedHead, check_fingerprint, torch_device
from models.sequences import DEFAULT_BUDGET_BYTES, SequenceData
from models.training import predict_batches


def predict_store(
    store: FeatureStore,
    heads: list[LoadedHead],
    *,
    clip_ids: list[str] | None = None,
    device: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[list[str], dict]:
    """Predictions of every head for ``clip_ids`` (default: all stored clips).

    Returns:
        The clip ids and, per head name, a ``(clips, targets)`` array clamped to [0, 1].

    Raises:
        HeadError: a head was trained on features with another fingerprint.
    """
    for head in heads:
        check_fingerprint(head, store.fingerprint, store.location)
    device = torch_device(device)
    ids = list(store.clip_ids if clip_ids is None else clip_ids)
    crops = [h.max_frames for h in heads]
    data = SequenceData(
        store, ids, max_frames=None if None in crops else max(crops), budget_bytes=budget_bytes
    )
    out = {}
    for head in heads:
        head.model.to(device)
        raw = predict_batches(head.model, data, ids, device=device, max_frames=head.max_frames)
        out[head.name] = (
            np.clip(np.stack([raw[c] for c in ids]), 0.0, 1.0)
            if ids
            else np.zeros((0, len(head.targets)))
        )
    return ids, out


def write_predictions_csv(
    path: str | Path, clip_ids: list[str], heads: list[LoadedHead], predictions: dict
) -> Path:
    """``clip_id`` + one column per target; with several heads, ``<head>/<target>``.

    Written to a temporary sibling and moved into place (never half a CSV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = len(heads) > 1
    header = ["clip_id"] + [f"{h.name}/{t}" if prefix else t for h in heads for t in h.targets]
    for h in heads:
        if not np.isfinite(predictions[h.name]).all():
            raise HeadError(f"head {h.name!r} ({h.folder}) predicted NaN or inf; retrain it")
    with atomic_file(path) as temporary, temporary.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, clip_id in enumerate(clip_ids):
            values = [
                f"{predictions[h.name][row, i]:.6f}" for h in heads for i in range(len(h.targets))
            ]
            writer.writerow([clip_id, *values])
    return path
