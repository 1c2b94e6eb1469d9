"""Summaries, integrity checks and repair of a feature store (``emi store info`` /
``verify`` / ``repair``)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from featurestore.errors import StoreDamage, StoreError
from featurestore.location import StoreLocation
from featurestore.lock import StoreLock
from featurestore.spec import fingerprint, layer_key
from featurestore.store import (
    PARTS,
    SETS,
    FeatureSetRecord,
    FeatureStore,
    PartMarker,
    PartRecord,
    RootIndex,
    StoreWriter,
    never_completed,
    read_root,
    set_name_of,
    write_root,
)
from featurestore.store.index import salvage_failures
from featurestore.store.layout import set_parts_path
from featurestore.store.root import read_node_attributes


def size_on_disk(location: str, *, storage_options: dict | None = None) -> int:
    """Bytes under the store (the filesystem's ``du``, local or object storage)."""
    where = StoreLocation.of(location, storage_options)
    return int(where.fs.du(where.root))


def store_info(store: FeatureStore, *, storage_options: dict | None = None) -> dict:
    """Clips, frames, hours, size, spec and failed clips of ``store``'s feature set, and
    a summary of every set of the store (``feature_sets``: name, fingerprint, backbone,
    hidden size, layers, clips, hours, size), as a JSON-able dict (reads the root only,
    plus listings and sizes)."""
    return {
        "store": store.location,
        "size_bytes": size_on_disk(store.location, storage_options=storage_options),
        **_set_info(store, storage_options),
        "uncommitted_parts": store.uncommitted_parts(),
        "spec": store.spec.to_dict(),
        "failed": [f.to_dict() for f in store.failures],
        "feature_sets": [
            {"feature_set": s.feature_set, "damaged": s.damage}
            if s.damage
            else _set_info(s, storage_options)
            for s in map(store.with_set, store.feature_sets)
        ],
    }


def _set_info(store: FeatureStore, storage_options: dict | None) -> dict:
    records = store.parts.values()
    frames = sum(r.frames for r in records)
    audio_s = sum(float(np.sum(r.duration_s)) for r in records)
    where = StoreLocation.of(store.location, storage_options)
    return {
        "feature_set": store.feature_set,
        "fingerprint": store.fingerprint,
        "backbone": store.spec.backbone.ref,
        "hidden_size": store.spec.hidden_size,
        "layers": list(store.layers),
        "vad": bool(store.spec.vad_labels),
        "clips": len(store),
        "frames": frames,
        "hours_audio": audio_s / 3600.0,
        "hours_extracted": frames / store.spec.frame_rate_hz / 3600.0,
        "parts": len(store.complete_parts),
        "set_size_bytes": int(where.fs.du(where.key(store.parts_path))),
    }


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store; ``part`` names the damaged part where there is one."""

    part: str | None
    message: str
    feature_set: str | None = None  # named where the store has several sets

    def __str__(self) -> str:
        text = f"part {self.part}: {self.message}" if self.part else self.message
        return f"set {self.feature_set}: {text}" if self.feature_set else text


def verify_store(store: FeatureStore) -> list[Problem]:
    """Read and check every committed part; returns the problems (empty: sound).

    Checks: every array of every part reads back with the committed content checksums
    (zstd chunk checksums, whole-array and per-clip XXH3 digests), shapes match the commit record,
    the part's own marker agrees with the record, offsets start at 0, rise, and match
    frame counts; ids are unique within a part; values are finite; stored means agree
    with the stored frames (within float16 error).
    """
    problems = [
        Problem(
            None, f"{path} is the temporary of an interrupted write; `emi store repair` removes it"
        )
        for path in leftover_files(store)
    ]
    for name in store.complete_parts:
        record = store.part_marker(name)
        try:
            marker = PartMarker.from_attributes(store.part_attributes(name))
            arrays = store.read_part(name, tuple(k for k in store.arrays if k != "clip_id"))
        except StoreDamage as err:
            problems.append(Problem(name, str(err).split(f"part {name}, ", 1)[-1]))
            continue
        if marker is None or not marker.complete or not marker.record.agrees_with(record):
            problems.append(Problem(name, "its marker does not match the committed record"))
        problems += [Problem(name, p) for p in _check_part(arrays, record, store)]
    return problems


def leftover_files(store: FeatureStore) -> list[str]:
    """Temporaries of interrupted writes (``zarr.json.<pid>.partial``) in the store's
    root (reported with the default set) and in this set's parts folder."""
    where = store.where
    found = [f"{store.parts_path}/{n}" for n in where.leftovers(store.parts_path)]
    if store.feature_set == store.feature_sets[0]:
        found = where.leftovers() + found
    return found


def _check_part(
    arrays: dict[str, np.ndarray], record: PartRecord, store: FeatureStore
) -> list[str]:
    problems = []
    n = len(arrays["clip_id"])
    offsets = arrays["offsets"]
    if list(arrays["clip_id"]) != list(record.clip_id):
        problems.append("clip ids differ from the committed record")
    repeated = [c for c, k in Counter(arrays["clip_id"]).items() if k > 1]
    if repeated:
        problems.append(f"clip ids stored twice: {repeated[:10]}")
    if len(offsets) != n + 1 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
        problems.append("offsets are not 0, rising, one per clip plus one")
        return problems
    if not np.array_equal(np.diff(offsets), arrays["frames"]):
        problems.append("frames do not equal the offset differences")
    for key, values in arrays.items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            problems.append(f"{key} holds non-finite values")
    if problems or n == 0:
        return problems
    for layer in (None, *store.spec.layers):
        hidden, mean_key = layer_key("hidden", layer), layer_key("hidden_mean", layer)
        for row in range(n):
            frames = arrays[hidden][offsets[row] : offsets[row + 1]].astype(np.float32)
            mean = frames.mean(axis=0)
            scale = 1.0 + float(np.abs(frames).max())
            if np.abs(mean - arrays[mean_key][row]).max() > 2e-3 * scale:
                problems.append(
                    f"clip {arrays['clip_id'][row]}: {mean_key} disagrees with {hidden}"
                )
    return problems


@dataclass
class RepairReport:
    dropped_parts: list[str] = field(default_factory=list)
    dropped_clips: list[str] = field(default_factory=list)
    removed_uncommitted: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # feature set -> its clips to re-extract (``emi extract ... --feature-set NAME``)
    dropped_by_set: dict[str, list[str]] = field(default_factory=dict)
    removed_leftovers: list[str] = field(default_factory=list)  # interrupted writes' temporaries
    # an empty root left by a store creation that never completed (nothing committed)
    removed_unfinished_root: bool = False


def repair_store(location: str, *, storage_options: dict | None = None) -> RepairReport:
    """Drop every damaged part from the store (its clips become missing, so the next
    ``emi extract`` recomputes them) and delete uncommitted part folders.

    Takes the writer lock. Raises :class:`StoreDamage` when the root itself is damaged.
    """
    where = StoreLocation.of(location, storage_options)
    report = RepairReport()
    if read_root(where) is None:
        if not never_completed(where):
            raise StoreError(f"{location}: no feature store there")
        with StoreLock(where, purpose="store repair"):
            if never_completed(where):  # nothing was ever committed: an empty root goes
                where.delete("zarr.json")
                report.removed_leftovers = where.leftovers() + [
                    f"{PARTS}/{n}" for n in where.leftovers(PARTS)
                ]
                for path in report.removed_leftovers:
                    where.delete(path)
                where.delete(PARTS, recursive=True)  # an empty group: nothing was committed
                report.removed_unfinished_root = True
        return report
    with StoreLock(where, purpose="store repair") as lock:
        index = read_root(where)
        several = len(index.sets) > 1
        for name in index.names:
            store = FeatureStore(where, index, name)
            if store.damage:  # its spec was edited: only a rebuilt root helps
                report.problems.append(Problem(None, store.damage, feature_set=name))
                continue
            store.location = str(location)
            problems = verify_store(store)
            damaged = sorted({p.part for p in problems if p.part})
            report.problems += [replace(p, feature_set=name) if several else p for p in problems]
            dropped = sorted(cid for part in damaged for cid in store.parts[part].clip_id)
            report.dropped_clips += dropped
            if dropped:
                report.dropped_by_set[name] = dropped
            writer = StoreWriter(where, index, lock, name)
            if damaged:
                writer.drop_parts(damaged)
                index = writer.index
            report.dropped_parts += damaged
            report.removed_uncommitted += writer.remove_uncommitted_parts()
            for path in leftover_files(store):
                where.delete(path)
                report.removed_leftovers.append(path)
    return report


def verify_all(location: str, *, storage_options: dict | None = None) -> list[Problem]:
    """:func:`verify_store` of every feature set of the store at ``location`` (a set
    whose spec in the root was edited is one problem; the others are still checked).

    Raises:
        StoreError: no store there. StoreDamage: the root itself is damaged.
    """
    opened = FeatureStore.open(location, storage_options=storage_options)
    several = len(opened.feature_sets) > 1
    problems: list[Problem] = []
    for store in map(opened.with_set, opened.feature_sets):
        name = store.feature_set if several else None
        if store.damage:
            problems.append(Problem(None, store.damage, feature_set=name))
            continue
        problems += [replace(p, feature_set=name) for p in verify_store(store)]
    return problems


@dataclass
class RebuildReport:
    """What :func:`rebuild_root` found: the sets and parts of the new root, and the part
    folders it left out (with why)."""

    sets: dict[str, int] = field(default_factory=dict)  # set name -> parts
    clips: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: why"
    backup: str | None = None  # where the old root's bytes were kept


def rebuild_root(location: str, *, storage_options: dict | None = None) -> RebuildReport:
    """Rebuild the root's index from the part markers (``emi store repair
    --rebuild-root``): every part folder whose marker says complete becomes a part of
    its folder's feature set, with the spec and record its marker holds (parts of other
    features than the set's first are left out and named). The old root's bytes are
    kept beside it (``zarr.json.before-rebuild-<time>``); failure records, which only
    the root held, are kept where the old root is readable, else lost (the next
    extract retries those clips). Takes the writer lock.
    """
    where = StoreLocation.of(location, storage_options)
    report = RebuildReport()
    with StoreLock(where, purpose="store repair"):
        old_raw, old_attributes = read_node_attributes(where)
        old_sets = salvage_failures(old_attributes)  # name -> (parts path, failures)
        folders = [(None, PARTS)] + [
            (name, set_parts_path(name))
            for name in where.entries(SETS)
            if name != "zarr.json" and not name.endswith(".partial")
        ]
        sets: list[FeatureSetRecord] = []
        for name, path in folders:
            spec, parts = _parts_from_markers(where, path, report)
            if spec is None:
                continue
            if name is None:  # the first set: its old name, else its backbone's
                by_path = [n for n, (p, _) in old_sets.items() if p == PARTS]
                name = by_path[0] if by_path else set_name_of(spec)
                if name in {n for n, _ in folders if n}:  # a further set has that name
                    name = f"{name}-{fingerprint(spec)[:12]}"
            failures = old_sets.get(name, ("", {}))[1]
            sets.append(FeatureSetRecord(name, fingerprint(spec), spec, path, parts, failures))
            report.sets[name] = len(parts)
            report.clips += sum(r.clips for r in parts.values())
        if not sets:
            raise StoreError(f"{location}: no complete part to rebuild a root from")
        if old_raw is not None:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            report.backup = f"zarr.json.before-rebuild-{stamp}"
            where.write(report.backup, old_raw)
        write_root(where, RootIndex.of_sets(sets))
    return report


def _parts_from_markers(
    where: StoreLocation, path: str, report: RebuildReport
) -> tuple[dict | None, dict[str, PartRecord]]:
    """The spec and ``{part: record}`` of the complete parts under ``path``."""
    spec, wanted, parts = None, None, {}
    for part in where.entries(path):
        if part == "zarr.json" or part.endswith(".partial"):
            continue
        _, attributes = read_node_attributes(where, f"{path}/{part}")
        marker = PartMarker.from_attributes(attributes)
        if marker is None:
            report.skipped.append(f"{path}/{part}: no readable marker")
            continue
        if not marker.complete:
            report.skipped.append(f"{path}/{part}: never completed")
            continue
        if not marker.intact:
            report.skipped.append(
                f"{path}/{part}: its marker's spec does not match its fingerprint"
            )
            continue
        # intact: each marker's spec hashes to its record's fingerprint
        if spec is None:
            spec, wanted = marker.spec, marker.record.fingerprint
        elif marker.record.fingerprint != wanted:
            report.skipped.append(f"{path}/{part}: features of another spec than the set's")
            continue
        parts[part] = marker.record
    return spec, parts
