"""Where things are in a store: folder names, part names, feature-set names, codecs.

```text
STORE/
  zarr.json                  the root group; its attributes hold the root index
                             (``featurestore.store.index``)
  emi_lock/g<generation>/    the writer lock (``featurestore.lock``)
  parts/p000000-<run>/       one part = one writer; its arrays (``schema``) and its
                             marker (attributes ``emi_part``), written last
  sets/<name>/parts/...      a further feature set's parts (the same layout)
```
"""

from __future__ import annotations

import os
import re

import zarr.storage
from zarr.codecs import ZstdCodec

from featurestore.errors import StoreError
from featurestore.location import StoreLocation
from featurestore.spec import FeatureSpec, as_spec
from manifests.sources import is_url

PARTS = "parts"  # the first feature set's parts; a further set's: sets/<name>/parts
SETS = "sets"
PART_ATTR = "emi_part"  # a part's marker, in its group's attributes
CHUNK_BYTES = 4 << 20  # about 4 MiB per chunk of a per-frame array (41 s of 1024-d float16)
# zstd with its frame checksum (xxhash64 of each chunk's content, checked while it is
# decompressed, on zarr's decoding threads): about 3% of read time, where a separate
# crc32c codec after zstd costs 15-35% (bench/store_checks.py).
CODECS = (ZstdCodec(level=0, checksum=True),)


def set_parts_path(name: str) -> str:
    """Where a further feature set ``name`` keeps its parts (the first set: ``parts``)."""
    return f"{SETS}/{name}/{PARTS}"


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


def part_name(number: int, run_id: str) -> str:
    """``p000042-1a2b3c4d``: the number orders commits, the run id keeps two drivers'
    names apart even if the lock were broken."""
    return f"p{number:06d}-{run_id}"


def part_number(name: str) -> int:
    """The commit number in a part's name (-1 for a name that has none)."""
    digits = name[1:].split("-")[0]
    return int(digits) if digits.isdigit() else -1


def uncommitted_parts(location: StoreLocation, committed, path: str = PARTS) -> list[str]:
    """Part folders under ``path`` of the store at ``location`` that are not in
    ``committed`` (part names): being written now, or left by a stopped run (the next
    extract or repair deletes them)."""
    return [n for n in location.entries(path) if n not in committed and n != "zarr.json"]


# Lower case only: a set's name is its folder's, and on a case-insensitive file system
# "Hub" and "hub" would be one folder.
SET_NAME = r"^[a-z0-9_][a-z0-9_.+=-]{0,99}$"  # and not ending in .json (check_set_name)
_SET_NAME = re.compile(SET_NAME)


def check_set_name(name: str) -> str:
    """A feature set's name is a plain lower-case folder name (letters, digits,
    ``_ . + = -``, not starting with ``.``, not ending in ``.json``, at most 100
    characters)."""
    if not isinstance(name, str) or not _SET_NAME.fullmatch(name) or name.endswith(".json"):
        raise StoreError(
            f"feature_set {name!r}: not a plain name (lower-case letters, digits, "
            "_ . + = -; not starting with '.' nor ending in '.json'; at most 100 characters)",
            option="feature_set",
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
