"""The Zarr v3 feature store: layout, writing and committing parts, reading back checked.

Layout (documented in the README; readable with plain zarr, dask and xarray)::

    STORE/
      zarr.json                  root group; attrs["emi"] = {format_version: 2, feature_set,
                                 fingerprint, spec, parts: {name: commit record}, failures,
                                 index_digest}; with several feature sets {format_version:
                                 3, default_set, sets: {name: {parts_path, fingerprint,
                                 spec, parts, failures}}, index_digest}
      emi_lock/g<generation>/    the writer lock (see featurestore.lock)
      parts/
        p000000-<run>/           one part = one writer; attrs["emi_part"] = its marker
          clip_id     (clip,)             string
          source_path (clip,)             string
          sha256      (clip,)             string, of the source file's bytes
          duration_s  (clip,)             float64, of the source file
          frames      (clip,)             int64
          offsets     (clip_offset,)      int64, clips + 1; clip i = frames [o[i], o[i+1])
          hidden      (frame, hidden_unit)     float16, last-layer hidden states
          frame_vad   (frame, vad_label)     float32, head per frame: arousal, dominance, valence
          hidden_mean (clip, hidden_unit)      float32, over real frames
          vad_mean    (clip, vad_label)         float32, mean of frame_vad
          clip_vad    (clip, vad_label)         float32, head on hidden_mean
          hidden_l06  (frame, hidden_unit)     float16, hidden_states[6] (``--layers``)
          hidden_mean_l06 (clip, hidden_unit)  float32, its mean; one pair per stored layer
      sets/<name>/parts/...      a further feature set's parts (the same layout; a set
                                 without the VAD head has no frame_vad, vad_mean, clip_vad)

Writing: a part is written by exactly one task, which owns all its arrays, with its
marker last. It becomes part of the store only when the driver (the one holder of the
writer lock) *commits* it: adds its record (clip ids, frames, sha256, durations and the
XXH3 digest of every array's content) to the root's index in one atomic write of
``zarr.json``. Readers see committed parts only; opening a store is one read of the root.

Reading: every chunk carries a checksum (zstd's), and every read is checked against the
committed content checksums, so a missing or altered chunk, array or metadata raises
:class:`StoreDamage` naming part and array instead of returning fill values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync as zarr_sync

from featurestore.errors import ArgumentError, StoreDamage, StoreError
from featurestore.integrity import check_digest, digest_of, digest_of_json, metadata_digest
from featurestore.location import StoreLocation, group_node
from featurestore.records import ClipFailure, FieldAccess
from featurestore.spec import (
    FeatureSpec,
    as_spec,
    describe_difference,
    fingerprint,
    layer_key,
)
from manifests.sources import is_url

if TYPE_CHECKING:
    from featurestore.encode import ClipFeatures
    from featurestore.lock import StoreLock

STORE_FORMAT = 2  # 1: parts found by listing, no checksums (emi 0.1)
SETS_FORMAT = 3  # several feature sets (a store of one set keeps format 2)
STORE_FORMATS = (STORE_FORMAT, SETS_FORMAT)
PARTS = "parts"  # the first feature set's parts; a further set's: sets/<name>/parts
SETS = "sets"
ROOT_ATTR = "emi"
PART_ATTR = "emi_part"
CHUNK_BYTES = 4 << 20  # about 4 MiB per chunk of a per-frame array (41 s of 1024-d float16)
# zstd with its frame checksum (xxhash64 of each chunk's content, checked while it is
# decompressed, on zarr's decoding threads): about 3% of read time, where a separate
# crc32c codec after zstd costs 15-35% (bench/store_checks.py).
CODECS = (ZstdCodec(level=0, checksum=True),)


@dataclass(frozen=True)
class StoredArray:
    """One array of a part: name, what a row is, dtype, and its width."""

    name: str
    axis: str  # "clip" (one row per clip), "frame" (one row per frame), "offsets"
    dtype: str  # numpy dtype, or "str"
    # The second dimension: "hidden_unit" (the spec's hidden size) or "vad_label" (its
    # VAD labels); None: 1-d. Named apart from the arrays, so xarray keeps them data.
    width: str | None = None


# Every stored array: adding one is a row here plus the code that computes it
# (``ClipFeatures`` for features); writing, reading, checks, verify and export follow.
SCHEMA = (
    StoredArray("clip_id", "clip", "str"),
    StoredArray("source_path", "clip", "str"),
    StoredArray("sha256", "clip", "str"),
    StoredArray("duration_s", "clip", "float64"),
    StoredArray("frames", "clip", "int64"),
    StoredArray("offsets", "offsets", "int64"),
    StoredArray("hidden", "frame", "float16", "hidden_unit"),
    StoredArray("frame_vad", "frame", "float32", "vad_label"),
    StoredArray("hidden_mean", "clip", "float32", "hidden_unit"),
    StoredArray("vad_mean", "clip", "float32", "vad_label"),
    StoredArray("clip_vad", "clip", "float32", "vad_label"),
)
CLIP_ATTRIBUTES = tuple(a.name for a in SCHEMA if a.axis == "clip" and not a.width)


def schema(spec: FeatureSpec | dict) -> tuple[StoredArray, ...]:
    """The arrays of a part of a store with ``spec``: :data:`SCHEMA` (without the VAD
    arrays for a backbone without the VAD head), and for every
    layer of ``spec.layers`` ``hidden_lKK`` (frame) and ``hidden_mean_lKK`` (clip), each
    its own array so a reader of one layer reads only that layer's chunks."""
    spec = as_spec(spec)
    base = SCHEMA if spec.vad_labels else tuple(a for a in SCHEMA if a.width != "vad_label")
    extra = []
    for k in spec.layers:
        extra.append(StoredArray(layer_key("hidden", k), "frame", "float16", "hidden_unit"))
        extra.append(StoredArray(layer_key("hidden_mean", k), "clip", "float32", "hidden_unit"))
    return base + tuple(extra)


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


