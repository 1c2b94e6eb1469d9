"""A ``torch.utils.data.Dataset`` over a feature store, for your own training loop."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from featurestore.store import FeatureStore
from manifests.labels import LabelTable, read_labels
from models.sequences import DEFAULT_BUDGET_BYTES, Batch, SequenceData


class StoreDataset(Dataset):
    """Stored clips as ``{"clip_id", "frames", "mean", "target"?}`` items.

    ``frames`` is the head input per frame, ``[hidden, frame_vad]``, ``(frames,
    hidden + 3)`` float32; ``mean`` its mean over the clip's (cropped) frames,
    ``(hidden + 3,)``; ``target`` the label row ``(targets,)`` when ``labels`` are given.
    Sequences are read once, part by part, and kept (float16) when they fit in
    ``budget_bytes``; otherwise each item is read from the store (checked) on access.
    :meth:`collate` pads a list of items into a :class:`models.sequences.Batch`.

    Args:
        store: a store path or URL, or an open :class:`FeatureStore`.
        clip_ids: the clips (default: the labelled ones if ``labels``, else all).
        labels: a label CSV (challenge format) or a read table.
        targets: label columns to use (default: all of the file's).
        max_frames: keep only each clip's first frames.

    Examples:
        >>> from torch.utils.data import DataLoader  # doctest: +SKIP
        >>> data = StoreDataset("feats.zarr", labels="train_split.csv")  # doctest: +SKIP
        >>> loader = DataLoader(data, batch_size=32, collate_fn=data.collate)  # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | os.PathLike | FeatureStore,
        *,
        clip_ids: list[str] | None = None,
        labels: str | os.PathLike | LabelTable | None = None,
        targets: list[str] | None = None,
        max_frames: int | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        table = None
        if labels is not None:
            table = labels if isinstance(labels, LabelTable) else read_labels(labels)
        if clip_ids is None:
            clip_ids = list(table.rows) if table is not None else self.store.clip_ids
        self.clip_ids = list(clip_ids)
        self.targets = list(targets or (table.targets if table is not None else []))
        self._labels = None
        if table is not None:
            columns = [table.targets.index(t) for t in self.targets]
            missing = [c for c in self.clip_ids if c not in table.rows]
            if missing:
                raise KeyError(f"{len(missing)} clips have no labels, e.g. {missing[:5]}")
            self._labels = {c: np.asarray(table.rows[c], np.float32)[columns] for c in clip_ids}
        self.max_frames = max_frames
        self._data = SequenceData(
            self.store, self.clip_ids, max_frames=max_frames, budget_bytes=budget_bytes
        )
        self._cache: dict | None = None

    def __len__(self) -> int:
        return len(self.clip_ids)

    def _sequence(self, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._data.cached:
            if self._cache is None:
                self._cache = next(self._data._windows(None))
            seq, stored_mean, full = self._cache[clip_id]
        else:
            hidden = self.store.hidden(clip_id)
            full = len(hidden)
            end = full if self.max_frames is None else min(full, self.max_frames)
            seq, stored_mean = hidden[:end].astype(np.float32), self.store.hidden_mean(clip_id)
            if self.store.spec.vad_labels:  # a set without the VAD head: hidden only
                seq = np.concatenate([seq, self.store.frame_vad(clip_id)[:end]], axis=1)
                stored_mean = np.concatenate([stored_mean, self.store.vad_mean(clip_id)])
        seq = seq.astype(np.float32)
        mean = seq.mean(axis=0) if len(seq) < full else stored_mean.astype(np.float32)
        return seq, mean

    def __getitem__(self, index: int) -> dict:
        clip_id = self.clip_ids[index]
        seq, mean = self._sequence(clip_id)
        item = {"clip_id": clip_id, "frames": torch.from_numpy(seq), "mean": torch.from_numpy(mean)}
        if self._labels is not None:
            item["target"] = torch.from_numpy(self._labels[clip_id])
        return item

    @staticmethod
    def collate(items: list[dict]) -> Batch:
        """Pad a list of items into a batch: ``frames (batch, time, input)`` zero-padded,
        ``lengths``, ``mean`` and ``targets`` (None without labels)."""
        lengths = torch.tensor([len(i["frames"]) for i in items], dtype=torch.int64)
        frames = torch.nn.utils.rnn.pad_sequence([i["frames"] for i in items], batch_first=True)
        targets = torch.stack([i["target"] for i in items]) if "target" in items[0] else None
        return Batch(
            clip_ids=[i["clip_id"] for i in items],
            frames=frames,
            lengths=lengths,
            mean=torch.stack([i["mean"] for i in items]),
            targets=targets,
        )
