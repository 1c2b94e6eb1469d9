"""Per-clip input sequences for heads, read from the store within a memory budget.

A clip's sequence is ``[hidden, frame_vad]`` per frame, ``(frames, hidden + vad)``, held
as float16 (the store's precision for hidden). Its global mean vector is
``[hidden_mean, vad_mean]`` from the store, or, when a head crops to ``max_frames``,
the mean over the cropped frames. Where heads read other stored layers (``layers``),
the sequence holds one ``hidden`` block per layer, ``(frames, layers x hidden + vad)``,
and each batch carries the blocks its head asks for, in its order.

Memory: if the requested clips fit in ``budget_bytes`` they are read once, part by
part, and kept for every epoch and every head. Otherwise each pass streams: parts in
random order, grouped into windows that fit the budget, clips shuffled within a
window (a shuffle buffer); each window is read once per pass and dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurestore.spec import layer_key
from featurestore.store import FeatureStore
from models.options import DEFAULT_CACHE_GB

DEFAULT_BUDGET_BYTES = int(DEFAULT_CACHE_GB * 2**30)


@dataclass
class Batch:
    clip_ids: list[str]
    frames: torch.Tensor  # (batch, time, input) float32, zero-padded
    lengths: torch.Tensor  # (batch,) int64 real frames
    mean: torch.Tensor  # (batch, input) float32
    targets: torch.Tensor | None  # (batch, targets) float32

    def to(self, device: str) -> Batch:
        return Batch(
            self.clip_ids,
            self.frames.to(device, non_blocking=True),
            self.lengths,  # pack_padded_sequence wants lengths on the CPU
            self.mean.to(device, non_blocking=True),
            None if self.targets is None else self.targets.to(device, non_blocking=True),
        )


class SequenceData:
    """Sequences of ``clip_ids`` from ``store``, cached or streamed (see module doc).

    Args:
        store: an open feature store.
        clip_ids: the clips to serve (all must be stored).
        max_frames: longest crop any consumer will ask for (None: whole clips).
        budget_bytes: memory for cached float16 sequences.
        layers: the stored layers any consumer will ask for (None: ``hidden``, the
            last hidden state; k: ``hidden_states[k]``), read in one pass.
    """

    def __init__(
        self,
        store: FeatureStore,
        clip_ids: list[str],
        *,
        max_frames: int | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        layers: tuple[int | None, ...] = (None,),
    ) -> None:
        self.store = store
        self.max_frames = max_frames
        self.vad_width = store.spec.vad_width
        self.layers = tuple(dict.fromkeys(layers))
        for layer in self.layers:
            store.spec.layer_number(layer)  # a layer that is not stored: LayerError now
        self.hidden_size = store.hidden_size
        self.input_dim = store.hidden_size + self.vad_width  # of one layer
        self.width = len(self.layers) * store.hidden_size + self.vad_width  # as held
        missing = [c for c in clip_ids if c not in store]
        if missing:
            raise KeyError(f"{len(missing)} clips are not in the store, e.g. {missing[:5]}")
        self.clip_ids = list(clip_ids)
        by_part: dict[str, list[str]] = {}
        for clip_id in self.clip_ids:
            by_part.setdefault(store.part_of(clip_id), []).append(clip_id)
        self._by_part = by_part
        self._bytes = {
            part: sum(self._clip_frames(c) for c in ids) * self.width * 2
            for part, ids in by_part.items()
        }
        self.total_bytes = sum(self._bytes.values())
        self.budget_bytes = budget_bytes
        self.cached = self.total_bytes <= budget_bytes
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.parts_read = 0  # how many part reads happened (for tests and benchmarks)

    def _clip_frames(self, clip_id: str) -> int:
        frames = self.store.frames(clip_id)
        return frames if self.max_frames is None else min(frames, self.max_frames)

    def _read_parts(self, parts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """clip id -> (sequence (frames, input) float16, stored mean (input,) float32,
        the clip's full frame count)."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        hidden_keys = [layer_key("hidden", k) for k in self.layers]
        mean_keys = [layer_key("hidden_mean", k) for k in self.layers]
        # a set without the VAD head has no VAD arrays (its sequences are hidden only)
        vad_keys = ("frame_vad", "vad_mean") if self.vad_width else ()
        for part in parts:
            arrays = self.store.read_part(part, (*hidden_keys, *mean_keys, *vad_keys))
            ids, offsets = arrays["clip_id"], arrays["offsets"]
            means = np.concatenate([arrays[k] for k in (*mean_keys, *vad_keys[1:])], axis=1)
            self.parts_read += 1
            wanted = set(self._by_part[part])
            for row, clip_id in enumerate(ids):
                if clip_id not in wanted:
                    continue
                start, end = int(offsets[row]), int(offsets[row + 1])
                if self.max_frames is not None:
                    end = min(end, start + self.max_frames)
                seq = np.empty((end - start, self.width), dtype=np.float16)
                for block, key in enumerate(hidden_keys):
                    columns = slice(block * self.hidden_size, (block + 1) * self.hidden_size)
                    seq[:, columns] = arrays[key][start:end]
                if self.vad_width:
                    seq[:, -self.vad_width :] = arrays["frame_vad"][start:end]
                out[clip_id] = (
                    seq,
                    means[row].astype(np.float32),
                    int(offsets[row + 1] - offsets[row]),
                )
        return out

    def _windows(self, rng: np.random.Generator | None) -> Iterator[dict]:
        if self.cached:
            if self._cache is None:
                self._cache = self._read_parts(list(self._by_part))
            yield self._cache
            return
        parts = list(self._by_part)
        if rng is not None:
            parts = [parts[i] for i in rng.permutation(len(parts))]
        window: list[str] = []
        size = 0
        for part in parts:
            if window and size + self._bytes[part] > self.budget_bytes:
                yield self._read_parts(window)
                window, size = [], 0
            window.append(part)
            size += self._bytes[part]
        if window:
            yield self._read_parts(window)

    def batches(
        self,
        batch_size: int,
        *,
        clip_ids: list[str] | None = None,
        targets: dict[str, np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
        max_frames: int | None = None,
        layers: tuple[int | None, ...] = (None,),
    ) -> Iterator[Batch]:
        """One pass over ``clip_ids`` (default all) in batches.

        Args:
            targets: clip id -> target vector; batches carry them when given.
            rng: shuffles when given; None keeps store order.
            max_frames: crop for this consumer (<= the data's own ``max_frames``); the
                mean vector is then taken over the cropped frames.
            layers: the layers this consumer reads (of the data's ``layers``); a batch's
                per-frame width is ``len(layers) x hidden + vad``.
        """
        wanted = set(self.clip_ids if clip_ids is None else clip_ids)
        columns = self._columns(layers)
        for window in self._windows(rng):
            ids = [c for c in window if c in wanted]
            if rng is not None:
                ids = [ids[i] for i in rng.permutation(len(ids))]
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                yield self._collate(window, chunk, targets, max_frames, columns)

    def _columns(self, layers: tuple[int | None, ...]) -> np.ndarray | None:
        """The columns of the held sequence that ``layers`` read (None: all of them)."""
        missing = [k for k in layers if k not in self.layers]
        if missing:
            raise KeyError(f"layers {missing} were not loaded (loaded: {list(self.layers)})")
        if tuple(layers) == self.layers:
            return None
        blocks = [
            np.arange(
                self.layers.index(k) * self.hidden_size,
                (self.layers.index(k) + 1) * self.hidden_size,
            )
            for k in layers
        ]
        vad = np.arange(self.width - self.vad_width, self.width)
        return np.concatenate([*blocks, vad])

    def _collate(self, window, chunk, targets, max_frames, columns) -> Batch:
        seqs, means = [], []
        for clip_id in chunk:
            seq, stored_mean, full_frames = window[clip_id]
            if max_frames is not None:
                seq = seq[:max_frames]
            if columns is not None:
                seq, stored_mean = seq[:, columns], stored_mean[columns]
            # The stored mean covers the whole clip; a cropped clip's mean is recomputed.
            cropped = len(seq) < full_frames
            means.append(seq.astype(np.float32).mean(axis=0) if cropped else stored_mean)
            seqs.append(seq)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        width = self.width if columns is None else len(columns)
        frames = np.zeros((len(seqs), int(lengths.max()), width), dtype=np.float32)
        for row, seq in enumerate(seqs):
            frames[row, : len(seq)] = seq
        return Batch(
            clip_ids=list(chunk),
            frames=torch.from_numpy(frames),
            lengths=torch.from_numpy(lengths),
            mean=torch.from_numpy(np.stack(means)),
            targets=None
            if targets is None
            else torch.from_numpy(np.stack([targets[c] for c in chunk]).astype(np.float32)),
        )


class JoinedSequences(SequenceData):
    """Sequences of several feature sets of one store joined per frame: each set's
    ``[hidden, frame_vad]`` side by side, in the order of ``stores`` (aligned by frame
    index; a clip keeps the fewest frames any set has, so a set whose encoder yields one
    frame more loses its last frame). The mean vector is the sets' stored means side by
    side, or, where a set lost frames, the mean over the kept frames.

    Every set is read once and kept in memory: the joined sequences must fit
    ``budget_bytes`` (streaming is for one set).

    Raises:
        SettingsError: the sequences do not fit the budget.
        StoreError: a clip is missing from a set (naming the set), or its sets were
            made from different audio.
    """

    def __init__(
        self,
        stores: list[FeatureStore],
        clip_ids: list[str],
        *,
        max_frames: int | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        from featurestore.errors import StoreError
        from models.errors import SettingsError

        require_clips(stores, clip_ids)
        # Joined features must be of the same audio: a file that changed and was
        # refreshed in one set only would pair two recordings.
        sources = [s.sha256_by_clip() for s in stores]
        differ = [c for c in clip_ids if len({held[c] for held in sources}) > 1]
        frames = [[s.frames(c) for s in stores] for c in clip_ids]
        uneven = [c for c, n in zip(clip_ids, frames, strict=True) if max(n) - min(n) > 1]
        if differ or uneven:
            names = ", ".join(s.feature_set for s in stores)
            raise StoreError(
                f"feature sets {names} of {stores[0].location} hold features of different "
                f"audio for {len(differ) or len(uneven)} clips (e.g. "
                f"{', '.join((differ or uneven)[:5])}): a file changed and only some sets "
                "were refreshed. Run `emi extract SOURCE STORE --refresh-changed "
                "--feature-set NAME` for each of these sets."
            )
        self.sets = [
            SequenceData(store, clip_ids, max_frames=max_frames, budget_bytes=budget_bytes)
            for store in stores
        ]
        needed = sum(s.total_bytes for s in self.sets)
        if needed > budget_bytes:
            raise SettingsError(
                f"the sequences of {len(stores)} joined feature sets need "
                f"{needed / 2**20:.0f} MiB, more than --cache-gb allows "
                f"({budget_bytes / 2**20:.0f} MiB); joined sets are held in memory: raise "
                "--cache-gb or train on fewer clips"
            )
        self.store = stores[0]
        self.clip_ids = list(clip_ids)
        self.max_frames = max_frames
        self.layers = (None,)
        self.hidden_size = sum(s.hidden_size for s in self.sets)
        self.vad_width = 0  # each set's VAD outputs sit beside its hidden states
        self.input_dim = self.width = sum(s.width for s in self.sets)
        self.total_bytes = self.budget_bytes = needed
        self.cached = True
        self._by_part = {}
        self._cache = None
        self.parts_read = 0

    def _windows(self, rng):
        if self._cache is None:
            held = [s._read_parts(list(s._by_part)) for s in self.sets]
            self.parts_read = sum(s.parts_read for s in self.sets)
            self._cache = {c: _join([h[c] for h in held]) for c in self.clip_ids}
        yield self._cache

    def _columns(self, layers):
        if tuple(layers) != (None,):
            raise KeyError("a head of joined feature sets reads each set's last hidden state")
        return None


def require_clips(stores, clip_ids: list[str]) -> None:
    """Every clip of ``clip_ids`` is in every feature set of ``stores``.

    Raises:
        StoreError: naming the set that lacks clips and how to extract them.
    """
    from featurestore.errors import StoreError

    for store in stores:
        missing = [c for c in clip_ids if c not in store]
        if missing:
            raise StoreError(
                f"{len(missing)} clips are not in feature set {store.feature_set!r} of "
                f"{store.location} (e.g. {', '.join(missing[:5])}); extract them with "
                f"`emi extract ... --feature-set {store.feature_set}`"
            )


def _join(pieces: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """One clip's (sequence, stored mean, full frames) of several sets -> joined."""
    kept = min(len(seq) for seq, _, _ in pieces)
    seq = np.concatenate([s[:kept] for s, _, _ in pieces], axis=1)
    if all(len(s) == kept == full for s, _, full in pieces):
        mean = np.concatenate([m for _, m, _ in pieces])
    else:  # a set lost frames (or a crop): the mean over the kept frames
        mean = seq.astype(np.float32).mean(axis=0)
    return seq, mean, kept


def load_sequences(
    sets: list[FeatureStore],
    clip_ids: list[str],
    *,
    crops: list[int | None],
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    layers: tuple[int | None, ...] = (None,),
) -> SequenceData:
    """The sequences consumers of feature ``sets`` read, loaded once for all of them:
    one set, every layer in ``layers``; several, joined (:class:`JoinedSequences`).
    ``crops``: each consumer's ``max_frames`` (None: whole clips)."""
    crop = None if None in crops else max(crops)
    if len(sets) > 1:
        return JoinedSequences(sets, clip_ids, max_frames=crop, budget_bytes=budget_bytes)
    return SequenceData(
        sets[0], clip_ids, max_frames=crop, budget_bytes=budget_bytes, layers=layers
    )
