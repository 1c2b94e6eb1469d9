"""The driver's side of a store: creating it and its feature sets, committing parts,
recording failures, dropping parts. Only the holder of the writer lock writes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from featurestore.errors import StoreDamage, StoreError
from featurestore.location import StoreLocation, group_node
from featurestore.records import ClipFailure
from featurestore.spec import FeatureSpec, describe_difference, fingerprint
from featurestore.store.index import FeatureSetRecord, PartRecord, RootIndex
from featurestore.store.layout import (
    PARTS,
    SETS,
    check_set_name,
    set_name_of,
    set_parts_path,
    uncommitted_parts,
)
from featurestore.store.root import create_root, never_completed, read_root, write_root

if TYPE_CHECKING:
    from featurestore.lock import StoreLock


class StoreWriter:
    """The driver's side of one feature set of a store: creates it, commits parts,
    records failures.

    Only the holder of the writer lock uses it; every commit checks the lock first.
    :attr:`index` is the root as this writer last saved it.
    """

    def __init__(
        self,
        location: StoreLocation,
        index: RootIndex,
        lock: StoreLock | None,
        feature_set: str | None = None,
    ) -> None:
        self.location = location
        self.index = index
        self.lock = lock
        self.feature_set = feature_set or index.default_set

    @classmethod
    def open(
        cls,
        location: StoreLocation,
        spec: FeatureSpec | dict,
        lock: StoreLock | None,
        feature_set: str | None = None,
        new_set_name: str | None = None,
    ) -> StoreWriter:
        """Create the store with ``spec`` where none exists, add feature set
        ``feature_set`` to an existing one, or check the existing set.

        ``feature_set`` None: the store's set with this spec's fingerprint, else (with
        ``new_set_name``) a new set of that name, or of that name and the fingerprint
        where the name is taken, else its default set; for a new store
        ``new_set_name`` or the backbone's name (:func:`set_name_of`). Decided here,
        under the writer lock, so two runs waiting for the lock never pick one name.
        Adding a set never changes another set's bytes (only the root's index).

        Raises:
            StoreError: the set exists with another spec, or something that is not an
                emi store is there.
            StoreDamage: a damaged root.
        """
        index = read_root(location)
        wanted = fingerprint(spec)
        for name in (feature_set, new_set_name):
            if name is not None:
                check_set_name(name)
        if index is None:
            if never_completed(location):  # we hold the lock: replace it
                location.delete("zarr.json")
            name = feature_set or new_set_name or set_name_of(spec)
            index = RootIndex.of_sets([FeatureSetRecord.new(name, spec)])
            # The root first: a store is never seen with parts/ but without its root.
            if not create_root(location, index):
                raise StoreError(f"{location.url}: another run created a store here just now")
            location.write(f"{PARTS}/zarr.json", group_node({}))
            return cls(location, index, lock)
        if feature_set is None:
            matching = index.set_with_fingerprint(wanted)
            if matching is not None:
                feature_set = matching
            elif new_set_name is not None:
                taken = new_set_name in index.sets  # by other features: a name of its own
                feature_set = f"{new_set_name[:87]}-{wanted[:12]}" if taken else new_set_name
            else:
                feature_set = index.default_set
        if feature_set not in index.sets:
            return cls._add_set(location, index, feature_set, spec, lock)
        held = index.sets[feature_set]
        damage = held.damage(location.url)
        if damage:
            raise StoreDamage(damage)
        if held.fingerprint != wanted:
            others = ", ".join(sorted(index.sets))
            raise StoreError(
                f"{location.url}: feature set {feature_set!r} holds features with fingerprint "
                f"{held.fingerprint[:12]}, this run would make {wanted[:12]} "
                f"({describe_difference(held.spec, spec)}). Use the settings the set was "
                f"made with, another store path, or --feature-set NAME to add these "
                f"features as a new set (sets here: {others})."
            )
        return cls(location, index, lock, feature_set)

    @classmethod
    def _add_set(cls, location, index: RootIndex, name: str, spec, lock) -> StoreWriter:
        """Add an empty feature set (the root becomes format 3); its folder first, then
        the root that commits it."""
        path = set_parts_path(name)
        for folder in (SETS, f"{SETS}/{name}", path):
            location.write(f"{folder}/zarr.json", group_node({}))
        writer = cls(location, index, lock, name)
        writer._save(FeatureSetRecord.new(name, spec, path))
        return writer

    @property
    def record(self) -> FeatureSetRecord:
        """This set's record in the root (fingerprint, spec, parts, failures)."""
        return self.index.sets[self.feature_set]

    @property
    def parts_path(self) -> str:
        return self.record.parts_path

    @property
    def fingerprint(self) -> str:
        return self.record.fingerprint

    def _save(self, record: FeatureSetRecord) -> None:
        if self.lock is not None:
            self.lock.ensure_held()
        index = self.index.with_set(record)
        write_root(self.location, index)
        self.index = index

    def commit(
        self,
        name: str | None,
        record: PartRecord | None,
        failures: Iterable[ClipFailure],
    ) -> None:
        """Make part ``name`` (its arrays and marker already written) part of the set,
        and record ``failures`` (clips that could not be stored, with reasons).

        A part that stored no clip is not committed (its folder is deleted)."""
        if name is not None and (record is None or not record.clips):
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)
        self._save(self.record.committed(name, record, failures))

    def drop_parts(self, names: list[str]) -> None:
        """Take parts out of the index (their clips count as missing again), then delete
        their folders."""
        self._save(self.record.without_parts(names))
        for name in names:
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)

    def uncommitted_parts(self) -> list[str]:
        """Part folders of this set not in the index: left by a crashed or stopped run."""
        return uncommitted_parts(self.location, self.record.parts, self.parts_path)

    def remove_uncommitted_parts(self) -> list[str]:
        names = self.uncommitted_parts()
        for name in names:
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)
        return names

    def next_part_number(self) -> int:
        return self.record.next_part_number()
