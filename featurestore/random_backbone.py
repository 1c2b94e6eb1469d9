"""Seeded random backbones in the real checkpoint's layout, for offline tests and demos.

Every size keeps the real model's conv stack (kernels 10,3,3,3,3,2,2; strides
5,2,2,2,2,2,2): 400-sample receptive field, 320-sample hop, 50 frames per second at
16 kHz. Only widths and depths shrink.

=================  ======  ======  =====  ===========  =========================
size               hidden  layers  heads  conv width   feature encoder norm
=================  ======  ======  =====  ===========  =========================
tiny               32      2       2      32           layer (stable layer norm)
small              256     4       4      256          layer (stable layer norm)
base               768     12      12     512          group (like wav2vec2-base)
large-robust-12    1024    12      16     512          layer (the real model's shape)
=================  ======  ======  =====  ===========  =========================

``norm="group"`` turns any size into a group-norm model (wav2vec2-base style).
``family="hubert"`` or ``"wavlm"`` writes a plain transformers checkpoint of that family
(the base model's weights unprefixed, no VAD head) with the same sizes; ``"wav2vec2"``
(the default) the audeering layout with its VAD head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PretrainedConfig

from featurestore.backbone import EmotionBackbone
from featurestore.families import DEFAULT_FAMILY, FAMILIES, family_names
from featurestore.options import BACKBONE_SIZES, RANDOM_MARK
from featurestore.spec import VAD_LABELS
from manifests.atomic import apply_umask

SIZES = BACKBONE_SIZES


def random_config(
    size: str, *, norm: str | None = None, family: str = DEFAULT_FAMILY
) -> PretrainedConfig:
    """The config of a random backbone of ``size`` (see the module table)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {family_names()}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    params = dict(SIZES[size])
    norm = norm or params.pop("norm")
    params.pop("norm", None)
    if norm not in ("layer", "group"):
        raise ValueError(f"norm must be 'layer' or 'group', not {norm!r}")
    common = dict(
        **params,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
    )
    record = FAMILIES[family]
    if not record.vad_head:  # a plain checkpoint: the base model alone
        return record.config()(**common, architectures=[record.model_class])
    return record.config()(
        **common,
        num_labels=len(VAD_LABELS),
        id2label={str(i): label for i, label in enumerate(VAD_LABELS)},
        label2id={label: i for i, label in enumerate(VAD_LABELS)},
        final_dropout=0.1,
        architectures=["Wav2Vec2ForSpeechClassification"],
    )


def write_random_backbone(
    folder: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    norm: str | None = None,
    family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a seeded random checkpoint (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``): for ``family`` wav2vec2 in the real checkpoint's
    layout (with the VAD head), for hubert and wavlm as transformers saves a plain
    ``HubertModel`` / ``WavLMModel``.

    The same size, norm, family and seed always give the same weights, hence the same
    fingerprint. ``config.json`` says the weights are random (``emi_random_weights``, a
    key left out of the config's hash): heads trained on it are flagged as such.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = random_config(size, norm=norm, family=family)
    torch.manual_seed(seed)
    model = EmotionBackbone(config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.classifier is not None:
        # A random head on tanh features gives tiny outputs; widen it so VAD varies.
        state["classifier.out_proj.weight"] = state["classifier.out_proj.weight"] * 4.0
    else:  # a plain checkpoint: the base model's keys without its prefix
        state = {k.removeprefix(f"{family}."): v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    apply_umask(folder / "model.safetensors")  # safetensors writes 0600
    # marked (not hashed): what is made from it measures the pipeline, not emotion
    setattr(config, RANDOM_MARK, {"size": size, "seed": seed})
    config.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "feature_size": 1,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": config.feat_extract_norm == "layer",
                "sampling_rate": 16000,
            },
            indent=2,
        )
    )
    return folder
