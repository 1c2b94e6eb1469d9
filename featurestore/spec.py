"""The feature spec: everything that decides what a store's numbers mean.

A spec is a plain JSON-able dict kept in the store's root attributes. Its fingerprint
is the sha256 of its canonical JSON, leaving out the fields that only describe where
the backbone came from (``backbone.ref``, ``backbone.revision``): the same weights
from another folder or mirror give the same fingerprint; other weights, another crop
or window, or another compute dtype give another one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING

from featurestore.audio import (
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    SAMPLE_RATE_HZ,
)

if TYPE_CHECKING:
    from featurestore.backbone import BackboneIdentity

FORMAT_VERSION = 1
DEFAULT_MODEL = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
VAD_LABELS = ("arousal", "dominance", "valence")  # the checkpoint's id2label 0, 1, 2
_DESCRIPTIVE = ("ref", "revision")


def build_spec(
    backbone: BackboneIdentity,
    *,
    max_seconds: float | None,
    window_seconds: float | None,
    compute_dtype: str = "float32",
) -> dict:
    """The spec of features made by ``backbone`` with these settings."""
    config = backbone.config
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {
            "ref": backbone.ref,
            "revision": backbone.revision,
            "weights_sha256": backbone.weights_sha256,
            "config_sha256": backbone.config_sha256,
            "feat_extract_norm": config.feat_extract_norm,
        },
        "layer": "last",  # last_hidden_state of the Wav2Vec2Model
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "frame_rate_hz": FRAMES_PER_SECOND,
        "frame_hop_samples": FRAME_HOP_SAMPLES,
        "frame_window_samples": FRAME_WINDOW_SAMPLES,
        "hidden_size": int(config.hidden_size),
        "vad_labels": list(VAD_LABELS),
        "dtypes": {"hidden": "float16", "frame_vad": "float32", "means": "float32"},
        "normalisation": "per clip, zero mean unit variance over real samples",
        "max_seconds": max_seconds,
        "window_seconds": window_seconds,
        "compute_dtype": compute_dtype,
    }


def fingerprint(spec: dict) -> str:
    """sha256 of the spec's canonical JSON, without the descriptive backbone fields."""
    hashed = copy.deepcopy(spec)
    for key in _DESCRIPTIVE:
        hashed.get("backbone", {}).pop(key, None)
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def describe_difference(a: dict, b: dict) -> str:
    """Human-readable list of the hashed fields where two specs differ."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            for sub in sorted(set(va) | set(vb)):
                if sub not in _DESCRIPTIVE and va.get(sub) != vb.get(sub):
                    diffs.append(f"{key}.{sub}: {va.get(sub)!r} vs {vb.get(sub)!r}")
        elif va != vb:
            diffs.append(f"{key}: {va!r} vs {vb!r}")
    return "; ".join(diffs) or "no field differs"
