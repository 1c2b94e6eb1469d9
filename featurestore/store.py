"""The Zarr v3 feature store: layout, writing one part, reading features back.

Layout (documented in the README; readable with plain zarr, dask and xarray)::

    STORE/                       root group, attrs["emi"] = {format_version, fingerprint, spec}
      parts/
        p000000/                 one part = one writer; attrs["emi_part"] = {complete, clips,
                                 frames, fingerprint, failures, written_at, written_by}
          clip_id     (clip,)             string
          source_path (clip,)             string
          sha256      (clip,)             string, of the source file's bytes
          duration_s  (clip,)             float64, of the source file
          frames      (clip,)             int64
          offsets     (clip_offset,)      int64, clips + 1; clip i = frames [o[i], o[i+1])
          hidden      (frame, hidden)     float16, last-layer hidden states
          frame_vad   (frame, vad)        float32, head per frame: arousal, dominance, valence
          hidden_mean (clip, hidden)      float32, over real frames
          vad_mean    (clip, vad)         float32, mean of frame_vad
          clip_vad    (clip, vad)         float32, head on hidden_mean

Parallel-write rule: a part is written by exactly one task, which owns all its arrays;
its ``complete`` marker is written last. Readers see complete parts only. A clip id
appears in one complete part.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.storage

from featurestore.errors import StoreError
from featurestore.spec import FORMAT_VERSION, describe_difference, fingerprint
from manifests.sources import is_url

if TYPE_CHECKING:
    from featurestore.encode import ClipFeatures

PARTS = "parts"
ROOT_ATTR = "emi"
PART_ATTR = "emi_part"
HIDDEN_CHUNK_BYTES = 1 << 20  # about 1 MiB per chunk of hidden states


def open_zarr_store(location: str | os.PathLike, *, mode: str, storage_options: dict | None = None):
    """A zarr store object for a local path or an fsspec URL (``s3://...``)."""
    location = str(location)
    read_only = mode == "r"
    if is_url(location):
        # Parts are written by other processes: a cached directory listing would hide
        # them, so listings are always fresh.
        options = {"use_listings_cache": False, **(storage_options or {})}
        return zarr.storage.FsspecStore.from_url(
            location, storage_options=options, read_only=read_only
        )
    return zarr.storage.LocalStore(location, read_only=read_only)


def store_exists(location: str | os.PathLike, *, storage_options: dict | None = None) -> bool:
    try:
        zarr.open_group(
            open_zarr_store(location, mode="r", storage_options=storage_options), mode="r"
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return True


def create_or_check_store(
    location: str | os.PathLike, spec: dict, *, storage_options: dict | None = None
) -> zarr.Group:
    """Create the root group with ``spec``, or check an existing store has the same one.

    Raises:
        StoreError: the store exists with another fingerprint, or is not an emi store.
    """
    store = open_zarr_store(location, mode="a", storage_options=storage_options)
    wanted = fingerprint(spec)
    if store_exists(location, storage_options=storage_options):
        root = zarr.open_group(store, mode="r+")
        meta = root.attrs.get(ROOT_ATTR)
        if not meta:
            raise StoreError(f"{location}: a Zarr group, but not an emi feature store")
        if meta.get("fingerprint") != wanted:
            raise StoreError(
                f"{location} holds features with fingerprint {meta.get('fingerprint', '?')[:12]}, "
                f"this run would make {wanted[:12]} ({describe_difference(meta['spec'], spec)}). "
                "Use another store path, or the settings the store was made with."
            )
        if PARTS not in root:
            root.create_group(PARTS)
        return root
    root = zarr.open_group(store, mode="w")
    root.attrs[ROOT_ATTR] = {
        "format_version": FORMAT_VERSION,
        "fingerprint": wanted,
        "spec": spec,
    }
    root.create_group(PARTS)
    return root


@dataclass(frozen=True)
class StoredClip:
    """What a part holds for one clip besides the feature arrays."""

    clip_id: str
    source_path: str
    sha256: str
    duration_s: float


def _stack(pieces: list[np.ndarray], width: int, dtype: str, join) -> np.ndarray:
    """Join per-clip arrays into one ``(rows, width)`` array; empty parts give 0 rows."""
    if not pieces:
        return np.zeros((0, width), dtype=dtype)
    return join(pieces).astype(dtype, copy=False)


def write_part(
    root: zarr.Group,
    name: str,
    clips: list[StoredClip],
    features: list[ClipFeatures],
    failures: list[dict],
) -> dict:
    """Write one part (overwriting any incomplete one of that name); marker last.

    Returns:
        The part's marker attributes.
    """
    spec = root.attrs[ROOT_ATTR]["spec"]
    hidden_size = int(spec["hidden_size"])
    part = root[PARTS].create_group(name, overwrite=True)
    part.attrs[PART_ATTR] = {"complete": False}
    n = len(clips)
    frames = np.array([f.frames for f in features], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
    total = int(offsets[-1])

    def put(key, data, dims, dtype, chunks=None):
        arr = part.create_array(
            key,
            shape=data.shape,
            dtype=dtype,
            chunks=chunks or tuple(max(1, s) for s in data.shape),
            dimension_names=dims,
            fill_value=None if dtype is str else 0,
        )
        if data.size:
            arr[...] = data

    rows = max(64, HIDDEN_CHUNK_BYTES // (hidden_size * 2))
    put("clip_id", np.array([c.clip_id for c in clips], dtype=object), ("clip",), str)
    put("source_path", np.array([c.source_path for c in clips], dtype=object), ("clip",), str)
    put("sha256", np.array([c.sha256 for c in clips], dtype=object), ("clip",), str)
    put("duration_s", np.array([c.duration_s for c in clips], np.float64), ("clip",), "float64")
    put("frames", frames, ("clip",), "int64")
    put("offsets", offsets, ("clip_offset",), "int64")
    for key, dim, width, dtype in (
        ("hidden", "hidden", hidden_size, "float16"),
        ("frame_vad", "vad", 3, "float32"),
    ):
        put(
            key,
            _stack([getattr(f, key) for f in features], width, dtype, np.concatenate),
            ("frame", dim),
            dtype,
            chunks=(rows, width),
        )
    for key, dim, width in (
        ("hidden_mean", "hidden", hidden_size),
        ("vad_mean", "vad", 3),
        ("clip_vad", "vad", 3),
    ):
        put(
            key,
            _stack([getattr(f, key) for f in features], width, "float32", np.stack),
            ("clip", dim),
            "float32",
        )
    marker = {
        "complete": True,
        "clips": n,
        "frames": total,
        "fingerprint": root.attrs[ROOT_ATTR]["fingerprint"],
        "failures": failures,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "written_by": f"{socket.gethostname()}:{os.getpid()}",
    }
    part.attrs[PART_ATTR] = marker  # written last: the part becomes visible now
    return marker


def part_is_complete(part: zarr.Group) -> bool:
    return bool(part.attrs.get(PART_ATTR, {}).get("complete"))


def remove_incomplete_parts(root: zarr.Group) -> list[str]:
    """Delete parts without a completion marker (left by a crash); returns their names."""
    removed = []
    for name, part in sorted(root[PARTS].groups()):
        if not part_is_complete(part):
            del root[PARTS][name]
            removed.append(name)
    return removed


def next_part_number(root: zarr.Group) -> int:
    numbers = [int(name[1:]) for name in root[PARTS].group_keys() if name[1:].isdigit()]
    return max(numbers, default=-1) + 1


def part_name(number: int) -> str:
    return f"p{number:06d}"


@dataclass(frozen=True)
class ClipLocation:
    part: str
    row: int
    frame_start: int
    frame_end: int


class FeatureStore:
    """Read access to a feature store (local path or fsspec URL).

    Examples:
        >>> store = FeatureStore.open("feats.zarr")  # doctest: +SKIP
        >>> store.hidden(store.clip_ids[0]).shape  # doctest: +SKIP
        (342, 1024)
    """

    def __init__(self, root: zarr.Group, location: str) -> None:
        self._root = root
        self.location = location
        meta = root.attrs.get(ROOT_ATTR)
        if not meta:
            raise StoreError(f"{location}: a Zarr group, but not an emi feature store")
        self._meta = meta

    @classmethod
    def open(
        cls, location: str | os.PathLike, *, storage_options: dict | None = None
    ) -> FeatureStore:
        """Open a store read-only.

        Raises:
            StoreError: no store there, or not an emi store.
        """
        location = str(location)
        if not store_exists(location, storage_options=storage_options):
            raise StoreError(f"{location}: no feature store there (run `emi extract` first)")
        store = open_zarr_store(location, mode="r", storage_options=storage_options)
        return cls(zarr.open_group(store, mode="r"), location)

    @property
    def spec(self) -> dict:
        return self._meta["spec"]

    @property
    def fingerprint(self) -> str:
        return self._meta["fingerprint"]

    @property
    def hidden_size(self) -> int:
        return int(self.spec["hidden_size"])

    @cached_property
    def _parts(self) -> dict[str, zarr.Group]:
        if PARTS not in self._root:
            return {}
        return {name: g for name, g in sorted(self._root[PARTS].groups())}

    @cached_property
    def complete_parts(self) -> list[str]:
        return [name for name, g in self._parts.items() if part_is_complete(g)]

    @cached_property
    def incomplete_parts(self) -> list[str]:
        return [name for name, g in self._parts.items() if not part_is_complete(g)]

    @cached_property
    def _index(self) -> dict[str, ClipLocation]:
        index: dict[str, ClipLocation] = {}
        for name in self.complete_parts:
            part = self._parts[name]
            ids = part["clip_id"][...]
            offsets = part["offsets"][...]
            for row, clip_id in enumerate(ids):
                # A clip id is stored once; should a copy exist, the first part wins.
                index.setdefault(
                    str(clip_id), ClipLocation(name, row, int(offsets[row]), int(offsets[row + 1]))
                )
        return index

    @property
    def clip_ids(self) -> list[str]:
        """Ids of all stored clips, in part then row order."""
        return list(self._index)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _locate(self, clip_id: str) -> ClipLocation:
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.location}") from None

    def frames(self, clip_id: str) -> int:
        """Frames of a stored clip (from the index: no array read)."""
        loc = self._locate(clip_id)
        return loc.frame_end - loc.frame_start

    def sha256_by_clip(self) -> dict[str, str]:
        """Source sha256 of every stored clip, read one array per part."""
        hashes = {name: self._parts[name]["sha256"][...] for name in self.complete_parts}
        return {cid: str(hashes[loc.part][loc.row]) for cid, loc in self._index.items()}

    def part_of(self, clip_id: str) -> str:
        """The part that holds ``clip_id`` (the first, should a stray copy exist)."""
        return self._locate(clip_id).part

    def _frames(self, key: str, clip_id: str) -> np.ndarray:
        loc = self._locate(clip_id)
        return self._parts[loc.part][key][loc.frame_start : loc.frame_end]

    def _row(self, key: str, clip_id: str) -> np.ndarray:
        loc = self._locate(clip_id)
        return self._parts[loc.part][key][loc.row]

    def hidden(self, clip_id: str) -> np.ndarray:
        """``(frames, hidden)`` float16 last-layer hidden states."""
        return self._frames("hidden", clip_id)

    def frame_vad(self, clip_id: str) -> np.ndarray:
        """``(frames, 3)`` float32: arousal, dominance, valence per frame."""
        return self._frames("frame_vad", clip_id)

    def hidden_mean(self, clip_id: str) -> np.ndarray:
        """``(hidden,)`` float32 mean over real frames."""
        return self._row("hidden_mean", clip_id)

    def vad_mean(self, clip_id: str) -> np.ndarray:
        """``(3,)`` float32 mean of the frame VAD."""
        return self._row("vad_mean", clip_id)

    def clip_vad(self, clip_id: str) -> np.ndarray:
        """``(3,)`` float32: the head on the pooled hidden state (the model card's output)."""
        return self._row("clip_vad", clip_id)

    def clip_info(self, clip_id: str) -> dict:
        """Source path, sha256, duration (s), frames and part of a stored clip."""
        loc = self._locate(clip_id)
        part = self._parts[loc.part]
        return {
            "clip_id": clip_id,
            "source_path": str(part["source_path"][loc.row]),
            "sha256": str(part["sha256"][loc.row]),
            "duration_s": float(part["duration_s"][loc.row]),
            "frames": loc.frame_end - loc.frame_start,
            "part": loc.part,
        }

    def part_marker(self, name: str) -> dict:
        return dict(self._parts[name].attrs.get(PART_ATTR, {}))

    def part_group(self, name: str) -> zarr.Group:
        return self._parts[name]

    @property
    def failures(self) -> list[dict]:
        """Clips that failed and are not stored: the latest reason per clip id."""
        latest: dict[str, dict] = {}
        for name in self.complete_parts:
            for failure in self.part_marker(name).get("failures", []):
                latest[failure["clip_id"]] = {**failure, "part": name}
        return [f for cid, f in latest.items() if cid not in self._index]

    def iter_parts(
        self, keys: tuple[str, ...] = ("hidden", "frame_vad", "hidden_mean", "vad_mean")
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Bulk reader: yields ``(part, arrays)`` one whole complete part at a time.

        ``arrays`` holds ``clip_id``, ``offsets`` and the requested ``keys``, read in
        one go per array (the fast path for training).
        """
        for name in self.complete_parts:
            yield name, self.read_part(name, keys)

    def read_part(self, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``clip_id`` (as str), ``offsets`` and ``keys`` of part ``name``, one read each."""
        part = self._parts[name]
        arrays = {k: part[k][...] for k in ("clip_id", "offsets", *keys)}
        arrays["clip_id"] = np.array([str(x) for x in arrays["clip_id"]], dtype=object)
        return arrays

    def read_clips(
        self, clip_ids: list[str] | None = None, *, max_frames: int | None = None
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(clip_id, hidden (frames, hidden) float16, frame_vad (frames, 3))``.

        Reads whole parts, so asking for many clips costs one read per array per part.
        ``max_frames`` keeps only each clip's first frames.
        """
        wanted = None if clip_ids is None else set(clip_ids)
        for name, arrays in self.iter_parts(keys=("hidden", "frame_vad")):
            offsets = arrays["offsets"]
            for row, clip_id in enumerate(arrays["clip_id"]):
                if wanted is not None and clip_id not in wanted:
                    continue
                if self.part_of(clip_id) != name:  # a stray copy of a stored clip
                    continue
                start, end = int(offsets[row]), int(offsets[row + 1])
                if max_frames is not None:
                    end = min(end, start + max_frames)
                yield clip_id, arrays["hidden"][start:end], arrays["frame_vad"][start:end]
