"""Content checksums of stored arrays: what a part commits, and how reads are checked.

Every chunk carries a crc32c in its codec pipeline (zarr's ``crc32c`` codec), so an
altered chunk fails to decode. That cannot see a chunk that is *missing* (zarr reads it
as fill values) or metadata that was changed, so each committed part also records the
crc32c of the decoded content: one per per-clip array, and one per clip for the
per-frame arrays (so a single clip's frames are checked without reading the part).
"""

from __future__ import annotations

import json

import google_crc32c
import numpy as np

from featurestore.errors import StoreDamage


def crc32c_of(values: np.ndarray) -> int:
    """crc32c of an array's values: its C-order little-endian bytes, or, for strings,
    the UTF-8 of their JSON list."""
    if values.dtype.kind in "OUT":
        data = json.dumps([str(v) for v in values.tolist()]).encode()
        return google_crc32c.value(data)
    contiguous = np.ascontiguousarray(values)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    view = contiguous.view()
    view.flags.writeable = False  # google_crc32c reads read-only buffers without a copy
    return google_crc32c.value(view.reshape(-1).view(np.uint8))


def crc32c_of_json(value) -> int:
    """crc32c of a JSON value's canonical form (sorted keys)."""
    return google_crc32c.value(json.dumps(value, sort_keys=True).encode())


def check_crc(values: np.ndarray, expected: int, *, where: str) -> np.ndarray:
    """Return ``values`` if their crc32c is ``expected``; raise :class:`StoreDamage`."""
    if crc32c_of(values) != expected:
        raise StoreDamage(
            f"{where}: content does not match its committed checksum (a chunk is missing "
            "or altered). Run `emi store verify` for the full list and `emi store repair` "
            "to drop damaged parts."
        )
    return values