# -- the root: reading it, creating it ---------------------------------------------------


# -- feature sets: a store holds one or several, each with its own spec and parts ------

# Lower case only: a set's name is its folder's, and on a case-insensitive file system
# "Hub" and "hub" would be one folder.
_SET_NAME = re.compile(r"[a-z0-9_][a-z0-9_.+=-]{0,99}")


def check_set_name(name: str) -> str:
    """A feature set's name is a plain lower-case folder name (letters, digits,
    ``_ . + = -``, not starting with ``.``, not ending in ``.json``, at most 100
    characters)."""
    if not isinstance(name, str) or not _SET_NAME.fullmatch(name) or name.endswith(".json"):
        raise StoreError(
            f"--feature-set {name!r}: not a plain name (lower-case letters, digits, "
            "_ . + = -; not starting with '.' nor ending in '.json'; at most 100 characters)"
        )
    return name


def set_name_of(spec: FeatureSpec | dict) -> str:
    """The default name of a feature set: its backbone's folder or hub name, made plain
    (``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim`` ->
    ``wav2vec2-large-robust-12-ft-emotion-msp-dim``)."""
    ref = str(as_spec(spec).backbone.ref or "features").rstrip("/")
    name = re.sub(r"[^a-z0-9_.+=-]", "_", ref.rsplit("/", 1)[-1].lower()).lstrip(".")
    name = name[:100].removesuffix(".json")
    return name or "features"


def feature_sets(meta: dict) -> dict[str, dict]:
    """The store's feature sets: name -> its record (``fingerprint``, ``spec``,
    ``parts``, ``failures``; ``parts_path`` where it is not ``parts``). The records are
    the root's own dicts: a writer's changes to them are the root's. A format-2 root is
    one set named after its backbone."""
    if meta.get("format_version") == SETS_FORMAT:
        return meta["sets"]
    return {set_name_of(meta["spec"]): meta}


def default_set(meta: dict) -> str:
    """The set used where none is named: the store's first."""
    if meta.get("format_version") == SETS_FORMAT:
        return meta["default_set"]
    return next(iter(feature_sets(meta)))


def parts_path(record: dict) -> str:
    """Where a feature set's part folders are, relative to the store."""
    return record.get("parts_path", PARTS)


def index_digest(meta: dict) -> str:
    """The digest of a root's index (what every set holds), recorded as its
    ``index_digest``."""
    if meta.get("format_version") == SETS_FORMAT:
        return digest_of_json(
            {
                "default_set": meta.get("default_set"),
                "sets": {
                    name: {k: r.get(k) for k in ("parts_path", "fingerprint", "parts", "failures")}
                    for name, r in meta.get("sets", {}).items()
                },
            }
        )
    return digest_of_json({"parts": meta.get("parts", {}), "failures": meta.get("failures", {})})


def _intact(meta: dict) -> bool:
    """The root's index digest matches (a format-2 root names no parts folder: its
    parts are always under ``parts/``; its one set's spec must match its fingerprint).
    A format-3 set whose spec was edited is damage of that set only
    (:func:`check_set_record`): the other sets stay readable."""
    try:
        sets = feature_sets(meta)
        return (
            meta.get("index_digest") == index_digest(meta)
            and (meta.get("format_version") == SETS_FORMAT or "parts_path" not in meta)
            and default_set(meta) in sets
            and (meta.get("format_version") == SETS_FORMAT or set_intact(meta))
        )
    except (KeyError, TypeError, AttributeError, StopIteration):
        return False


