"""The root index: which parts each feature set has committed, as one typed record.

A store's root group (``zarr.json``) holds the index in its attributes under ``emi``;
a part's group holds its marker under ``emi_part``. This module is the only one that
reads or writes either by key: everyone else uses :class:`RootIndex`,
:class:`FeatureSetRecord`, :class:`PartRecord` and :class:`PartMarker`.

Two formats are read into the same record:

    format 2 (one feature set, as stores were before sets):
      {format_version: 2, fingerprint, spec, parts: {name: part record}, failures,
       index_digest}
    format 3 (several feature sets):
      {format_version: 3, default_set, sets: {name: {parts_path, fingerprint, spec,
       parts, failures}}, index_digest}

A store of one set with the default name and the VAD arrays is written in format 2,
so earlier emi versions read it; anything else in format 3, which they refuse with a
clear message. ``index_digest`` is the XXH3 of what the index commits (parts and
failures; in format 3 also each set's parts path and fingerprint, and the default set):
a root edited by hand no longer matches it and is reported as damage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from featurestore.integrity import digest_of_json
from featurestore.records import ClipFailure, FieldAccess
from featurestore.spec import FeatureSpec, as_spec, fingerprint
from featurestore.store.layout import PART_ATTR, PARTS, part_number, set_name_of

STORE_FORMAT = 2  # 1: parts found by listing, no checksums (emi 0.1)
SETS_FORMAT = 3  # several feature sets (a store of one set keeps format 2)
STORE_FORMATS = (STORE_FORMAT, SETS_FORMAT)
ROOT_ATTR = "emi"  # the root group's attribute that holds the index

_PART_LISTS = ("clip_id", "clip_frames", "sha256", "duration_s")
_PART_OPTIONAL = ("metadata_digests", "fingerprint", "written_at", "written_by")


def utc_now() -> str:
    """The time stamps the index records (failures, part records)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PartRecord(FieldAccess):
    """What a committed part holds: its clips (ids, frames, source sha256, durations)
    and the XXH3 digest of every array (``clip_digests``: per clip, for the per-frame
    arrays; ``metadata_digests``: of each array's metadata, where committed)."""

    clips: int
    frames: int
    clip_id: tuple[str, ...]
    clip_frames: tuple[int, ...]
    sha256: tuple[str, ...]
    duration_s: tuple[float, ...]
    digests: Mapping[str, str]
    clip_digests: Mapping[str, tuple[str, ...]]
    metadata_digests: Mapping[str, str] | None = None
    fingerprint: str | None = None
    written_at: str | None = None
    written_by: str | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> PartRecord:
        """Raises KeyError, TypeError or ValueError on a malformed record."""
        lists = {k: tuple(data[k]) for k in _PART_LISTS}
        return cls(
            clips=int(data["clips"]),
            frames=int(data["frames"]),
            **lists,
            digests=dict(data["digests"]),
            clip_digests={k: tuple(v) for k, v in dict(data["clip_digests"]).items()},
            **{k: data.get(k) for k in _PART_OPTIONAL},
        )

    def to_json(self) -> dict:
        data = {
            "clips": self.clips,
            "frames": self.frames,
            **{k: list(getattr(self, k)) for k in _PART_LISTS},
            "digests": dict(self.digests),
            "clip_digests": {k: list(v) for k, v in self.clip_digests.items()},
        }
        for k in _PART_OPTIONAL:
            if getattr(self, k) is not None:
                data[k] = getattr(self, k)
        return data

    to_dict = to_json

    def agrees_with(self, other: PartRecord) -> bool:
        """The same clips and digests (a marker against the committed record)."""
        keys = ("clip_id", "digests", "clip_digests", "metadata_digests")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass(frozen=True)
class PartMarker:
    """A part's own marker (its group's ``emi_part`` attributes), written last: whether
    it was completed, and then its record and the spec it was made with (so a damaged
    root can be rebuilt from the parts)."""

    complete: bool
    record: PartRecord | None = None
    spec: dict | None = None

    @classmethod
    def from_attributes(cls, attributes: Mapping) -> PartMarker | None:
        """The marker in a part group's attributes; None where there is none or it is
        not readable."""
        marker = attributes.get(PART_ATTR) if isinstance(attributes, Mapping) else None
        if not isinstance(marker, Mapping):
            return None
        if not marker.get("complete"):
            return cls(False)
        try:
            record = PartRecord.from_json(marker)
        except (KeyError, TypeError, ValueError):
            return None
        spec = marker.get("spec")
        return cls(True, record, spec if isinstance(spec, dict) else None)

    @property
    def intact(self) -> bool:
        """Its spec is the one its record's fingerprint was made from."""
        return spec_matches(self.spec, self.record.fingerprint if self.record else None)

    def to_attributes(self) -> dict:
        """The group attributes that hold this marker."""
        if not self.complete:
            return {PART_ATTR: {"complete": False}}
        return {PART_ATTR: {"complete": True, **self.record.to_json(), "spec": self.spec}}


