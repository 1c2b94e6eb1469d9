"""Reading and writing a store's root (``zarr.json``): the one place the index is
loaded from and saved to, with what a folder that is not (yet) a store means."""

from __future__ import annotations

import json

from featurestore.errors import StoreDamage, StoreError
from featurestore.location import StoreLocation, group_node
from featurestore.store.index import RootIndex, RootProblem, index_of_attributes
from featurestore.store.layout import PARTS

ROOT_NODE = "zarr.json"


def read_root(location: StoreLocation) -> RootIndex | None:
    """The store's root index, checked; None where nothing exists at ``location``.

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
        attributes = json.loads(raw).get("attributes", {})
    except (ValueError, AttributeError) as err:
        if never_completed(location, raw):
            return None  # a creation that stopped (a full disk): the next extract redoes it
        raise StoreDamage(
            f"{location.url}: root metadata zarr.json is damaged ({err}). Nothing was "
            "changed; `emi store repair --rebuild-root` rebuilds it from the part markers."
        ) from err
    try:
        return index_of_attributes(attributes)
    except RootProblem as err:
        if err.foreign:
            raise StoreError(f"{location.url}: {err}. Nothing was changed.") from None
        raise StoreDamage(
            f"{location.url}: root metadata zarr.json {err}. Nothing was changed; `emi "
            "store repair --rebuild-root` rebuilds it from the part markers."
        ) from None


def read_node_attributes(location: StoreLocation, folder: str = "") -> tuple[bytes | None, dict]:
    """The bytes of the group node in ``folder`` (the root: ""; None where it is
    missing) and its attributes ({} where they are unreadable), unchecked: what a
    rebuild keeps of a damaged root, and where it finds a part's marker."""
    try:
        raw = location.read(f"{folder}/{ROOT_NODE}" if folder else ROOT_NODE)
    except FileNotFoundError:
        return None, {}
    try:
        attributes = json.loads(raw)["attributes"]
        return raw, attributes if isinstance(attributes, dict) else {}
    except (TypeError, ValueError, KeyError):
        return raw, {}


def write_root(location: StoreLocation, index: RootIndex) -> None:
    """Save ``index`` as the root (one atomic write of ``zarr.json``)."""
    location.write(ROOT_NODE, group_node(index.to_attributes()))


def create_root(location: StoreLocation, index: RootIndex) -> bool:
    """Create the root with ``index`` where there is none (False: another run just did)."""
    return location.create(ROOT_NODE, group_node(index.to_attributes()))


def never_completed(location: StoreLocation, raw: bytes | None = None) -> bool:
    """A store whose creation stopped before its root was written whole (earlier emi
    versions left an empty ``zarr.json`` on a full disk): the root is empty or not
    JSON, and nothing was ever committed (no part folder, no further set). Such a root
    holds nothing and is replaced by the next ``emi extract``."""
    if raw is None:
        try:
            raw = location.read(ROOT_NODE)
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
    ours = {ROOT_NODE, PARTS, "emi_lock"}
    if any(n not in ours and not n.endswith(".partial") for n in location.entries()):
        return False
    return all(n == ROOT_NODE or n.endswith(".partial") for n in location.entries(PARTS))


def _read_root_node(location: StoreLocation) -> bytes:
    """The root's ``zarr.json``; FileNotFoundError only if it is still missing after a
    listing (a store being created right now may gain its root between a failed read
    and the listing that would otherwise call it damaged)."""
    try:
        return location.read(ROOT_NODE)
    except FileNotFoundError:
        if ROOT_NODE in location.entries():
            return location.read(ROOT_NODE)
        raise
