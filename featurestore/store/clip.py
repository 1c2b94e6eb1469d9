"""Records of one clip: what a part is written from, and what a reader says of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from featurestore.errors import ArgumentError
from featurestore.records import FieldAccess


@dataclass(frozen=True)
class StoredClip:
    """What a part holds for one clip besides the feature arrays."""

    clip_id: str
    source_path: str
    sha256: str
    duration_s: float


@dataclass
class ClipFeatures:
    """One clip's feature arrays, as a part stores them (the encoder makes these).
    Frame arrays are stored as float16 (hidden) and float32 (VAD)."""

    hidden: np.ndarray  # (frames, hidden) float16
    frame_vad: np.ndarray  # (frames, 3) float32
    hidden_mean: np.ndarray  # (hidden,) float32, over real frames, from float32 values
    vad_mean: np.ndarray  # (3,) float32
    clip_vad: np.ndarray  # (3,) float32: the head on hidden_mean
    # Other stored layers by array name: hidden_lKK (frames, hidden) float16 and
    # hidden_mean_lKK (hidden,) float32.
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.hidden.shape[0])

    def array(self, key: str) -> np.ndarray:
        """The values of stored array ``key`` for this clip."""
        return self.layers[key] if key in self.layers else getattr(self, key)


@dataclass(frozen=True)
class ClipInfo(FieldAccess):
    """One stored clip: where it came from and where it is."""

    clip_id: str
    part: str
    frames: int
    duration_s: float
    source_path: str
    sha256: str


class ClipLocation(NamedTuple):
    """Where a stored clip's rows are: its part, its row there, its frame range (a
    named tuple: a store's lookup table holds one per clip, made at open)."""

    part: str
    row: int
    frame_start: int
    frame_end: int
    sha256: str
    duration_s: float


def check_clip_ids(clip_ids, what: str = "clip_ids") -> list[str]:
    """``clip_ids`` as a list of distinct clip ids (texts), in the order given.

    Raises:
        ArgumentError: one text instead of a list of them, or items that are not texts.
    """
    if isinstance(clip_ids, (str, bytes)):
        raise ArgumentError(
            f"{what}: give a list of clip ids, not the text {clip_ids!r} (write [{clip_ids!r}])"
        )
    try:
        items = list(clip_ids)
    except TypeError:
        raise ArgumentError(f"{what}: give a list of clip ids, not {clip_ids!r}") from None
    bad = [c for c in items if not isinstance(c, str)]
    if bad:
        raise ArgumentError(f"{what}: clip ids are texts, not {bad[:3]!r}")
    return list(dict.fromkeys(items))
