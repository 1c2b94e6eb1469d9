"""Checked reads of a committed part's arrays: every array's metadata against the
schema and the commit record, every value against the committed digests."""

from __future__ import annotations

import asyncio

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from featurestore.errors import StoreDamage
from featurestore.integrity import check_digest
from featurestore.spec import FeatureSpec
from featurestore.store.index import FeatureSetRecord, PartRecord
from featurestore.store.schema import StoredArray, metadata_problem, schema, shape_of


class PartReader:
    """The arrays of the committed parts of one feature set (``record``) of the store
    at ``location``, read through ``zarr_store``; the base of
    :class:`featurestore.store.reader.FeatureStore`."""

    location: str
    feature_set: str
    spec: FeatureSpec

    def __init__(self, zarr_store, record: FeatureSetRecord, damage: str | None) -> None:
        self.record = record
        # A set whose spec in the root was edited: named as damage by every read of it,
        # while the store's other sets stay readable.
        self.damage = damage
        self._zarr = zarr_store
        self._groups: dict[str, zarr.Group] = {}
        self._clip_arrays: dict[tuple[str, str], np.ndarray] = {}
        self._schema = {} if damage else {a.name: a for a in schema(record.spec)}

    @property
    def parts_path(self) -> str:
        """Where this set's part folders are, relative to the store."""
        return self.record.parts_path

    def _require_intact(self) -> None:
        if self.damage:
            raise StoreDamage(self.damage)

    def _group(self, name: str) -> zarr.Group:
        if name not in self._groups:
            try:
                self._groups[name] = zarr.open_group(
                    self._zarr, path=f"{self.parts_path}/{name}", mode="r", zarr_format=3
                )
            except Exception as err:
                raise StoreDamage(
                    f"{self.location}: part {name}: metadata missing or unreadable "
                    f"({type(err).__name__}: {err}); run `emi store repair`"
                ) from err
        return self._groups[name]

    def part_attributes(self, name: str) -> dict:
        """The attributes of part ``name``'s group (its marker: :class:`PartMarker`)."""
        return dict(self._group(name).attrs)

    def _damage(self, name: str, key: str, what: str, err: BaseException) -> StoreDamage:
        return StoreDamage(
            f"{self.location}: part {name}, array {key}: {what} "
            f"({type(err).__name__}: {err}); run `emi store repair`"
        )

    def _read_arrays(self, name: str, selections: dict[str, slice]) -> dict[str, np.ndarray]:
        """Read several arrays of a part at once (their metadata and chunks fetched
        concurrently: one round of latency, not one per array), shapes checked."""
        self._require_intact()
        group = self._group(name)._async_group
        record = self.record.parts[name]

        async def one(key: str, selection: slice):
            try:
                arr = await group.getitem(key)
            except Exception as err:
                raise self._damage(name, key, "missing or unreadable metadata", err) from err
            self._check_metadata(name, key, arr, record)
            try:
                return await arr.getitem(selection)
            except Exception as err:
                raise self._damage(name, key, "unreadable chunk", err) from err

        async def all_of():
            return await asyncio.gather(*(one(k, sel) for k, sel in selections.items()))

        return dict(zip(selections, zarr_sync(all_of()), strict=True))

    def _check_metadata(self, name: str, key: str, arr, record: PartRecord) -> None:
        """An array's metadata against the schema for the set's spec and what part
        ``name`` committed (:func:`featurestore.store.schema.metadata_problem`)."""
        a = self._array(key)
        shape = shape_of(a, clips=record.clips, frames=record.frames, spec=self.spec)
        committed = (record.metadata_digests or {}).get(key)
        problem = metadata_problem(a, arr.metadata, shape, committed)
        if problem:
            raise StoreDamage(
                f"{self.location}: part {name}, array {key}: {problem} (edited or damaged); "
                "run `emi store repair`"
            )

    def _array(self, key: str) -> StoredArray:
        try:
            return self._schema[key]
        except KeyError:
            no_vad = "" if self.spec.vad_labels else "; its backbone has no VAD head"
            raise KeyError(
                f"{self.location}, feature set {self.feature_set!r}: no array {key!r} (its "
                f"arrays: {', '.join(self._schema)}{no_vad})"
            ) from None

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names of every part's arrays (:func:`schema` of the store's spec)."""
        return tuple(self._schema)

    def _per_clip(self, name: str, key: str) -> np.ndarray:
        """A whole per-clip array of a part, checked (cached: these are small)."""
        if (name, key) not in self._clip_arrays:
            self._load_part(name, ())
        return self._clip_arrays[(name, key)]

    def _load_part(self, name: str, frame_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Whole ``frame_keys`` arrays of a part; the first access to a part also reads
        and checks all its per-clip arrays (in the same round of reads), so any read of
        a part notices damage anywhere in its per-clip data."""
        keys = list(frame_keys)
        if (name, "offsets") not in self._clip_arrays:
            keys += [a.name for a in self._schema.values() if a.axis != "frame"]
        values = self._read_arrays(name, dict.fromkeys(keys, slice(None)))
        expected = self.record.parts[name].digests
        for k in keys:
            if k not in frame_keys:
                where = f"{self.location}: part {name}, array {k}"
                self._clip_arrays[(name, k)] = check_digest(values.pop(k), expected[k], where=where)
        return values

    def read_part(self, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``clip_id`` (as str), ``offsets`` and ``keys`` of part ``name``, one read each
        (all at once), every array checked against the part's committed checksums."""
        record = self.record.parts[name]
        wanted = list(dict.fromkeys(("clip_id", "offsets", *keys)))
        frame_keys = [k for k in wanted if self._array(k).axis == "frame"]
        read = self._load_part(name, tuple(frame_keys))
        arrays = {k: self._per_clip(name, k) for k in wanted if k not in frame_keys}
        offsets = self._per_clip(name, "offsets")
        for key, values in read.items():
            digests = record.clip_digests[key]
            for row in range(record.clips):
                check_digest(
                    values[offsets[row] : offsets[row + 1]],
                    digests[row],
                    where=f"{self.location}: part {name}, array {key}, clip {record.clip_id[row]}",
                )
            arrays[key] = values
        arrays["clip_id"] = np.array([str(x) for x in arrays["clip_id"]], dtype=object)
        return arrays
