"""A trained head on disk: a folder of JSON and safetensors, never pickle.

::

    heads/paper/
      config.json          head type and sizes, targets, training settings, the store's
                           fingerprint and spec, best epoch and its validation score
      model.safetensors    the best epoch's weights
      metrics.json         per epoch: train loss; validation Pearson, CCC, MSE per target
      learning_curves.png  train loss and validation mean Pearson per epoch
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.errors import HeadError
from models.heads import HeadConfig, build_head

HEAD_FORMAT_VERSION = 1


@dataclass
class LoadedHead:
    name: str
    folder: Path
    model: nn.Module
    config: dict  # the whole config.json

    @property
    def targets(self) -> list[str]:
        return list(self.config["targets"])

    @property
    def fingerprint(self) -> str:
        return self.config["store"]["fingerprint"]

    @property
    def max_frames(self) -> int | None:
        return self.config["training"].get("max_frames")


def save_head(folder: str | Path, model: nn.Module, config: dict, metrics: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"format_version": HEAD_FORMAT_VERSION, **config}, indent=2)
    )
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return folder


def load_head(folder: str | Path, *, device: str = "cpu") -> LoadedHead:
    """Load a head folder (config.json + model.safetensors); runs no stored code.

    Raises:
        HeadError: missing files or a config this version cannot read.
    """
    folder = Path(folder)
    config_file, weights = folder / "config.json", folder / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise HeadError(f"{folder}: not a head folder (needs config.json and model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
        head_config = HeadConfig.from_dict(config["head"])
        config["store"]["fingerprint"]  # noqa: B018  (must exist)
    except (ValueError, KeyError, TypeError) as err:
        raise HeadError(f"{config_file}: malformed head config ({err})") from err
    model = build_head(head_config)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        raise HeadError(f"{weights}: weights do not fit the config ({err})") from err
    model.eval().to(device)
    return LoadedHead(
        name=config.get("name") or folder.name, folder=folder, model=model, config=config
    )


def check_fingerprint(head: LoadedHead, store_fingerprint: str, store_location: str) -> None:
    """Refuse a head trained on features with another fingerprint."""
    if head.fingerprint != store_fingerprint:
        trained = head.config["store"].get("location", "?")
        raise HeadError(
            f"head {head.name!r} ({head.folder}) was trained on features with fingerprint "
            f"{head.fingerprint[:12]} (store {trained}); store {store_location} has "
            f"{store_fingerprint[:12]}. Extract with the head's backbone and settings "
            "(see its config.json 'store.spec'), or train a head on this store."
        )


def torch_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
