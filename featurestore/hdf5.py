"""Exporting a feature store to one HDF5 file (``emi store export``).

Layout:

    /                   attrs: fingerprint, spec (JSON), vad_labels
    /clips/<name>       one group per clip (its datasets and attributes follow the
                        store's SCHEMA); <name> is the clip id percent-encoded: every
                        character but A-Z a-z 0-9 _ - is written %XX (UTF-8 bytes), so
                        "speaker_b/00007" -> "speaker_b%2F00007", "." -> "%2E";
                        urllib.parse.unquote gives the id back
        hidden          (frames, hidden) float16
        frame_vad       (frames, 3) float32
        hidden_mean     (hidden,) float32
        vad_mean        (3,) float32
        clip_vad        (3,) float32
        hidden_lKK, hidden_mean_lKK   the other stored layers (``--layers``), as above
        attrs           clip_id, source_path, sha256, duration_s, frames
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np

from featurestore.store import CLIP_ATTRIBUTES, FeatureStore, schema
from manifests.atomic import atomic_file


def hdf5_name(clip_id: str) -> str:
    """The group name of a clip id: percent-encoded except ``A-Z a-z 0-9 _ -`` (``/``
    would nest groups, ``.`` is not a name); ``urllib.parse.unquote`` reverses it."""
    return quote(clip_id, safe="").replace(".", "%2E").replace("~", "%7E")


def export_hdf5(store: FeatureStore, path: str | Path, *, progress=None) -> int:
    """Write every stored clip to ``path``; returns the number of clips written.

    The file is written beside ``path`` and moved into place when complete: a failure
    (damaged store, full disk) leaves no partial file and any earlier export intact.
    """
    with atomic_file(path) as temporary:
        written = _write(store, temporary, progress)
    return written


def _write(store: FeatureStore, path: Path, progress) -> int:
    written = 0
    with h5py.File(path, "w") as f:
        f.attrs["fingerprint"] = store.fingerprint
        f.attrs["spec"] = json.dumps(store.spec.to_dict())
        f.attrs["vad_labels"] = np.array(store.spec.vad_labels, dtype=h5py.string_dtype())
        clips = f.create_group("clips")
        features = {a.name: a.axis for a in schema(store.spec) if a.width}
        parts = store.iter_parts(keys=(*features, *CLIP_ATTRIBUTES))
        for name, arrays in progress(parts) if progress else parts:
            offsets = arrays["offsets"]
            for row, clip_id in enumerate(arrays["clip_id"]):
                if store.part_of(clip_id) != name:  # an older copy of a refreshed clip
                    continue
                start, end = int(offsets[row]), int(offsets[row + 1])
                group = clips.create_group(hdf5_name(clip_id))
                for key, axis in features.items():
                    rows = slice(start, end) if axis == "frame" else row
                    group.create_dataset(key, data=arrays[key][rows])
                for key in CLIP_ATTRIBUTES:
                    group.attrs[key] = _attribute(arrays[key][row])
                written += 1
    return written


def _attribute(value):
    """A per-clip value as an HDF5 attribute (text, float or int)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return str(value)
