"""The backbone families emi runs, one record each (as torchaudio's bundles are): the
``model_type`` of their ``config.json`` (also their weights' key prefix), their
transformers config and model classes, and whether a checkpoint of the family may carry
the VAD head (the audeering layout). Adding a family is one record here.

The transformers classes are named, not imported: identifying a checkpoint needs only
its config class, and the modelling code costs about 1.3 s of imports."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneFamily:
    """One family of speech backbones.

    Attributes:
        name: ``config.json``'s ``model_type``, and the prefix of the base model's keys.
        title: how the docs and messages name it.
        config_class: the transformers config class (a name in ``transformers``).
        model_class: the transformers base model class; also the ``architectures`` of a
            plain checkpoint of the family.
        vad_head: whether its checkpoints may carry the VAD head (the audeering layout:
            a classification config with 3 labels).
        optional_keys: weights a checkpoint may omit (used only for SpecAugment in
            training), under the family's prefix.
    """

    name: str
    title: str
    config_class: str
    model_class: str
    vad_head: bool = False
    optional_keys: tuple[str, ...] = ("masked_spec_embed",)

    def config(self) -> type:
        """The transformers config class."""
        return getattr(importlib.import_module("transformers"), self.config_class)

    def model(self) -> type:
        """The transformers base model class (imports the modelling code)."""
        return getattr(importlib.import_module("transformers"), self.model_class)

    @property
    def prefixed_optional_keys(self) -> set[str]:
        return {f"{self.name}.{key}" for key in self.optional_keys}


WAV2VEC2 = BackboneFamily(
    "wav2vec2", "wav2vec 2.0", "Wav2Vec2Config", "Wav2Vec2Model", vad_head=True
)
HUBERT = BackboneFamily("hubert", "HuBERT", "HubertConfig", "HubertModel")
WAVLM = BackboneFamily("wavlm", "WavLM", "WavLMConfig", "WavLMModel")
FAMILIES: dict[str, BackboneFamily] = {f.name: f for f in (WAV2VEC2, HUBERT, WAVLM)}
DEFAULT_FAMILY = WAV2VEC2.name  # a config.json without model_type


def family_names() -> str:
    """The families, as a message lists them."""
    return ", ".join(FAMILIES)
