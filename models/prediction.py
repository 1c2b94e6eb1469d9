"""Running trained heads over a store: one data pass, CSV out, clamped to [0, 1]."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.devices import require_device
from featurestore.store import FeatureStore, check_clip_ids
from manifests.atomic import atomic_file
from models.errors import HeadError
from models.head_files import LoadedHead, load_head, sets_for_head
from models.sequences import DEFAULT_BUDGET_BYTES, load_sequences, require_clips
from models.training import flush_denormals, predict_batches


def predict_store(
    store: FeatureStore,
    heads: list[LoadedHead],
    *,
    clip_ids: list[str] | None = None,
    device: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[list[str], dict]:
    """Predictions of every head for ``clip_ids`` (default: every clip some head can
    score).

    Returns:
        The clip ids and, per head name, a ``(clips, targets)`` array clamped to [0, 1];
        without ``clip_ids``, a row is NaN where the head's feature sets do not hold the
        clip (each head predicts every clip its own sets hold; no clip is dropped).

    Each head reads the feature set(s) of ``store`` that hold its features (by
    fingerprint); heads of the same sets share one read of them. Default clips: those
    every set of at least one head holds, sorted.

    Raises:
        HeadError: no set of the store holds a head's features (naming the set it
            needs); a head predicted NaN or inf (naming the clips).
        StoreError: a clip asked for is missing from a set a head reads (naming it).
    """

    def key(head: LoadedHead) -> tuple[str, ...]:
        return tuple(ref.fingerprint for ref in head.config.feature_refs)

    sets = {key(h): sets_for_head(store, h) for h in heads}
    device = require_device(device)
    every = {s.feature_set: s for group in sets.values() for s in group}.values()
    held = {k: set.intersection(*(set(s.clip_ids) for s in group)) for k, group in sets.items()}
    if clip_ids is None:
        ids = sorted(set().union(*held.values()))
    else:
        ids = check_clip_ids(clip_ids)
        require_clips(every, ids)
    row_of = {c: i for i, c in enumerate(ids)}
    out = {}
    for wanted, opened in sets.items():
        readers = [h for h in heads if key(h) == wanted]
        own = [c for c in ids if c in held[wanted]]
        data = load_sequences(
            opened,
            own,
            crops=[h.max_frames for h in readers],
            budget_bytes=budget_bytes,
            layers=tuple(k for h in readers for k in h.model.config.layers),
        )
        for head in readers:
            head.model.to(device)
            raw = flush_denormals(
                predict_batches, head.model, data, own, device=device, max_frames=head.max_frames
            )
            values = np.full((len(ids), len(head.targets)), np.nan)
            if own:
                predicted = np.stack([raw[c] for c in own])
                finite = np.isfinite(predicted).all(1)
                bad = [c for c, ok in zip(own, finite, strict=True) if not ok]
                if bad:
                    raise HeadError(
                        f"head {head.name!r} ({head.folder}) predicted NaN or inf for "
                        f"{len(bad)} clips (e.g. {', '.join(bad[:5])}); check them with "
                        "`emi store verify`, or retrain the head"
                    )
                values[[row_of[c] for c in own]] = np.clip(predicted, 0.0, 1.0)
            out[head.name] = values
    return ids, {h.name: out[h.name] for h in heads}


def write_predictions_csv(
    path: str | Path, clip_ids: list[str], heads: list[LoadedHead], predictions: dict
) -> Path:
    """``clip_id`` + one column per target; with several heads, ``<head>/<target>``.
    A head's cells are empty where it could not score the clip (NaN: its feature sets
    do not hold it).

    Written to a temporary sibling and moved into place (never half a CSV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = len(heads) > 1
    header = ["clip_id"] + [f"{h.name}/{t}" if prefix else t for h in heads for t in h.targets]
    for h in heads:
        if np.isinf(predictions[h.name]).any():
            raise HeadError(f"head {h.name!r} ({h.folder}) predicted inf; retrain it")
    with atomic_file(path) as temporary, temporary.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, clip_id in enumerate(clip_ids):
            values = [
                _cell(predictions[h.name][row, i]) for h in heads for i in range(len(h.targets))
            ]
            writer.writerow([clip_id, *values])
    return path


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"


def load_heads(
    heads: Sequence[str | os.PathLike | LoadedHead], *, device: str = "auto", distinct: bool = True
):
    """Head folders (or already loaded heads) as :class:`LoadedHead`, names distinct
    (``distinct`` False: the caller names them).

    Raises:
        HeadError: a folder is not a head, or two heads share a name.
    """
    device = require_device(device)
    if isinstance(heads, (str, os.PathLike, LoadedHead)):
        heads = [heads]  # one head folder given alone
    loaded = [h if isinstance(h, LoadedHead) else load_head(h, device=device) for h in heads]
    names = [h.name for h in loaded]
    if distinct and len(set(names)) != len(names):
        raise HeadError(f"head folders share names {names}; rename a folder")
    if not loaded:
        raise HeadError("no head given")
    return loaded


@dataclass
class Predictions:
    """Predictions of some heads for some clips, clamped to [0, 1].

    Attributes:
        clip_ids: the clips, sorted.
        heads: the heads, in the order given.
        values: per head name, a ``(clips, targets)`` float array; a row is NaN where
            that head's feature sets do not hold the clip (see :attr:`unscored`).
    """

    clip_ids: list[str]
    heads: list[LoadedHead]
    values: dict[str, np.ndarray]

    def write_csv(self, path: str | os.PathLike) -> Path:
        """``clip_id`` + one column per target (``<head>/<target>`` with several heads)."""
        return write_predictions_csv(path, self.clip_ids, self.heads, self.values)

    @property
    def unscored(self) -> dict[str, list[str]]:
        """Per head name, the clips it could not score (its feature sets lack them)."""
        return {
            h.name: [
                c
                for c, row in zip(self.clip_ids, self.values[h.name], strict=True)
                if np.isnan(row).all()
            ]
            for h in self.heads
        }

    def rows(self) -> list[dict]:
        """One dict per clip: ``clip_id`` and the CSV's columns as floats (None where
        the head could not score the clip)."""
        prefix = len(self.heads) > 1
        out = []
        for row, clip_id in enumerate(self.clip_ids):
            entry = {"clip_id": clip_id}
            for h in self.heads:
                for i, t in enumerate(h.targets):
                    value = float(self.values[h.name][row, i])
                    entry[f"{h.name}/{t}" if prefix else t] = None if np.isnan(value) else value
            out.append(entry)
        return out


def predict(
    store: str | os.PathLike | FeatureStore,
    heads: Sequence[str | os.PathLike | LoadedHead],
    *,
    output: str | os.PathLike | None = None,
    clip_ids: list[str] | None = None,
    device: str = "auto",
) -> Predictions:
    """Run heads over every clip of a store (``emi predict``), rows sorted by clip id.

    Args:
        store: a store path or URL, or an open :class:`FeatureStore`.
        heads: head folders (or loaded heads).
        output: also write the CSV there.
        clip_ids: only these clips (default: every clip some head's sets hold; a head's
            cells are empty for clips its sets lack).
        device: ``auto``, ``cpu`` or ``cuda``.

    Raises:
        HeadError: a head trained on another fingerprint, or not a head.
        StoreDamage: damaged data in the store.

    Examples:
        >>> from models import predict  # doctest: +SKIP
        >>> predict("feats.zarr", ["heads/paper"], output="predictions.csv")  # doctest: +SKIP
    """
    opened = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    loaded = load_heads(heads, device=device)
    ids = None if clip_ids is None else sorted(check_clip_ids(clip_ids))
    ids, values = predict_store(opened, loaded, clip_ids=ids, device=device)
    result = Predictions(ids, loaded, values)
    if output is not None:
        result.write_csv(output)
    return result
