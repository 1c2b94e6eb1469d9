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
from typing import Any, Protocol

from featurestore.errors import LayerError
from featurestore.frames import (
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    SAMPLE_RATE_HZ,
)
from featurestore.options import DEFAULT_MODEL  # noqa: F401  (re-exported)
from featurestore.records import FieldAccess


class DescribedBackbone(Protocol):
    """What a spec needs to know of a backbone (``featurestore.backbone.BackboneIdentity``
    is one): the spec depends on this description, never on the backbone's code."""

    ref: str
    revision: str | None
    weights_sha256: str
    config_sha256: str
    config: Any  # a transformers config: hidden_size, num_hidden_layers, feat_extract_norm

    @property
    def has_vad_head(self) -> bool: ...


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
    layer: str = "last"  # ``hidden``: last_hidden_state of the Wav2Vec2Model
    # Other stored layers: ``hidden_states[k]`` as transformers numbers them (0: the
    # input of the first transformer layer, k: the output of layer k; in stable-layer-norm
    # models such as the large ones, the last layer's output is taken before the final
    # layer norm that ``hidden`` has). (): none (the JSON then leaves the key out, so
    # such stores keep the fingerprint they had before layers could be chosen).
    layers: tuple[int, ...] = ()
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
        if self.layers:
            data["layers"] = list(self.layers)
        else:
            del data["layers"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        values = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        values["backbone"] = BackboneRef.from_dict(data["backbone"])
        values["vad_labels"] = tuple(data.get("vad_labels", VAD_LABELS))
        values["dtypes"] = tuple(dict(data.get("dtypes", dict(cls.dtypes))).items())
        values["layers"] = tuple(int(k) for k in data.get("layers", ()))
        return cls(**values)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON, without the descriptive backbone fields."""
        return fingerprint(self.to_dict())

    @property
    def vad_width(self) -> int:
        return len(self.vad_labels)

    def layer_number(self, layer: int | None) -> int | None:
        """``layer`` checked against the stored layers (None: ``hidden``, the model's
        last hidden state, always stored).

        Raises:
            LayerError: that layer is not stored (the message names the stored ones).
        """
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise LayerError(
                f"layer {layer!r}: give a layer number (an int) or None for the last hidden state"
            )
        if layer is None or layer in self.layers:
            return layer
        stored = ", ".join(map(str, self.layers)) or "none besides the last hidden state"
        raise LayerError(
            f"layer {layer} is not stored (stored layers: {stored}); extract it into a "
            "new store or feature set with --layers"
        )

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
    backbone: DescribedBackbone,
    *,
    max_seconds: float | None,
    window_seconds: float | None,
    compute_dtype: str = "float32",
    layers: str | tuple[int, ...] = "last",
) -> FeatureSpec:
    """The spec of features made by ``backbone`` with these settings (no VAD labels for
    a backbone without the VAD head).

    ``layers``: ``"last"``, ``"all"``, ``"0,6,12"`` or a tuple of layer numbers (see
    :func:`parse_layers`)."""
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
        layers=parse_layers(layers, int(config.num_hidden_layers)),
        vad_labels=VAD_LABELS if backbone.has_vad_head else (),
    )


def parse_layers(layers: str | tuple[int, ...] | list[int], last: int) -> tuple[int, ...]:
    """The layers to store besides ``hidden`` for a backbone of ``last`` transformer
    layers: ``"last"``: () (``hidden`` only, the store as before layers could be
    chosen); ``"all"``: 0..last; ``"0,6,12"`` or a sequence: those layers, sorted.

    Raises:
        LayerError: not a choice, or a layer outside 0..last (the message names
            ``layers`` and the backbone's range).
    """
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "last":
            return ()
        if text == "all":
            return tuple(range(last + 1))
        try:
            chosen = [int(k) for k in text.split(",") if k.strip()]
        except ValueError:
            raise LayerError(
                f"layers {layers!r}: give 'last', 'all' or layer numbers such as 0,6,{last}",
                option="layers",
            ) from None
        if not chosen:
            raise LayerError(f"layers {layers!r}: no layer given", option="layers")
        layers = chosen
    wrong = [k for k in layers if not 0 <= int(k) <= last]
    if wrong:
        raise LayerError(
            f"layers: layer {wrong[0]} does not exist; this backbone has layers 0 (the "
            f"input of its first transformer layer) to {last}",
            option="layers",
        )
    return tuple(sorted({int(k) for k in layers}))


def layer_key(name: str, layer: int | None) -> str:
    """The array of ``name`` (``hidden`` or ``hidden_mean``) for a stored layer: None
    (the last hidden state) is ``hidden``, layer 6 is ``hidden_l06``."""
    return name if layer is None else f"{name}_l{layer:02d}"


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