def set_intact(record: dict) -> bool:
    """A set's spec is the one its fingerprint was made from."""
    try:
        return isinstance(record.get("spec"), dict) and fingerprint(record["spec"]) == record.get(
            "fingerprint"
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        return False


def check_set_record(location: str, name: str, record: dict) -> None:
    """Raise :class:`StoreDamage` where feature set ``name``'s spec in the root does not
    match its fingerprint (edited): that set is unreadable until the root is rebuilt."""
    if not set_intact(record):
        raise StoreDamage(
            f"{location}: feature set {name!r}: its spec in the root metadata does not match "
            "its fingerprint (edited or damaged); `emi store repair --rebuild-root` rebuilds "
            "the root from the part markers. The store's other sets are unaffected."
        )


def read_root(location: StoreLocation) -> dict | None:
    """The root's ``emi`` metadata, checked; None where nothing exists at ``location``.

    Raises:
        StoreError: something that is not an emi store is there (left untouched).
        StoreDamage: the root metadata is unreadable or does not match its checksum.
    """
    kind = location.kind()
    if kind == "absent":
        return None
    if kind == "file":
        raise StoreError(
            f"{location.url} is a file, not a feature store; give a new path or an empty folder"
        )
    try:
        raw = _read_root_node(location)
    except FileNotFoundError:
        entries = location.entries()
        if not entries or entries == ["emi_lock"]:
            return None  # empty, or a store being created right now
        if PARTS in entries and _nothing_committed(location):
            return None  # a creation that stopped (or a root removed by repair): no data
        if PARTS in entries:
            raise StoreDamage(
                f"{location.url}: its root metadata zarr.json is missing, but parts/ is "
                "there: a damaged feature store. Nothing was changed; `emi store repair "
                "--rebuild-root` rebuilds it from the part markers."
            ) from None
        raise StoreError(
            f"{location.url} is a folder that is not an emi feature store (it holds "
            f"{', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); emi creates a "
            "store only at a new path or in an empty folder. Nothing was changed."
        ) from None
    try:
        node = json.loads(raw)
        attrs = node.get("attributes", {})
    except (ValueError, AttributeError) as err:
        if never_completed(location, raw):
            return None  # a creation that stopped (a full disk): the next extract redoes it
        raise StoreDamage(
            f"{location.url}: root metadata zarr.json is damaged ({err}). Nothing was "
            "changed; `emi store repair --rebuild-root` rebuilds it from the part markers."
        ) from err
    meta = attrs.get(ROOT_ATTR) if isinstance(attrs, dict) else None
    if not isinstance(meta, dict):
        raise StoreError(
            f"{location.url}: a Zarr group, but not an emi feature store. Nothing was changed."
        )
    if meta.get("format_version") not in STORE_FORMATS:
        raise StoreError(
            f"{location.url}: store format {meta.get('format_version')} (this emi reads "
            f"formats {STORE_FORMAT} and {SETS_FORMAT}, with committed parts and checksums); "
            "re-extract into a new store."
        )
    if not _intact(meta):
        raise StoreDamage(
            f"{location.url}: root metadata zarr.json does not match its own checksum or "
            "fingerprint (edited or damaged). Nothing was changed; `emi store repair "
            "--rebuild-root` rebuilds it from the part markers."
        )
    return meta


def never_completed(location: StoreLocation, raw: bytes | None = None) -> bool:
    """A store whose creation stopped before its root was written whole (earlier emi
    versions left an empty ``zarr.json`` on a full disk): the root is empty or not
    JSON, and nothing was ever committed (no part folder, no further set). Such a root
    holds nothing and is replaced by the next ``emi extract``."""
    if raw is None:
        try:
            raw = location.read("zarr.json")
        except FileNotFoundError:
            return False
    try:
        json.loads(raw)
        return False
    except (ValueError, UnicodeDecodeError):
        pass
    if len(raw) > 4096:
        return False
    return _nothing_committed(location)


def _nothing_committed(location: StoreLocation) -> bool:
    """The folder holds only what creating a store writes before any commit: the root,
    an empty ``parts/`` group, the lock, and temporaries of interrupted writes."""
    ours = {"zarr.json", PARTS, "emi_lock"}
    if any(n not in ours and not n.endswith(".partial") for n in location.entries()):
        return False
    return all(n == "zarr.json" or n.endswith(".partial") for n in location.entries(PARTS))


def _read_root_node(location: StoreLocation) -> bytes:
    """The root's ``zarr.json``; FileNotFoundError only if it is still missing after a
    listing (a store being created right now may gain its root between a failed read
    and the listing that would otherwise call it damaged)."""
    try:
        return location.read("zarr.json")
    except FileNotFoundError:
        if "zarr.json" in location.entries():
            return location.read("zarr.json")
        raise


def _new_root(spec: FeatureSpec | dict, name: str) -> dict:
    """A new store's root of one feature set: format 2 (as stores were before feature
    sets, so earlier emi versions read it) where the set has the default name and the
    VAD arrays; else format 3, which they refuse with a clear message."""
    spec = as_spec(spec)
    record = {
        "fingerprint": fingerprint(spec),
        "spec": spec.to_dict(),
        "parts": {},
        "failures": {},
    }
    if name == set_name_of(spec) and spec.vad_labels:
        meta = {"format_version": STORE_FORMAT, **record}
    else:
        meta = {
            "format_version": SETS_FORMAT,
            "default_set": name,
            "sets": {name: {"parts_path": PARTS, **record}},
        }
    meta["index_digest"] = index_digest(meta)
    return meta


class StoreWriter:
    """The driver's side of one feature set of a store: creates it, commits parts,
    records failures.

    Only the holder of the writer lock uses it; every commit checks the lock first.
    """

    def __init__(
        self,
        location: StoreLocation,
        meta: dict,
        lock: StoreLock | None,
        feature_set: str | None = None,
    ) -> None:
        self.location = location
        self.meta = meta  # the whole root
        self.lock = lock
        self.feature_set = feature_set or default_set(meta)

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
        meta = read_root(location)
        wanted = fingerprint(spec)
        for name in (feature_set, new_set_name):
            if name is not None:
                check_set_name(name)
        if meta is None:
            if never_completed(location):  # we hold the lock: replace it
                location.delete("zarr.json")
            meta = _new_root(spec, feature_set or new_set_name or set_name_of(spec))
            # The root first: a store is never seen with parts/ but without its root.
            if not location.create("zarr.json", group_node({ROOT_ATTR: meta})):
                raise StoreError(f"{location.url}: another run created a store here just now")
            location.write(f"{PARTS}/zarr.json", group_node({}))
            return cls(location, meta, lock)
        sets = feature_sets(meta)
        if feature_set is None:
            matching = [name for name, r in sets.items() if r["fingerprint"] == wanted]
            if matching:
                feature_set = matching[0]
            elif new_set_name is not None:
                taken = new_set_name in sets  # by other features: a name of its own
                feature_set = f"{new_set_name[:87]}-{wanted[:12]}" if taken else new_set_name
            else:
                feature_set = default_set(meta)
        if feature_set not in sets:
            return cls._add_set(location, meta, feature_set, spec, lock)
        held = sets[feature_set]
        check_set_record(location.url, feature_set, held)
        if held["fingerprint"] != wanted:
            others = ", ".join(sorted(sets))
            raise StoreError(
                f"{location.url}: feature set {feature_set!r} holds features with fingerprint "
                f"{held['fingerprint'][:12]}, this run would make {wanted[:12]} "
                f"({describe_difference(held['spec'], spec)}). Use the settings the set was "
                f"made with, another store path, or --feature-set NAME to add these "
                f"features as a new set (sets here: {others})."
            )
        return cls(location, meta, lock, feature_set)

    @classmethod
    def _add_set(cls, location, meta, name: str, spec, lock) -> StoreWriter:
        """Add an empty feature set (the root becomes format 3); its folder first, then
        the root that commits it."""
        if meta["format_version"] == STORE_FORMAT:
            first = default_set(meta)
            record = {k: meta[k] for k in ("fingerprint", "spec", "parts", "failures")}
            meta.clear()
            meta.update(
                format_version=SETS_FORMAT,
                default_set=first,
                sets={first: {"parts_path": PARTS, **record}},
            )
        path = f"{SETS}/{name}/{PARTS}"
        meta["sets"][name] = {
            "parts_path": path,
            "fingerprint": fingerprint(spec),
            "spec": as_spec(spec).to_dict(),
            "parts": {},
            "failures": {},
        }
        for folder in (SETS, f"{SETS}/{name}", path):
            location.write(f"{folder}/zarr.json", group_node({}))
        writer = cls(location, meta, lock, name)
        writer._save()
        return writer

    @property
    def record(self) -> dict:
        """This set's record in the root (fingerprint, spec, parts, failures)."""
        return feature_sets(self.meta)[self.feature_set]

    @property
    def parts_path(self) -> str:
        return parts_path(self.record)

    @property
    def fingerprint(self) -> str:
        return self.record["fingerprint"]

    def _save(self) -> None:
        if self.lock is not None:
            self.lock.ensure_held()
        self.meta["index_digest"] = index_digest(self.meta)
        self.location.write("zarr.json", group_node({ROOT_ATTR: self.meta}))

    def commit(self, name: str | None, record: dict | None, failures: list[dict]) -> None:
        """Make part ``name`` (its arrays and marker already written) part of the set,
        and record ``failures`` (clips that could not be stored, with reasons).

        A part that stored no clip is not committed (its folder is deleted)."""
        held = self.record
        if name is not None and record is not None and record["clips"]:
            held["parts"][name] = record
        elif name is not None:
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)
        stored = set(record["clip_id"]) if record else set()
        for cid in stored:
            held["failures"].pop(cid, None)
        now = _utc_now()
        for f in failures:
            held["failures"][f["clip_id"]] = {
                "path": f["path"],
                "reason": f["reason"],
                "at": now,
            }
        self._save()

    def drop_parts(self, names: list[str]) -> None:
        """Take parts out of the index (their clips count as missing again), then delete
        their folders."""
        for name in names:
            self.record["parts"].pop(name, None)
        self._save()
        for name in names:
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)

    def uncommitted_parts(self) -> list[str]:
        """Part folders of this set not in the index: left by a crashed or stopped run."""
        return uncommitted_parts(self.location, self.record["parts"], self.parts_path)

    def remove_uncommitted_parts(self) -> list[str]:
        names = self.uncommitted_parts()
        for name in names:
            self.location.delete(f"{self.parts_path}/{name}", recursive=True)
        return names

    def next_part_number(self) -> int:
        numbers = [part_number(n) for n in self.record["parts"]]
        return max(numbers, default=-1) + 1

    def add_part(self, clips: list[StoredClip], features: list[ClipFeatures]) -> str:
        """Write a part from this process and commit it (for features computed
        elsewhere, e.g. synthetic stores in tests and benchmarks); returns its name."""
        run_id = self.lock.run_id if self.lock is not None else uuid.uuid4().hex[:8]
        name = part_name(self.next_part_number(), run_id)
        zarr_store = open_zarr_store(
            self.location.url, mode="a", storage_options=self.location.storage_options
        )
        record = write_part(
            zarr_store, name, self.record["spec"], clips, features, parts_path=self.parts_path
        )
        self.commit(name, record, [])
        return name


