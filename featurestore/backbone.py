"""Loading a speech backbone: the audeering emotion checkpoint's layout (wav2vec 2.0
with a VAD head), or a plain transformers wav2vec 2.0, HuBERT or WavLM checkpoint
(hidden states only, no VAD head).

The checkpoint layout (``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``):

    config.json                     a Wav2Vec2Config with num_labels=3
    model.safetensors | pytorch_model.bin
        wav2vec2.*                  a transformers Wav2Vec2Model
        classifier.dense            Linear(hidden, hidden), then tanh
        classifier.out_proj         Linear(hidden, 3): arousal, dominance, valence

Plain checkpoints (``config.json`` with ``model_type`` wav2vec2, hubert or wavlm) hold the
base model's weights with or without its prefix (``hubert.encoder...`` or
``encoder...``); other heads in them (CTC, quantizer) are ignored. A checkpoint has the
VAD head where its config is a wav2vec2 one with 3 labels whose ``architectures`` name a
classification model (or name none).

Loading never runs pickled code (safetensors, or ``torch.load(weights_only=True)``) and
never uses ``trust_remote_code``. The backbone's fingerprint is a sha256 over its weights
(names, dtypes, shapes, bytes, in name order) and its config, so the same weights give
the same fingerprint whatever the file format or folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

from featurestore.errors import BackboneError
from featurestore.families import DEFAULT_FAMILY, FAMILIES, family_names
from featurestore.options import RANDOM_MARK, user_cache_dir

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Config keys that describe the software that wrote the file, not the model.
# RANDOM_MARK: a random stand-in's mark (featurestore.random_backbone), descriptive
# only: a random checkpoint's fingerprint is what it was before it was marked
_CONFIG_KEYS_NOT_HASHED = {"transformers_version", "_name_or_path", "architectures", RANDOM_MARK}
# Used only for SpecAugment in training; checkpoints may omit it.
_OPTIONAL_KEYS = set().union(*(f.prefixed_optional_keys for f in FAMILIES.values()))
# The base model's modules: keys starting with these are the base model's, unprefixed.
_BASE_MODULES = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed")


ATTENTIONS = ("auto", "sdpa", "eager")


def attention_for(model_class: type[nn.Module], requested: str = "auto") -> str:
    """The attention a backbone runs with: PyTorch's fused scaled-dot-product attention
    (``sdpa``) where the family's transformers code has it (wav2vec 2.0 and HuBERT),
    else the family's own (``eager``: WavLM, whose relative position bias has no fused
    form). Both give the same features within float16 storage error (a test checks), so
    the choice is not part of a store's fingerprint. ``EMI_ATTENTION=eager`` forces the
    plain form (to compare, or to rule the fused kernels out).

    Raises:
        BackboneError: ``sdpa`` asked for a family without it, or an unknown name.
    """
    requested = os.environ.get("EMI_ATTENTION", "") or requested
    if requested not in ATTENTIONS:
        raise BackboneError(f"attention {requested!r}: choose one of {', '.join(ATTENTIONS)}")
    fused = bool(getattr(model_class, "_supports_sdpa", False))
    if requested == "sdpa" and not fused:
        raise BackboneError(f"{model_class.__name__} has no sdpa attention in transformers")
    if requested == "auto":
        return "sdpa" if fused else "eager"
    return requested


def has_vad_head(config: PretrainedConfig) -> bool:
    """Whether a checkpoint of ``config`` carries the VAD head (the audeering layout):
    a wav2vec2 config with 3 labels whose ``architectures`` name a classification model
    (or name none)."""
    architectures = getattr(config, "architectures", None) or ["ForSpeechClassification"]
    return (
        FAMILIES[config.model_type].vad_head
        and config.num_labels == 3
        and any("Classification" in a for a in architectures)
    )


class RegressionHead(nn.Module):
    """The checkpoint's VAD head: dropout, dense, tanh, dropout, out_proj.

    Args:
        hidden_size: input width (the backbone's ``hidden_size``).
        num_labels: outputs (3: arousal, dominance, valence).
        dropout: ``final_dropout`` of the config (inactive in eval mode).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., hidden)`` -> ``(..., num_labels)``."""
        x = self.dropout(hidden)
        x = torch.tanh(self.dense(x))
        x = self.dropout(x)
        return self.out_proj(x)


class EmotionBackbone(nn.Module):
    """The base model under its family's name (``wav2vec2``, ``hubert`` or ``wavlm``) and,
    in the audeering layout, ``classifier`` (the VAD head; None without one)."""

    def __init__(self, config: PretrainedConfig, *, attention: str = "auto") -> None:
        super().__init__()
        model_class = FAMILIES[config.model_type].model()
        self.attention = attention_for(model_class, attention)
        config = copy.deepcopy(config)  # the identity's config stays as read
        config._attn_implementation = self.attention
        self.config = config
        self.family = config.model_type
        self.add_module(self.family, model_class(config))
        self.classifier = (
            RegressionHead(config.hidden_size, config.num_labels, config.final_dropout)
            if has_vad_head(config)
            else None
        )

    @property
    def speech_model(self) -> nn.Module:
        """The base model (a transformers ``Wav2Vec2Model``, ``HubertModel`` or
        ``WavLMModel``)."""
        return getattr(self, self.family)

    @property
    def uses_layer_norm(self) -> bool:
        """True for layer-norm feature encoders (padding with a mask is exact)."""
        return self.config.feat_extract_norm == "layer"

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        layers: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list]:
        """Run the backbone.

        Args:
            input_values: normalised 16 kHz audio, ``(batch, samples)``.
            attention_mask: ``(batch, samples)``, 1 for real samples; required for
                padded batches of layer-norm backbones.
            layers: other layers to return besides the last (``hidden_states[k]`` as
                transformers numbers them: 0 is the feature projection's output).

        Returns:
            ``hidden`` ``(batch, frames, hidden)`` (last layer) and ``frame_vad``
            ``(batch, frames, 3)`` (the head applied to every frame; ``(batch, frames,
            0)`` without a VAD head); with ``layers`` also the list of those layers'
            ``(batch, frames, hidden)`` states.
        """
        out = self.speech_model(
            input_values, attention_mask=attention_mask, output_hidden_states=bool(layers)
        )
        hidden = out.last_hidden_state
        frame_vad = hidden[..., :0] if self.classifier is None else self.classifier(hidden)
        if not layers:
            return hidden, frame_vad
        return hidden, frame_vad, [out.hidden_states[k] for k in layers]

    def frames_for_samples(self, samples: int) -> int:
        """Frames the conv encoder yields for ``samples`` input samples (0 if too short)."""
        n = int(self.speech_model._get_feat_extract_output_lengths(torch.tensor(samples)))
        return max(n, 0)


@dataclass(frozen=True)
class BackboneIdentity:
    """What identifies a backbone: where it came from and hashes of what it is."""

    ref: str  # what the user gave: a folder or a hub id
    revision: str | None  # hub commit, None for a local folder
    weights_sha256: str
    config_sha256: str
    config: PretrainedConfig

    @property
    def checkpoint_hash(self) -> str:
        """sha256 over the weights' and the config's hashes: which checkpoint this is.
        (A store's *fingerprint* is another hash: of the whole feature spec.)"""
        return hashlib.sha256(f"{self.weights_sha256}:{self.config_sha256}".encode()).hexdigest()

    @property
    def has_vad_head(self) -> bool:
        """Whether the checkpoint carries the VAD head (:func:`has_vad_head`)."""
        return has_vad_head(self.config)

    @property
    def fingerprint(self) -> str:
        """The old name of :attr:`checkpoint_hash`."""
        return self.checkpoint_hash


@dataclass(frozen=True)
class LoadedBackbone:
    """A backbone ready to run, with its identity."""

    model: EmotionBackbone
    identity: BackboneIdentity


def resolve_checkpoint(ref: str, *, revision: str | None = None) -> tuple[Path, str | None]:
    """Find the checkpoint folder for ``ref``: a local folder, else a hub id.

    Returns:
        The folder and the hub revision it came from (None for a local folder).

    Raises:
        BackboneError: neither a folder nor a hub id that can be fetched.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise BackboneError(
            f"model {ref!r} is a file; give the checkpoint folder instead", option="model"
        )
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise BackboneError(
            f"model {ref!r}: no such folder, and not a hub id of the form 'owner/name'",
            option="model",
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            ref,
            revision=revision,
            allow_patterns=[CONFIG_FILE, "preprocessor_config.json", *WEIGHT_FILES],
        )
    except Exception as err:  # network, auth, offline mode without a cached copy
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set and no cached copy exists"
            if offline
            else "check the name and your network"
        )
        raise BackboneError(
            f"cannot fetch backbone {ref!r} from the hub ({hint}): {str(err).rstrip('. ')}. "
            "Download it once, or pass a local checkpoint folder with --model."
        ) from err
    folder_path = Path(folder)
    return folder_path, folder_path.name


def read_config(folder: Path) -> tuple[PretrainedConfig, dict]:
    """Read ``config.json``; returns the config and the raw dict it came from."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise BackboneError(
            f"{folder}: no {CONFIG_FILE}; is this a wav2vec 2.0, HuBERT or WavLM checkpoint?"
        )
    try:
        raw = json.loads(file.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise BackboneError(f"{file}: unreadable config ({err}); restore the checkpoint") from err
    family = raw.get("model_type", DEFAULT_FAMILY)
    if family not in FAMILIES:
        raise BackboneError(f"{file}: model_type {family!r}; emi runs {family_names()} checkpoints")
    try:
        config = FAMILIES[family].config().from_dict(raw)
    except (ValueError, TypeError, KeyError) as err:
        raise BackboneError(f"{file}: not a valid {family} config ({err})") from err
    classifies = any("Classification" in a for a in raw.get("architectures") or [])
    if FAMILIES[family].vad_head and classifies and config.num_labels != 3:
        raise BackboneError(
            f"{file}: num_labels={config.num_labels}; an emotion backbone has a 3-output "
            "(arousal, dominance, valence) regression head"
        )
    return config, raw


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Read the state dict without running pickled code."""
    safetensors_file = folder / WEIGHT_FILES[0]
    bin_file = folder / WEIGHT_FILES[1]
    if safetensors_file.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(safetensors_file))
        except (SafetensorError, OSError, ValueError) as err:
            raise BackboneError(
                f"{safetensors_file}: unreadable weights ({err}); the file is damaged or "
                "incomplete, download or copy it again"
            ) from err
    if bin_file.is_file():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise BackboneError(
                f"{bin_file}: not a plain tensor state dict ({err}); emi never loads "
                "pickled code. Convert it to model.safetensors."
            ) from err
        return dict(state)
    raise BackboneError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def normalise_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map old weight-norm key names to the parametrization form transformers uses now.

    ``...conv.weight_g`` -> ``...conv.parametrizations.weight.original0`` and
    ``...conv.weight_v`` -> ``...conv.parametrizations.weight.original1``.
    """
    out = {}
    for key, tensor in state.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = tensor
    return out


def hash_state_dict(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def hash_config(raw: dict) -> str:
    kept = {k: v for k, v in raw.items() if k not in _CONFIG_KEYS_NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _used_weights(state: dict[str, torch.Tensor], config: PretrainedConfig) -> dict:
    """The base model's keys under its family's prefix (given unprefixed in plain
    checkpoints) and, with a VAD head, ``classifier.*``; others (a CTC head, a
    quantizer) are ignored."""
    family = config.model_type
    kept = ("classifier.",) if has_vad_head(config) else ()
    used = {}
    for key, tensor in normalise_state_dict(state).items():
        if key.startswith(_BASE_MODULES):
            key = f"{family}.{key}"
        if key.startswith((f"{family}.", *kept)) and key not in _OPTIONAL_KEYS:
            used[key] = tensor
    return used


_WEIGHTS_HASHES: dict[str, str] = {}  # file key -> digest (cached or computed)
_COMPUTED_HASHES: dict[str, str] = {}  # file key -> digest of weights read here
WEIGHTS_HASH_CACHE = "weights-sha256.json"  # under the user cache (``EMI_CACHE``)


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise BackboneError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


HASH_SCHEME = "sha256-names-dtypes-shapes-bytes-v1"  # in the cache key: a new scheme
# never reads an old one's digests


def _file_key(file: Path) -> str:
    """What identifies a weight file's version without reading it: resolved path, size,
    modification time (ns), device and inode (and the hashing scheme). Any change gives
    a new key."""
    stat = file.stat()
    return (
        f"{HASH_SCHEME}|{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|"
        f"{stat.st_dev}|{stat.st_ino}"
    )


def _hash_cache_file() -> Path:
    return user_cache_dir() / WEIGHTS_HASH_CACHE


def _read_hash_cache() -> dict[str, str]:
    try:
        cached = json.loads(_hash_cache_file().read_text())
    except (OSError, ValueError):  # none yet, unreadable or damaged: recompute
        return {}
    return cached if isinstance(cached, dict) else {}


def _remember_hash(key: str, digest: str) -> None:
    """Add to the on-disk cache (atomic replace; a cache that cannot be written is
    skipped: it only saves time)."""
    file = _hash_cache_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        entries = {k: v for k, v in _read_hash_cache().items() if isinstance(v, str)}
        entries.pop(key, None)
        entries[key] = digest
        if len(entries) > 256:  # keep the newest entries
            entries = dict(list(entries.items())[-256:])
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
        with os.fdopen(handle, "w") as out:
            json.dump(entries, out, indent=1)
        os.replace(temporary, file)
    except OSError:
        pass


def cached_weights_hash(folder: Path) -> str | None:
    """The weights' sha256 remembered for this exact weight file, or None."""
    key = _file_key(_weights_file(folder))
    if key not in _WEIGHTS_HASHES:
        digest = _read_hash_cache().get(key)
        if not isinstance(digest, str) or len(digest) != 64:
            return None
        _WEIGHTS_HASHES[key] = digest
    return _WEIGHTS_HASHES[key]


def _weights_hash(folder: Path, state: dict[str, torch.Tensor]) -> str:
    """Hash weights that are in memory (once per process and file version), and
    remember the digest for later runs that only identify the checkpoint.

    Weights that were read are always hashed, never taken from the disk cache: if a file
    was replaced keeping its path, size, mtime and inode (``cp -p`` over it, a coarse
    clock), the worker that loads it computes the true fingerprint and the run stops
    with a fingerprint mismatch instead of storing features under the old one; the
    cache then holds the new digest.
    """
    key = _file_key(_weights_file(folder))
    if key not in _COMPUTED_HASHES:
        digest = hash_state_dict(state)
        _COMPUTED_HASHES[key] = _WEIGHTS_HASHES[key] = digest
        if _read_hash_cache().get(key) != digest:
            _remember_hash(key, digest)
    return _COMPUTED_HASHES[key]


def _read_checkpoint(
    ref: str, revision: str | None, *, weights: bool = True
) -> tuple[BackboneIdentity, dict[str, torch.Tensor] | None, Path]:
    """The identity of a checkpoint, and its used weights (``weights``, or when their
    hash is not cached)."""
    folder, resolved_revision = resolve_checkpoint(ref, revision=revision)
    config, raw = read_config(folder)
    digest = None if weights else cached_weights_hash(folder)
    state = _used_weights(read_weights(folder), config) if digest is None else None
    identity = BackboneIdentity(
        ref=local_ref(ref),
        revision=resolved_revision,
        weights_sha256=digest or _weights_hash(folder, state),
        config_sha256=hash_config(raw),
        config=config,
    )
    return identity, state, folder


def _materialise_optional(model: nn.Module) -> None:
    """Give optional tensors the checkpoint lacked real (zero) storage."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        value = torch.zeros(tensor.shape, dtype=tensor.dtype)
        if isinstance(tensor, nn.Parameter):
            value = nn.Parameter(value, requires_grad=tensor.requires_grad)
        setattr(owner, attr, value)


def local_ref(ref: str) -> str:
    """A checkpoint folder as an absolute path (so a store or head records where it is
    from any working directory); hub ids unchanged."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else ref


def identify_backbone(ref: str, *, revision: str | None = None) -> BackboneIdentity:
    """Hash a checkpoint's weights and config without building the model (the weights
    are not even read when their hash is cached for this exact file)."""
    return _read_checkpoint(ref, revision, weights=False)[0]


def load_backbone(
    ref: str, *, device: str = "cpu", revision: str | None = None, attention: str = "auto"
) -> LoadedBackbone:
    """Load a backbone from a folder or hub id, in eval mode on ``device``.

    Args:
        ref: checkpoint folder, or hub id such as
            ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``.
        device: torch device string.
        revision: hub revision (branch, tag or commit); ignored for folders.
        attention: ``auto``, ``sdpa`` or ``eager`` (:func:`attention_for`).

    Raises:
        BackboneError: missing files, wrong layout, missing weights.
    """
    identity, state, folder = _read_checkpoint(ref, revision)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = EmotionBackbone(identity.config, attention=attention)
    missing = sorted(set(model.state_dict()) - set(state) - _OPTIONAL_KEYS)
    if missing:
        layout = f"{model.family}{' + classifier' if model.classifier is not None else ''}"
        raise BackboneError(
            f"{folder}: weights lack {len(missing)} keys of the {layout} layout, e.g. {missing[:5]}"
        )
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise BackboneError(
            f"{folder}: weights have {len(unexpected)} keys this {model.family} config does not "
            f"define, e.g. {unexpected[:5]}; does config.json match the weights?"
        )
    model.load_state_dict(state, strict=False, assign=True)
    _materialise_optional(model)
    if model.frames_for_samples(16_000) != 49 or model.frames_for_samples(400) != 1:
        raise BackboneError(
            f"{folder}: conv feature encoder is not 400-sample window / 320-sample hop "
            "(50 frames per second at 16 kHz); emi's frame layout needs that stack"
        )
    model.eval().to(device)
    return LoadedBackbone(model=model, identity=identity)
