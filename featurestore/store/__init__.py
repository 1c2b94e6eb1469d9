"""The Zarr v3 feature store, one idea per module:

- :mod:`~featurestore.store.layout`: folder, part and feature-set names; codecs
- :mod:`~featurestore.store.schema`: the arrays of a part (names, dtypes, widths)
- :mod:`~featurestore.store.index`: the root index as a typed record (the only
  module that reads the root's or a part marker's keys)
- :mod:`~featurestore.store.root`: reading and writing the root
- :mod:`~featurestore.store.clip`: what a part is written from, what a reader returns
- :mod:`~featurestore.store.part_writer`: writing one part (on a worker)
- :mod:`~featurestore.store.writer`: the driver's side (commit, drop, new sets)
- :mod:`~featurestore.store.part_reader`, :mod:`~featurestore.store.reader`: checked
  reads (:class:`FeatureStore`)

Writing: a part is written by exactly one task, which owns all its arrays, with its
marker last. It becomes part of the store only when the driver (the one holder of the
writer lock) *commits* it: adds its record (clip ids, frames, sha256, durations and the
XXH3 digest of every array's content) to the root's index in one atomic write of
``zarr.json``. Readers see committed parts only; opening a store is one read of the root.
"""

from featurestore.store.clip import (
    ClipFeatures,
    ClipInfo,
    ClipLocation,
    StoredClip,
    check_clip_ids,
)
from featurestore.store.index import (
    ROOT_ATTR,
    SETS_FORMAT,
    STORE_FORMAT,
    STORE_FORMATS,
    FeatureSetRecord,
    PartMarker,
    PartRecord,
    RootIndex,
    index_digest,
)
from featurestore.store.layout import (
    CHUNK_BYTES,
    CODECS,
    PART_ATTR,
    PARTS,
    SETS,
    check_set_name,
    open_zarr_store,
    part_name,
    part_number,
    set_name_of,
    uncommitted_parts,
)
from featurestore.store.part_writer import PartWriter, write_part
from featurestore.store.reader import FeatureStore
from featurestore.store.root import never_completed, read_root, write_root
from featurestore.store.schema import CLIP_ATTRIBUTES, SCHEMA, StoredArray, fill_value, schema
from featurestore.store.writer import StoreWriter

__all__ = [
    "CHUNK_BYTES",
    "CLIP_ATTRIBUTES",
    "CODECS",
    "PARTS",
    "PART_ATTR",
    "ROOT_ATTR",
    "SCHEMA",
    "SETS",
    "SETS_FORMAT",
    "STORE_FORMAT",
    "STORE_FORMATS",
    "ClipFeatures",
    "ClipInfo",
    "ClipLocation",
    "FeatureSetRecord",
    "FeatureStore",
    "PartMarker",
    "PartRecord",
    "PartWriter",
    "RootIndex",
    "StoreWriter",
    "StoredArray",
    "StoredClip",
    "check_clip_ids",
    "check_set_name",
    "fill_value",
    "index_digest",
    "never_completed",
    "open_zarr_store",
    "part_name",
    "part_number",
    "read_root",
    "schema",
    "set_name_of",
    "uncommitted_parts",
    "write_part",
    "write_root",
]