def uncommitted_parts(location: StoreLocation, committed: dict, path: str = PARTS) -> list[str]:
    """Part folders under ``path`` of the store at ``location`` that are not in
    ``committed``: being written now, or left by a stopped run (the next extract or
    repair deletes them)."""
    return [n for n in location.entries(path) if n not in committed and n != "zarr.json"]


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def part_name(number: int, run_id: str) -> str:
    """``p000042-1a2b3c4d``: the number orders commits, the run id keeps two drivers'
    names apart even if the lock were broken."""
    return f"p{number:06d}-{run_id}"


def part_number(name: str) -> int:
    digits = name[1:].split("-")[0]
    return int(digits) if digits.isdigit() else -1


# -- writing one part (on a worker) ------------------------------------------------------


@dataclass(frozen=True)
class StoredClip:
    """What a part holds for one clip besides the feature arrays."""

    clip_id: str
    source_path: str
    sha256: str
    duration_s: float


def _widths(spec: FeatureSpec | dict) -> dict[str, int]:
    spec = as_spec(spec)
    return {"hidden_unit": spec.hidden_size, "vad_label": spec.vad_width}


_DIMS = {"clip": ("clip",), "offsets": ("clip_offset",), "frame": ("frame",)}


def fill_value(a: StoredArray):
    """What a plain zarr, dask or xarray reader sees where a chunk is missing: NaN for
    floats and -1 for the integer arrays (counts and offsets, never negative), so a
    deleted chunk is noticed instead of read as zeros."""
    if a.dtype == "str":
        return None
    return float("nan") if np.dtype(a.dtype).kind == "f" else -1


