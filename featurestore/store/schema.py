"""The arrays of a part: names, what a row is, dtypes, widths, chunking and codecs.

Adding a stored array is a row in :data:`SCHEMA` plus the code that computes it
(:class:`featurestore.store.clip.ClipFeatures` for features); writing, reading, checks,
verify and export follow from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.integrity import metadata_digest
from featurestore.spec import FeatureSpec, as_spec, layer_key
from featurestore.store.layout import CODECS


@dataclass(frozen=True)
class StoredArray:
    """One array of a part: name, what a row is, dtype, and its width."""

    name: str
    axis: str  # "clip" (one row per clip), "frame" (one row per frame), "offsets"
    dtype: str  # numpy dtype, or "str"
    # The second dimension: "hidden_unit" (the spec's hidden size) or "vad_label" (its
    # VAD labels); None: 1-d. Named apart from the arrays, so xarray keeps them data.
    width: str | None = None


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


def widths(spec: FeatureSpec | dict) -> dict[str, int]:
    """The size of each named second dimension (``hidden_unit``, ``vad_label``)."""
    spec = as_spec(spec)
    return {"hidden_unit": spec.hidden_size, "vad_label": spec.vad_width}


def shape_of(a: StoredArray, *, clips: int, frames: int, spec: FeatureSpec | dict) -> tuple:
    """The shape of array ``a`` in a part of ``clips`` clips and ``frames`` frames."""
    rows = {"clip": clips, "offsets": clips + 1, "frame": frames}[a.axis]
    return (rows, widths(spec)[a.width]) if a.width else (rows,)


_DIMS = {"clip": ("clip",), "offsets": ("clip_offset",), "frame": ("frame",)}


def fill_value(a: StoredArray):
    """What a plain zarr, dask or xarray reader sees where a chunk is missing: NaN for
    floats and -1 for the integer arrays (counts and offsets, never negative), so a
    deleted chunk is noticed instead of read as zeros."""
    if a.dtype == "str":
        return None
    return float("nan") if np.dtype(a.dtype).kind == "f" else -1


def zarr_dtype(a: StoredArray) -> str:
    """The data type's name in an array's ``zarr.json``."""
    return "string" if a.dtype == "str" else a.dtype


def array_options(a: StoredArray, shape: tuple, chunks: tuple) -> dict:
    """Keyword arguments of zarr's ``create_array`` for array ``a``."""
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


def metadata_problem(
    a: StoredArray, metadata, shape: tuple[int, ...], committed_digest: str | None
) -> str | None:
    """What is wrong with an array's zarr ``metadata`` given schema row ``a``, the
    ``shape`` its part committed and (for parts that committed it) the digest of its
    metadata (every field of :data:`featurestore.integrity.ARRAY_METADATA_FIELDS`:
    codecs, chunks, fill value too); None where nothing is."""
    found = metadata.data_type.to_json(zarr_format=3)
    chunks = tuple(metadata.chunks)
    if found != zarr_dtype(a):
        return f"data type {found}, the schema's is {zarr_dtype(a)}"
    if tuple(metadata.shape) != shape:
        return f"shape {tuple(metadata.shape)}, committed {shape}"
    if len(chunks) != len(shape) or chunks[1:] != shape[1:]:
        return f"chunks {chunks} do not fit shape {shape}"
    if committed_digest is not None and metadata_digest(metadata) != committed_digest:
        return "metadata (codecs, chunks or fill value) differs from what was committed"
    return None
