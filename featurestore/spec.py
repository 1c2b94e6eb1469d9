"""The feature spec: everything that decides what a store's numbers mean.

A spec is a :class:`FeatureSpec`, kept as JSON in the store's root attributes. Its fingerprint
is the sha256 of its canonical JSON, leaving out the fields that only describe where
the backbone came from (``backbone.ref``, ``backbone.revision``): the same weights
from another folder or mirror give the same fingerprint; other weights, another crop
or window, or another compute dtype give another one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.audio import (
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    SAMPLE_RATE_HZ,
)
from featurestore.options import DEFAULT_MODEL  # noqa: F401  (re-exported)
from featurestore.records import FieldAccess

if TYPE_CHECKING:
    from featurestore.backbone import BackboneIdentity

FORMAT_VERSION = 1
VAD_LABELS = ("arousal", "dominance", "valence")  # the checkpoint's id2label 0, 1, 2
_DESCRIPTIVE = ("ref", "revision")


@dataclass(frozen=True)
class BackboneRef(FieldAccess):
    """Which backbone made the features: where from (``ref``, ``revision``: descriptive,
    not hashed) and what it is (hashes of its weights and config, its norm type)."""

    ref: str
    revision: str | None
    weights_sha256: str
    config_sha256: str
    feat_extract_norm: str

    @classmethod
    def from_dict(cls, data: dict) -> BackboneRef:
        return cls(**{f: data.get(f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True, eq=False)
class FeatureSpec(FieldAccess):
    """Everything that decides what a store's numbers mean (kept as JSON in the store's
    root and in every head's card); :attr:`fingerprint` hashes it."""

    backbone: BackboneRef
    hidden_size: int
    max_seconds: float | None
    window_seconds: float | None
    compute_dtype: str = "float32"
    layer: str = "last"  # last_hidden_state of the Wav2Vec2Model
    sample_rate_hz: int = SAMPLE_RATE_HZ
    frame_rate_hz: int = FRAMES_PER_SECOND
    frame_hop_samples: int = FRAME_HOP_SAMPLES
    frame_window_samples: int = FRAME_WINDOW_SAMPLES
    vad_labels: tuple[str, ...] = VAD_LABELS
    dtypes: tuple[tuple[str, str], ...] = (
        ("hidden", "float16"),
        ("frame_vad", "float32"),
        ("means", "float32"),
    )
    normalisation: str = "per clip, zero mean unit variance over real samples"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        """The JSON form (the same keys and values as the stores of emi 0.1)."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data["backbone"] = self.backbone.to_dict()
        data["vad_labels"] = list(self.vad_labels)
        data["dtypes"] = dict(self.dtypes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        values = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        values["backbone"] = BackboneRef.from_dict(data["backbone"])
        values["vad_labels"] = tuple(data.get("vad_labels", VAD_LABELS))
        values["dtypes"] = tuple(dict(data.get("dtypes", dict(cls.dtypes))).items())
        return cls(**values)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON, without the descriptive backbone fields."""
        return fingerprint(self.to_dict())

    @property
    def vad_width(self) -> int:
        return len(self.vad_labels)

    def differences(self, other: FeatureSpec) -> str:
        """The hashed fields where ``other`` differs, for error messages."""
        return describe_difference(self.to_dict(), as_spec(other).to_dict())

    def __eq__(self, other) -> bool:
        if isinstance(other, dict):
            return self.to_dict() == other
        return isinstance(other, FeatureSpec) and self.to_dict() == other.to_dict()

    __hash__ = None


def as_spec(spec: FeatureSpec | dict) -> FeatureSpec:
    """A spec from its JSON form (or itself)."""
    return spec if isinstance(spec, FeatureSpec) else FeatureSpec.from_dict(spec)


def build_spec(
    backbone: BackboneIdentity,
    *,
    max_seconds: float | None,
    window_seconds: float | None,
    compute_dtype: str = "float32",
) -> FeatureSpec:
    """The spec of features made by ``backbone`` with these settings."""
    config = backbone.config
    return FeatureSpec(
        backbone=BackboneRef(
            ref=backbone.ref,
            revision=backbone.revision,
            weights_sha256=backbone.weights_sha256,
            config_sha256=backbone.config_sha256,
            feat_extract_norm=config.feat_extract_norm,
        ),
        hidden_size=int(config.hidden_size),
        max_seconds=max_seconds,
        window_seconds=window_seconds,
        compute_dtype=compute_dtype,
    )


def fingerprint(spec: FeatureSpec | dict) -> str:
    """sha256 of the spec's canonical JSON, without the descriptive backbone fields."""
    hashed = copy.deepcopy(spec.to_dict() if isinstance(spec, FeatureSpec) else spec)
    for key in _DESCRIPTIVE:
        hashed.get("backbone", {}).pop(key, None)
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def describe_difference(a: FeatureSpec | dict, b: FeatureSpec | dict) -> str:
    """Human-readable list of the hashed fields where two specs differ."""
    a = a.to_dict() if isinstance(a, FeatureSpec) else a
    b = b.to_dict() if isinstance(b, FeatureSpec) else b
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