def spec_matches(spec, wanted: str | None) -> bool:
    """``spec`` (a spec's JSON form) hashes to fingerprint ``wanted``."""
    try:
        return isinstance(spec, dict) and fingerprint(spec) == wanted
    except (KeyError, TypeError, AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class FeatureSetRecord:
    """One feature set of a store: its spec (JSON form) and fingerprint, where its parts
    are, the committed parts (in commit order) and the clips that failed."""

    name: str
    fingerprint: str
    spec: dict
    parts_path: str = PARTS
    parts: Mapping[str, PartRecord] = field(default_factory=dict)
    failures: Mapping[str, ClipFailure] = field(default_factory=dict)

    @classmethod
    def new(cls, name: str, spec: FeatureSpec | dict, parts_path: str = PARTS):
        spec = as_spec(spec)
        return cls(name, fingerprint(spec), spec.to_dict(), parts_path)

    @property
    def intact(self) -> bool:
        """Its spec is the one its fingerprint was made from (not edited)."""
        return spec_matches(self.spec, self.fingerprint)

    def damage(self, location: str) -> str | None:
        """Why this set cannot be read (its spec in the root was edited), or None."""
        if self.intact:
            return None
        return (
            f"{location}: feature set {self.name!r}: its spec in the root metadata does not "
            "match its fingerprint (edited or damaged); `emi store repair --rebuild-root` "
            "rebuilds the root from the part markers. The store's other sets are unaffected."
        )

    @property
    def feature_spec(self) -> FeatureSpec:
        """The spec as a record (only for an intact set)."""
        return FeatureSpec.from_dict(self.spec)

    @property
    def part_names(self) -> list[str]:
        """The committed parts, in commit order."""
        return sorted(self.parts, key=lambda n: (part_number(n), n))

    def next_part_number(self) -> int:
        return max((part_number(n) for n in self.parts), default=-1) + 1

    def committed(
        self, name: str | None, record: PartRecord | None, failures: Iterable[ClipFailure]
    ) -> FeatureSetRecord:
        """This set with part ``name`` committed (where it stored a clip) and
        ``failures`` recorded; a stored clip's earlier failure is forgotten."""
        parts = dict(self.parts)
        if name is not None and record is not None and record.clips:
            parts[name] = record
        stored = set(record.clip_id) if record is not None else set()
        now = utc_now()
        kept = {cid: f for cid, f in self.failures.items() if cid not in stored}
        for f in failures:
            kept[f.clip_id] = replace(f, at=now)
        return replace(self, parts=parts, failures=kept)

    def without_parts(self, names: Iterable[str]) -> FeatureSetRecord:
        dropped = set(names)
        return replace(self, parts={n: r for n, r in self.parts.items() if n not in dropped})

    def _json(self, *, with_path: bool) -> dict:
        data = {"parts_path": self.parts_path} if with_path else {}
        data.update(
            fingerprint=self.fingerprint,
            spec=self.spec,
            parts={n: r.to_json() for n, r in self.parts.items()},
            failures={
                cid: {"path": f.path, "reason": f.reason, "at": f.at}
                for cid, f in self.failures.items()
            },
        )
        return data

    @classmethod
    def _from_json(cls, name: str, data: Mapping, parts_path: str) -> FeatureSetRecord:
        failures = data.get("failures") or {}
        return cls(
            name=name,
            fingerprint=str(data["fingerprint"]),
            spec=data["spec"],
            parts_path=parts_path,
            parts={n: PartRecord.from_json(r) for n, r in dict(data["parts"]).items()},
            failures={
                cid: ClipFailure.from_dict({"clip_id": cid, **f})
                for cid, f in dict(failures).items()
            },
        )


@dataclass(frozen=True)
class RootIndex:
    """The root index of a store: its feature sets (the default set first)."""

    sets: Mapping[str, FeatureSetRecord]
    default_set: str
    format_version: int = SETS_FORMAT

    @classmethod
    def of_sets(cls, sets: Iterable[FeatureSetRecord], default_set: str | None = None):
        """An index of ``sets``; format 2 where that is one set of the default name with
        the VAD arrays in ``parts/`` (as stores were before sets), else format 3."""
        sets = {s.name: s for s in sets}
        default_set = default_set or next(iter(sets))
        only = sets[default_set]
        plain = (
            len(sets) == 1
            and only.parts_path == PARTS
            and only.name == set_name_of(only.spec)
            and bool(only.spec.get("vad_labels"))
        )
        return cls(sets, default_set, STORE_FORMAT if plain else SETS_FORMAT)

    @property
    def names(self) -> tuple[str, ...]:
        """The sets' names, the default set first and the others sorted."""
        return (self.default_set, *sorted(n for n in self.sets if n != self.default_set))

    def with_set(self, record: FeatureSetRecord) -> RootIndex:
        """This index with ``record`` added or replacing the set of its name (a second
        set makes the root format 3)."""
        sets = {**self.sets, record.name: record}
        version = self.format_version if len(sets) == 1 else SETS_FORMAT
        return replace(self, sets=sets, format_version=version)

    def set_with_fingerprint(self, wanted: str) -> str | None:
        """The name of the (first) set whose fingerprint is ``wanted``, or None."""
        return next((n for n in self.names if self.sets[n].fingerprint == wanted), None)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The ``emi`` attributes of the root group, with their digest."""
        if self.format_version == STORE_FORMAT:
            meta = {"format_version": STORE_FORMAT}
            meta.update(self.sets[self.default_set]._json(with_path=False))
        else:
            meta = {
                "format_version": SETS_FORMAT,
                "default_set": self.default_set,
                "sets": {n: s._json(with_path=True) for n, s in self.sets.items()},
            }
        meta["index_digest"] = index_digest(meta)
        return meta

    def to_attributes(self) -> dict:
        """The root group's attributes."""
        return {ROOT_ATTR: self.to_json()}

    @classmethod
    def from_json(cls, meta: Mapping) -> RootIndex:
        """The index of a root's ``emi`` attributes (checked by :func:`index_of_attributes`).

        Raises KeyError, TypeError or ValueError on a malformed index."""
        if meta["format_version"] == SETS_FORMAT:
            sets = {
                n: FeatureSetRecord._from_json(n, r, str(r.get("parts_path", PARTS)))
                for n, r in dict(meta["sets"]).items()
            }
            return cls(sets, str(meta["default_set"]), SETS_FORMAT)
        name = set_name_of(meta["spec"])
        return cls({name: FeatureSetRecord._from_json(name, meta, PARTS)}, name, STORE_FORMAT)


def index_digest(meta: Mapping) -> str:
    """The digest of a root's ``emi`` attributes (what every set commits), recorded as
    its ``index_digest``."""
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


class RootProblem(ValueError):
    """The root's attributes are not a readable emi index; the message says how."""

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign  # not an emi store at all (else: an emi root, damaged)


def index_of_attributes(attributes) -> RootIndex:
    """The checked index held in a root group's attributes.

    Raises:
        RootProblem: ``foreign`` where the group is not an emi store or of a format
            this emi does not read; else the index does not match its digest, or a
            format-2 set's spec does not match its fingerprint (edited or damaged).
            A format-3 set whose spec was edited is not a problem here: that set alone
            is damaged (:attr:`FeatureSetRecord.intact`), the others stay readable.
    """
    meta = attributes.get(ROOT_ATTR) if isinstance(attributes, Mapping) else None
    if not isinstance(meta, dict):
        raise RootProblem("a Zarr group, but not an emi feature store", foreign=True)
    if meta.get("format_version") not in STORE_FORMATS:
        raise RootProblem(
            f"store format {meta.get('format_version')} (this emi reads formats "
            f"{STORE_FORMAT} and {SETS_FORMAT}, with committed parts and checksums); "
            "re-extract into a new store",
            foreign=True,
        )
    try:
        index = RootIndex.from_json(meta)
        intact = (
            meta.get("index_digest") == index_digest(meta)
            and (meta["format_version"] == SETS_FORMAT or "parts_path" not in meta)
            and index.default_set in index.sets
            and (index.format_version == SETS_FORMAT or index.sets[index.default_set].intact)
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        intact = False
    if not intact:
        raise RootProblem("does not match its own checksum or fingerprint (edited or damaged)")
    return index


def salvage_failures(attributes) -> dict[str, tuple[str, dict[str, ClipFailure]]]:
    """From a root's attributes that may be damaged: each set's parts path and failure
    records, where they can be read (a rebuilt root keeps them); {} where nothing can."""
    meta = attributes.get(ROOT_ATTR) if isinstance(attributes, Mapping) else None
    if not isinstance(meta, Mapping):
        return {}
    try:
        sets = meta["sets"] if meta.get("format_version") == SETS_FORMAT else {"": meta}
        found = {}
        for name, record in dict(sets).items():
            if not isinstance(record, Mapping):
                continue
            failures = record.get("failures")
            failures = failures if isinstance(failures, Mapping) else {}
            found[name or set_name_of(record["spec"])] = (
                str(record.get("parts_path", PARTS)),
                {
                    cid: ClipFailure.from_dict({"clip_id": cid, **f})
                    for cid, f in failures.items()
                    if isinstance(f, Mapping)
                },
            )
        return found
    except (KeyError, TypeError, AttributeError, ValueError):
        return {}
