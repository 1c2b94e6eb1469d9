"""Reading a feature set of a store: :class:`FeatureStore`, every read checked.

Every chunk carries a checksum (zstd's), and every read is checked against the
committed content digests, so a missing or altered chunk, array or metadata raises
:class:`StoreDamage` naming part and array instead of returning fill values. Opening a
store is one read of the root, whatever the number of sets and parts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import cached_property

import numpy as np

from featurestore.errors import ArgumentError, StoreError
from featurestore.integrity import check_digest
from featurestore.location import StoreLocation
from featurestore.records import ClipFailure
from featurestore.spec import FeatureSpec, layer_key
from featurestore.store.clip import ClipInfo, ClipLocation, check_clip_ids
from featurestore.store.index import PartRecord, RootIndex
from featurestore.store.layout import open_zarr_store, uncommitted_parts
from featurestore.store.part_reader import PartReader
from featurestore.store.root import never_completed, read_root


class FeatureStore(PartReader):
    """Read access to a feature store (local path or fsspec URL); every read is checked.

    Examples:
        >>> store = FeatureStore.open("feats.zarr")  # doctest: +SKIP
        >>> store.hidden(store.clip_ids[0]).shape  # doctest: +SKIP
        (342, 1024)
    """

    def __init__(
        self, location: StoreLocation, index: RootIndex, feature_set: str | None = None
    ) -> None:
        self.where = location
        self.location = location.url
        self.index = index  # the whole root, as read
        self.feature_set = feature_set or index.default_set
        if self.feature_set not in index.sets:
            raise StoreError(
                f"{location.url} has no feature set {self.feature_set!r} (its sets: "
                f"{', '.join(sorted(index.sets))})"
            )
        record = index.sets[self.feature_set]
        store = open_zarr_store(location.url, mode="r", storage_options=location.storage_options)
        super().__init__(store, record, record.damage(location.url))

    @classmethod
    def open(
        cls,
        location: str | os.PathLike,
        *,
        storage_options: dict | None = None,
        feature_set: str | None = None,
    ) -> FeatureStore:
        """Open one feature set of a store read-only: one read of the root, whatever the
        number of sets and parts.

        Args:
            feature_set: the set's name; None: the store's only or default set.

        Raises:
            StoreError: no store there, not an emi store, or no such set (the message
                names the sets there).
            StoreDamage: the root metadata is damaged.
        """
        where = StoreLocation.of(location, storage_options)
        index = read_root(where)
        if index is None:
            if never_completed(where):
                raise StoreError(
                    f"{location}: a store whose creation never completed (an empty root, "
                    "nothing committed); `emi extract` creates it anew"
                )
            raise StoreError(f"{location}: no feature store there (run `emi extract` first)")
        store = cls(where, index, feature_set)
        store.location = str(location)
        return store

    @property
    def feature_sets(self) -> tuple[str, ...]:
        """The names of the store's feature sets (the default set first)."""
        return self.index.names

    def with_set(self, feature_set: str) -> FeatureStore:
        """Another feature set of this store, from the root already read (no read)."""
        other = FeatureStore(self.where, self.index, feature_set)
        other.location = self.location
        return other

    def set_for_fingerprint(self, wanted: str) -> FeatureStore | None:
        """The set of this store whose features have fingerprint ``wanted``, or None."""
        name = self.index.set_with_fingerprint(wanted)
        if name is None:
            return None
        return self if name == self.feature_set else self.with_set(name)

    @cached_property
    def spec(self) -> FeatureSpec:
        """What the stored numbers mean (backbone, layer, rates, sizes, crop, dtypes)."""
        self._require_intact()
        return self.record.feature_spec

    @property
    def fingerprint(self) -> str:
        return self.record.fingerprint

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def parts(self) -> Mapping[str, PartRecord]:
        """Committed parts and their records."""
        return self.record.parts

    @property
    def complete_parts(self) -> list[str]:
        """Names of the committed parts, in commit order."""
        return self.record.part_names

    @cached_property
    def _clip_table(self) -> dict[str, ClipLocation]:
        # A clip stored again later (its file changed and was refreshed) is served from
        # the newest part.
        index: dict[str, ClipLocation] = {}
        self._require_intact()
        for name in self.complete_parts:
            record = self.record.parts[name]
            start = 0
            for row, (cid, frames, sha, seconds) in enumerate(
                zip(
                    record.clip_id,
                    record.clip_frames,
                    record.sha256,
                    record.duration_s,
                    strict=True,
                )
            ):
                index[cid] = ClipLocation(name, row, start, start + frames, sha, seconds)
                start += frames
        return index

    @property
    def clip_ids(self) -> list[str]:
        """Ids of all stored clips, in part then row order."""
        return list(self._clip_table)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._clip_table

    def __len__(self) -> int:
        return len(self._clip_table)

    def _locate(self, clip_id: str) -> ClipLocation:
        if not isinstance(clip_id, str):
            raise ArgumentError(f"clip id {clip_id!r}: clip ids are texts")
        try:
            return self._clip_table[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.location}") from None

    def frames(self, clip_id: str) -> int:
        """Frames of a stored clip (from the index: no array read)."""
        loc = self._locate(clip_id)
        return loc.frame_end - loc.frame_start

    def sha256_by_clip(self) -> dict[str, str]:
        """Source sha256 of every stored clip (from the index: no array read)."""
        return {cid: loc.sha256 for cid, loc in self._clip_table.items()}

    def part_of(self, clip_id: str) -> str:
        """The part that serves ``clip_id``."""
        return self._locate(clip_id).part

    def _clip_frames(self, key: str, clip_id: str) -> np.ndarray:
        self._array(key)  # an array this set does not have: KeyError naming its arrays
        loc = self._locate(clip_id)
        self._per_clip(loc.part, "offsets")  # the part's per-clip data, checked once
        selection = {key: slice(loc.frame_start, loc.frame_end)}
        values = self._read_arrays(loc.part, selection)[key]
        expected = self.record.parts[loc.part].clip_digests[key][loc.row]
        where = f"{self.location}: part {loc.part}, array {key}, clip {clip_id}"
        return check_digest(values, expected, where=where)

    def _row(self, key: str, clip_id: str) -> np.ndarray:
        self._array(key)
        loc = self._locate(clip_id)
        return self._per_clip(loc.part, key)[loc.row]

    @property
    def layers(self) -> tuple[int, ...]:
        """The layer numbers stored besides ``hidden`` (``hidden_states[k]`` as
        transformers numbers them; see :attr:`FeatureSpec.layers`); () where only the
        last hidden state is stored (``emi extract --layers``)."""
        return self.spec.layers

    def hidden(self, clip_id: str, layer: int | None = None) -> np.ndarray:
        """``(frames, hidden)`` float16 hidden states: ``layer`` None: the model's last
        hidden state (``hidden``); k: ``hidden_states[k]`` (stored with ``--layers``).

        Raises:
            KeyError: the clip is not stored.
            LayerError: that layer is not stored (the message names the stored ones).
        """
        return self._clip_frames(layer_key("hidden", self.spec.layer_number(layer)), clip_id)

    def frame_vad(self, clip_id: str) -> np.ndarray:
        """``(frames, 3)`` float32: arousal, dominance, valence per frame."""
        return self._clip_frames("frame_vad", clip_id)

    def hidden_mean(self, clip_id: str, layer: int | None = None) -> np.ndarray:
        """``(hidden,)`` float32 mean over real frames of ``layer`` (as :meth:`hidden`)."""
        return self._row(layer_key("hidden_mean", self.spec.layer_number(layer)), clip_id)

    def vad_mean(self, clip_id: str) -> np.ndarray:
        """``(3,)`` float32 mean of the frame VAD."""
        return self._row("vad_mean", clip_id)

    def clip_vad(self, clip_id: str) -> np.ndarray:
        """``(3,)`` float32: the head on the pooled hidden state (the model card's output)."""
        return self._row("clip_vad", clip_id)

    def clip_info(self, clip_id: str) -> ClipInfo:
        """Source path, sha256, duration (s), frames and part of a stored clip."""
        loc = self._locate(clip_id)
        return ClipInfo(
            clip_id=clip_id,
            part=loc.part,
            frames=loc.frame_end - loc.frame_start,
            duration_s=loc.duration_s,
            source_path=str(self._per_clip(loc.part, "source_path")[loc.row]),
            sha256=loc.sha256,
        )

    def source_paths(self, clip_ids: list[str]) -> dict[str, str]:
        """The source path of each stored clip of ``clip_ids``, reading only the
        ``source_path`` array of the parts that serve them (checked)."""
        rows: dict[str, list[tuple[str, int]]] = {}
        for clip_id in check_clip_ids(clip_ids):
            loc = self._locate(clip_id)
            rows.setdefault(loc.part, []).append((clip_id, loc.row))
        found = {}
        for part, wanted in rows.items():
            values = self._clip_arrays.get((part, "source_path"))
            if values is None:
                values = check_digest(
                    self._read_arrays(part, {"source_path": slice(None)})["source_path"],
                    self.record.parts[part].digests["source_path"],
                    where=f"{self.location}: part {part}, array source_path",
                )
            found.update((clip_id, str(values[row])) for clip_id, row in wanted)
        return found

    def clips(self) -> list[ClipInfo]:
        """Every stored clip as a :class:`ClipInfo` (reads each part's per-clip arrays)."""
        return [self.clip_info(c) for c in self.clip_ids]

    def table(self) -> dict[str, list]:
        """The clips as columns (``clip_id``, ``part``, ``frames``, ``duration_s``,
        ``source_path``, ``sha256``): ``pandas.DataFrame(store.table())`` gives a table."""
        rows = self.clips()
        return {f: [getattr(r, f) for r in rows] for f in ClipInfo.__dataclass_fields__}

    def uncommitted_parts(self) -> list[str]:
        """Part folders that are not committed (being written, or left by a stop)."""
        return uncommitted_parts(self.where, self.record.parts, self.parts_path)

    def part_marker(self, name: str) -> PartRecord:
        """The committed record of part ``name``."""
        return self.record.parts[name]

    @property
    def failures(self) -> list[ClipFailure]:
        """Clips that failed and are not stored: the latest reason per clip id."""
        return [f for cid, f in self.record.failures.items() if cid not in self._clip_table]

    def iter_parts(
        self, keys: tuple[str, ...] | None = None
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Bulk reader: yields ``(part, arrays)`` one whole committed part at a time.

        ``arrays`` holds ``clip_id``, ``offsets`` and the requested ``keys`` (default:
        ``hidden``, ``hidden_mean`` and, where the set has them, ``frame_vad`` and
        ``vad_mean``), read in one go per array and checked (the fast path for training).
        """
        if keys is None:
            wanted = ("hidden", "frame_vad", "hidden_mean", "vad_mean")
            keys = tuple(k for k in wanted if k in self._schema)
        for name in self.complete_parts:
            yield name, self.read_part(name, keys)

    def read_clips(
        self, clip_ids: list[str] | None = None, *, max_frames: int | None = None
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(clip_id, hidden (frames, hidden) float16, frame_vad (frames, 3))``
        (``frame_vad`` ``(frames, 0)`` for a set without the VAD head).

        Reads whole parts, so asking for many clips costs one read per array per part.
        ``max_frames`` keeps only each clip's first frames.
        """
        if clip_ids is not None:
            clip_ids = check_clip_ids(clip_ids)
        if max_frames is not None and (
            isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
        ):
            raise ArgumentError(f"max_frames {max_frames!r}: give a whole number >= 1 or None")
        wanted = None if clip_ids is None else set(clip_ids)
        vad = "frame_vad" in self._schema
        for name, arrays in self.iter_parts(keys=("hidden", "frame_vad") if vad else ("hidden",)):
            offsets = arrays["offsets"]
            if not vad:
                arrays["frame_vad"] = np.zeros((len(arrays["hidden"]), 0), np.float32)
            for row, clip_id in enumerate(arrays["clip_id"]):
                if wanted is not None and clip_id not in wanted:
                    continue
                if self.part_of(clip_id) != name:  # an older copy of a refreshed clip
                    continue
                start, end = int(offsets[row]), int(offsets[row + 1])
                if max_frames is not None:
                    end = min(end, start + max_frames)
                yield clip_id, arrays["hidden"][start:end], arrays["frame_vad"][start:end]