def _array_options(a: StoredArray, shape: tuple, chunks: tuple) -> dict:
    dims = (*_DIMS[a.axis], a.width) if a.width else _DIMS[a.axis]
    return dict(
        shape=shape,
        dtype=str if a.dtype == "str" else a.dtype,
        chunks=chunks,
        dimension_names=dims,
        compressors=CODECS,
        fill_value=fill_value(a),
        # Every chunk is written, even one equal to the fill value: no pass over each
        # chunk to compare it, and a missing chunk is always damage.
        config={"write_empty_chunks": True},
    )


async def _write_chunks(writes: list[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``(array, first row, rows)`` blocks one chunk per call, all concurrently:
    a call of exactly one chunk's shape is compressed from the caller's buffer (a larger
    call copies each chunk into a new buffer first), and chunks compress in parallel."""
    calls = []
    for arr, start, block in writes:
        step = arr.chunks[0]
        for k in range(0, len(block), step):
            piece = block[k : k + step]
            selection = (slice(start + k, start + k + len(piece)), slice(None))
            calls.append(arr._async_array.setitem(selection, piece))
    await asyncio.gather(*calls)


class PartWriter:
    """Writes one part while its clips are still being computed; the marker goes last.

    Clips arrive in rounds (:meth:`append`). The per-frame arrays grow in whole chunks
    (about :data:`CHUNK_BYTES` each, so a chunk is compressed and written once, never
    rewritten); less than one chunk per array waits in memory. The per-clip arrays
    are small and written by :meth:`finish`, which returns the commit record: clip ids,
    frame counts, sha256, durations, and the XXH3 digest of every array's content (per
    clip for the per-frame arrays).
    """

    def __init__(
        self,
        store: zarr.storage.StoreLike,
        name: str,
        spec: FeatureSpec | dict,
        parts_path: str = PARTS,
    ):
        self.spec = as_spec(spec)
        self._parts_path = parts_path
        self._widths = _widths(self.spec)
        self._schema = {a.name: a for a in schema(self.spec)}
        self._store, self._name = store, name
        self._part = None  # created by the first append (on the writing thread)
        self._clips: list[StoredClip] = []
        self._per_clip: dict[str, list[np.ndarray]] = {
            a.name: [] for a in self._schema.values() if a.axis == "clip" and a.width
        }
        self._frames: list[int] = []
        frame_arrays = [a.name for a in self._schema.values() if a.axis == "frame"]
        self._clip_digests: dict[str, list[str]] = {key: [] for key in frame_arrays}
        self._arrays = {}
        self._pending: dict[str, list[np.ndarray]] = {key: [] for key in frame_arrays}
        self._metadata: dict[str, str] = {}  # array -> digest of its final metadata

    def _open(self) -> None:
        """Create the part's group, marked incomplete, and its per-frame arrays."""
        if self._part is not None:
            return
        self._part = zarr.create_group(
            self._store, path=f"{self._parts_path}/{self._name}", overwrite=True, zarr_format=3
        )
        self._part.attrs[PART_ATTR] = {"complete": False}
        for a in self._schema.values():
            if a.axis != "frame":
                continue
            width = self._widths[a.width]
            rows = max(64, CHUNK_BYTES // (width * np.dtype(a.dtype).itemsize))
            self._arrays[a.name] = self._part.create_array(
                a.name, **_array_options(a, (0, width), (rows, width))
            )

    async def _write_small(self, data: dict[str, np.ndarray]) -> None:
        """Create and fill the per-clip arrays concurrently (one round trip, not nine)."""

        async def one(a: StoredArray) -> None:
            values = data[a.name]
            chunks = tuple(max(1, n) for n in values.shape)
            arr = await self._part._async_group.create_array(
                a.name, **_array_options(a, values.shape, chunks)
            )
            self._metadata[a.name] = metadata_digest(arr.metadata)
            if values.size:
                await arr.setitem(Ellipsis, values)

        await asyncio.gather(*(one(a) for a in self._schema.values() if a.axis != "frame"))

    def append(self, clips: list[StoredClip], features: list[ClipFeatures]) -> None:
        """Add clips (in store order) with their features."""
        self._open()
        for clip, feature in zip(clips, features, strict=True):
            self._clips.append(clip)
            self._frames.append(feature.frames)
            for key, pending in self._pending.items():
                values = np.asarray(feature.array(key), dtype=self._schema[key].dtype)
                self._clip_digests[key].append(digest_of(values))
                pending.append(values)
            for key, rows in self._per_clip.items():
                rows.append(np.asarray(feature.array(key), dtype=self._schema[key].dtype))
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        """Write each per-frame array's pending rows: whole chunks only, unless ``final``."""
        writes = []
        for key, arr in self._arrays.items():
            pending = self._pending[key]
            count = sum(len(p) for p in pending)
            rows = count if final else count // arr.chunks[0] * arr.chunks[0]
            if rows == 0:
                continue
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            start = arr.shape[0]
            arr.resize((start + rows, arr.shape[1]))
            writes.append((arr, start, block[:rows]))
            self._pending[key] = [block[rows:]] if rows < count else []
        if writes:
            zarr_sync(_write_chunks(writes))

    def finish(self) -> dict:
        """Write what remains and the part's marker; return the commit record."""
        self._open()
        self._flush(final=True)
        frames = np.array(self._frames, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
        clips = self._clips
        data = {
            "clip_id": np.array([c.clip_id for c in clips], dtype=object),
            "source_path": np.array([c.source_path for c in clips], dtype=object),
            "sha256": np.array([c.sha256 for c in clips], dtype=object),
            "duration_s": np.array([c.duration_s for c in clips], dtype=np.float64),
            "frames": frames,
            "offsets": offsets,
        }
        for key, rows in self._per_clip.items():
            a = self._schema[key]
            data[key] = np.stack(rows) if rows else np.zeros((0, self._widths[a.width]), a.dtype)
        zarr_sync(self._write_small(data))
        for key, arr in self._arrays.items():
            self._metadata[key] = metadata_digest(arr.metadata)
        record = {
            "clips": len(clips),
            "frames": int(offsets[-1]),
            "clip_id": [c.clip_id for c in clips],
            "clip_frames": [int(f) for f in frames],
            "sha256": [c.sha256 for c in clips],
            "duration_s": [float(c.duration_s) for c in clips],
            "digests": {name: digest_of(values) for name, values in data.items()},
            "clip_digests": self._clip_digests,
            # dtype, shape, chunks, codecs and fill value of every array
            "metadata_digests": {k: self._metadata[k] for k in self._schema},
            "fingerprint": fingerprint(self.spec),
            "written_at": _utc_now(),
            "written_by": f"{socket.gethostname()}:{os.getpid()}",
        }
        # Written last; the spec makes the part self-describing (a damaged root can be
        # rebuilt from its parts).
        self._part.attrs[PART_ATTR] = {"complete": True, **record, "spec": self.spec.to_dict()}
        return record


def write_part(
    store: zarr.storage.StoreLike,
    name: str,
    spec: FeatureSpec | dict,
    clips: list[StoredClip],
    features: list[ClipFeatures],
    parts_path: str = PARTS,
) -> dict:
    """Write one part's arrays, then its marker, in one go; returns its commit record."""
    writer = PartWriter(store, name, spec, parts_path)
    writer.append(clips, features)
    return writer.finish()


# -- reading -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ClipInfo(FieldAccess):
    """One stored clip: where it came from and where it is."""

    clip_id: str
    part: str
    frames: int
    duration_s: float
    source_path: str
    sha256: str


@dataclass(frozen=True)
class ClipLocation:
    part: str
    row: int
    frame_start: int
    frame_end: int
    sha256: str
    duration_s: float


class FeatureStore:
    """Read access to a feature store (local path or fsspec URL); every read is checked.

    Examples:
        >>> store = FeatureStore.open("feats.zarr")  # doctest: +SKIP
        >>> store.hidden(store.clip_ids[0]).shape  # doctest: +SKIP
        (342, 1024)
    """

    def __init__(self, location: StoreLocation, meta: dict, feature_set: str | None = None) -> None:
        self._where = location
        self.location = location.url
        self._root = meta
        sets = feature_sets(meta)
        self.feature_set = feature_set or default_set(meta)
        if self.feature_set not in sets:
            raise StoreError(
                f"{location.url} has no feature set {self.feature_set!r} (its sets: "
                f"{', '.join(sorted(sets))})"
            )
        self._meta = sets[self.feature_set]  # this set's record
        # A set whose spec in the root was edited: named as damage by every read of it,
        # while the store's other sets stay readable.
        self.damage: str | None = None
        try:
            check_set_record(location.url, self.feature_set, self._meta)
        except StoreDamage as err:
            self.damage = str(err)
        self._parts_path = parts_path(self._meta)
        self._zarr = open_zarr_store(
            location.url, mode="r", storage_options=location.storage_options
        )
        self._groups: dict[str, zarr.Group] = {}
        self._clip_arrays: dict[tuple[str, str], np.ndarray] = {}
        self._schema = {} if self.damage else {a.name: a for a in schema(self._meta["spec"])}

    def _require_intact(self) -> None:
        if self.damage:
            raise StoreDamage(self.damage)

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
        meta = read_root(where)
        if meta is None:
            if never_completed(where):
                raise StoreError(
                    f"{location}: a store whose creation never completed (an empty root, "
                    "nothing committed); `emi extract` creates it anew"
                )
            raise StoreError(f"{location}: no feature store there (run `emi extract` first)")
        store = cls(where, meta, feature_set)
        store.location = str(location)
        return store

    @property
    def feature_sets(self) -> tuple[str, ...]:
        """The names of the store's feature sets (the default set first)."""
        first = default_set(self._root)
        return (first, *sorted(n for n in feature_sets(self._root) if n != first))

    def with_set(self, feature_set: str) -> FeatureStore:
        """Another feature set of this store, from the root already read (no read)."""
        other = FeatureStore(self._where, self._root, feature_set)
        other.location = self.location
        return other

    def set_for_fingerprint(self, wanted: str) -> FeatureStore | None:
        """The set of this store whose features have fingerprint ``wanted``, or None."""
        for name in self.feature_sets:
            if feature_sets(self._root)[name]["fingerprint"] == wanted:
                return self if name == self.feature_set else self.with_set(name)
        return None

    @cached_property
    def spec(self) -> FeatureSpec:
        """What the stored numbers mean (backbone, layer, rates, sizes, crop, dtypes)."""
        self._require_intact()
        return FeatureSpec.from_dict(self._meta["spec"])

    @property
    def fingerprint(self) -> str:
        return self._meta["fingerprint"]

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def parts(self) -> dict[str, dict]:
        """Committed parts and their records, in commit order."""
        return self._meta["parts"]

    @property
    def complete_parts(self) -> list[str]:
        """Names of the committed parts, in commit order."""
        return sorted(self._meta["parts"], key=lambda n: (part_number(n), n))

    @cached_property
    def _index(self) -> dict[str, ClipLocation]:
        # A clip stored again later (its file changed and was refreshed) is served from
        # the newest part.
        index: dict[str, ClipLocation] = {}
        self._require_intact()
        for name in self.complete_parts:
            record = self._meta["parts"][name]
            start = 0
            for row, (cid, frames, sha, seconds) in enumerate(
                zip(
                    record["clip_id"],
                    record["clip_frames"],
                    record["sha256"],
                    record["duration_s"],
                    strict=True,
                )
            ):
                index[cid] = ClipLocation(name, row, start, start + frames, sha, seconds)
                start += frames
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
        if not isinstance(clip_id, str):
            raise ArgumentError(f"clip id {clip_id!r}: clip ids are texts")
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.location}") from None

    def frames(self, clip_id: str) -> int:
        """Frames of a stored clip (from the index: no array read)."""
        loc = self._locate(clip_id)
        return loc.frame_end - loc.frame_start

    def sha256_by_clip(self) -> dict[str, str]:
        """Source sha256 of every stored clip (from the index: no array read)."""
        return {cid: loc.sha256 for cid, loc in self._index.items()}

    def part_of(self, clip_id: str) -> str:
        """The part that serves ``clip_id``."""
        return self._locate(clip_id).part

    # -- checked access to parts and arrays ----------------------------------------------
    def _group(self, name: str) -> zarr.Group:
        if name not in self._groups:
            try:
                self._groups[name] = zarr.open_group(
                    self._zarr, path=f"{self._parts_path}/{name}", mode="r", zarr_format=3
                )
            except Exception as err:
                raise StoreDamage(
                    f"{self.location}: part {name}: metadata missing or unreadable "
                    f"({type(err).__name__}: {err}); run `emi store repair`"
                ) from err
        return self._groups[name]

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
        record = self._meta["parts"][name]

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

    def _check_metadata(self, name: str, key: str, arr, record: dict) -> None:
        """An array's metadata against the schema for the set's spec (dtype, shape,
        chunk width) and, for parts that committed it, its digest (every field of
        :data:`featurestore.integrity.ARRAY_METADATA_FIELDS`: codecs, chunks, fill
        value too)."""
        a = self._array(key)
        where = f"{self.location}: part {name}, array {key}"
        expected = self._expected_shape(key, record)
        found = arr.metadata.data_type.to_json(zarr_format=3)
        wanted = "string" if a.dtype == "str" else a.dtype
        problem = None
        if found != wanted:
            problem = f"data type {found}, the schema's is {wanted}"
        elif tuple(arr.shape) != expected:
            problem = f"shape {tuple(arr.shape)}, committed {expected}"
        elif len(arr.chunks) != len(expected) or tuple(arr.chunks[1:]) != expected[1:]:
            problem = f"chunks {tuple(arr.chunks)} do not fit shape {expected}"
        else:
            committed = record.get("metadata_digests", {}).get(key)
            if committed is not None and metadata_digest(arr.metadata) != committed:
                problem = "metadata (codecs, chunks or fill value) differs from what was committed"
        if problem:
            raise StoreDamage(f"{where}: {problem} (edited or damaged); run `emi store repair`")

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

    def _expected_shape(self, key: str, record: dict) -> tuple[int, ...]:
        a = self._array(key)
        rows = {"clip": record["clips"], "offsets": record["clips"] + 1, "frame": record["frames"]}[
            a.axis
        ]
        return (rows, _widths(self.spec)[a.width]) if a.width else (rows,)

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
        expected = self._meta["parts"][name]["digests"]
        for k in keys:
            if k not in frame_keys:
                where = f"{self.location}: part {name}, array {k}"
                self._clip_arrays[(name, k)] = check_digest(values.pop(k), expected[k], where=where)
        return values

    def _clip_frames(self, key: str, clip_id: str) -> np.ndarray:
        self._array(key)  # an array this set does not have: KeyError naming its arrays
        loc = self._locate(clip_id)
        self._per_clip(loc.part, "offsets")  # the part's per-clip data, checked once
        selection = {key: slice(loc.frame_start, loc.frame_end)}
        values = self._read_arrays(loc.part, selection)[key]
        expected = self._meta["parts"][loc.part]["clip_digests"][key][loc.row]
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
                    self._meta["parts"][part]["digests"]["source_path"],
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
        return uncommitted_parts(self._where, self._meta["parts"], self._parts_path)

    def part_marker(self, name: str) -> dict:
        """The committed record of part ``name``."""
        return dict(self._meta["parts"][name])

    @property
    def failures(self) -> list[ClipFailure]:
        """Clips that failed and are not stored: the latest reason per clip id."""
        return [
            ClipFailure.from_dict({"clip_id": cid, **f})
            for cid, f in self._meta.get("failures", {}).items()
            if cid not in self._index
        ]

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

    def read_part(self, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``clip_id`` (as str), ``offsets`` and ``keys`` of part ``name``, one read each
        (all at once), every array checked against the part's committed checksums."""
        record = self._meta["parts"][name]
        wanted = list(dict.fromkeys(("clip_id", "offsets", *keys)))
        frame_keys = [k for k in wanted if self._array(k).axis == "frame"]
        read = self._load_part(name, tuple(frame_keys))
        arrays = {k: self._per_clip(name, k) for k in wanted if k not in frame_keys}
        offsets = self._per_clip(name, "offsets")
        for key, values in read.items():
            digests = record["clip_digests"][key]
            for row in range(record["clips"]):
                check_digest(
                    values[offsets[row] : offsets[row + 1]],
                    digests[row],
                    where=f"{self.location}: part {name}, array {key}, "
                    f"clip {record['clip_id'][row]}",
                )
            arrays[key] = values
        arrays["clip_id"] = np.array([str(x) for x in arrays["clip_id"]], dtype=object)
        return arrays

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
