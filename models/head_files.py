"""A trained head on disk: a folder of JSON and safetensors, never pickle.

```text
heads/paper/
  config.json          head type and sizes, targets, training settings, the store's
                       fingerprint and spec, best epoch and its validation score,
                       the sha256 of model.safetensors (checked on load)
  model.safetensors    the best epoch's weights (and a standardized head's input
                       statistics)
  metrics.json         per epoch: train loss; validation Pearson, CCC, MSE per target
  learning_curves.png  train loss and validation mean Pearson per epoch
                       (mean-linear: ridge_penalty.png, the penalty search)
```
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from featurestore.records import FieldAccess
from featurestore.spec import FeatureSpec
from models.errors import HeadError
from models.heads import HeadConfig, build_head

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

HEAD_FORMAT_VERSION = 2  # 2: the card records card_sha256 (models.card_rules)


@dataclass(frozen=True)
class StoreRef(FieldAccess):
    """The features a head was trained on: the store's fingerprint, where it was, and
    the spec (so ``emi score`` can make the same features)."""

    fingerprint: str
    location: str
    spec: FeatureSpec | None  # None: a card written without it (then score cannot extract)
    feature_set: str | None = None  # the set's name in that store (None: not recorded)

    def to_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "location": self.location,
            "spec": None if self.spec is None else self.spec.to_dict(),
            "feature_set": self.feature_set,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StoreRef:
        spec = data.get("spec")
        return cls(
            fingerprint=str(data["fingerprint"]),
            location=str(data.get("location", "?")),
            spec=None if spec is None else FeatureSpec.from_dict(spec),
            feature_set=data.get("feature_set"),
        )


@dataclass(frozen=True)
class HeadCard(FieldAccess):
    """A head's ``config.json``: what it is, what it was trained on, how, and how well.

    ``training`` holds the settings that ran (:class:`models.options.TrainSettings`
    fields) and facts of the run (clips, device, host).
    """

    name: str
    preset: str
    head: HeadConfig
    parameters: int
    targets: tuple[str, ...]
    training: dict
    store: StoreRef
    best_epoch: int
    best_val_pearson_mean: float
    weights_sha256: str | None = None
    format_version: int = HEAD_FORMAT_VERSION
    joined: tuple[StoreRef, ...] = ()  # further feature sets joined per frame to store's
    # of the card's own JSON (format 2): to_dict writes it, from_dict checks it
    card_sha256: str | None = field(default=None, compare=False)

    @property
    def feature_refs(self) -> tuple[StoreRef, ...]:
        """Every feature set the head reads, in the order its input joins them."""
        return (self.store, *self.joined)

    def to_dict(self) -> dict:
        data = {
            "format_version": self.format_version,
            "name": self.name,
            "preset": self.preset,
            "head": self.head.to_dict(),
            "parameters": self.parameters,
            "targets": list(self.targets),
            "training": dict(self.training),
            "store": self.store.to_dict(),
            "best_epoch": self.best_epoch,
            "best_val_pearson_mean": self.best_val_pearson_mean,
            "weights_sha256": self.weights_sha256,
            "joined": [ref.to_dict() for ref in self.joined],
        }
        if self.format_version >= 2:
            from models.card_rules import card_digest

            data["card_sha256"] = card_digest(data)
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "head config.json") -> HeadCard:
        """A card from its JSON form, checked against the card's rules
        (:func:`models.card_rules.check_card`).

        Raises:
            HeadError: a field that breaks its rule, or (format 2) an edited card.
        """
        from models.card_rules import check_card

        check_card(data, where)
        return cls(
            name=str(data.get("name", "")),
            preset=str(data.get("preset", "")),
            head=HeadConfig.from_dict(data["head"]),
            parameters=int(data.get("parameters", 0)),
            targets=tuple(data["targets"]),
            training=dict(data.get("training", {})),
            store=StoreRef.from_dict(data["store"]),
            best_epoch=int(data.get("best_epoch", 0)),
            best_val_pearson_mean=float(data.get("best_val_pearson_mean", float("nan"))),
            weights_sha256=data.get("weights_sha256"),
            format_version=int(data.get("format_version", HEAD_FORMAT_VERSION)),
            joined=tuple(StoreRef.from_dict(ref) for ref in data.get("joined", [])),
            card_sha256=data.get("card_sha256"),
        )


@dataclass
class LoadedHead:
    name: str
    folder: Path
    model: nn.Module
    config: HeadCard  # the head's config.json

    @property
    def targets(self) -> list[str]:
        return list(self.config.targets)

    @property
    def fingerprint(self) -> str:
        return self.config.store.fingerprint

    @property
    def spec(self) -> FeatureSpec:
        if self.config.store.spec is None:
            raise HeadError(f"{self.folder}: its config.json records no feature spec")
        return self.config.store.spec

    @property
    def max_frames(self) -> int | None:
        return self.config.training.get("max_frames")


def check_head_destination(folder: str | Path, *, overwrite: bool = False) -> None:
    """Refuse to write a head where something that is not a head folder exists, or
    over an existing head unless ``overwrite``.

    Raises:
        HeadError: ``folder`` is a file, a non-empty folder without a head's files, or
            (without ``overwrite``) a head folder.
    """
    folder = Path(folder)
    if (folder / "config.json").is_file() and not overwrite:
        raise HeadError(
            f"{folder} already holds a head; pass --overwrite (overwrite=True) to replace "
            "it, or choose another folder. Nothing was changed."
        )
    if folder.is_file():
        raise HeadError(f"{folder} is a file; give a folder path for the head")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise HeadError(
            f"{folder} is a folder that is not a head folder (no config.json); emi writes "
            "a head only into a new or empty folder or over another head. Nothing was changed."
        )


def save_head(
    folder: str | Path,
    model: nn.Module,
    config: HeadCard | dict,
    metrics: dict,
    *,
    extra_files=None,
    overwrite: bool = False,
) -> Path:
    """Write a head folder whole or not at all (a temporary sibling, then a rename).

    ``extra_files(folder)`` may add files (the plots) before the folder is moved into
    place. config.json records the sha256 of model.safetensors.
    """
    from manifests.atomic import atomic_folder
    from models.card_rules import card_digest, check_card

    folder = Path(folder)
    check_head_destination(folder, overwrite=overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_folder(folder) as temporary:
        weights = temporary / "model.safetensors"
        save_file(state, str(weights))
        card = {
            **(config.to_dict() if isinstance(config, HeadCard) else config),
            "format_version": HEAD_FORMAT_VERSION,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
        card.pop("card_sha256", None)
        card.setdefault("joined", [])
        card["card_sha256"] = card_digest(card)
        check_card(card, str(folder / "config.json"))  # a card this emi cannot read is a bug
        (temporary / "config.json").write_text(json.dumps(card, indent=2))
        (temporary / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if extra_files is not None:
            extra_files(temporary)
    return folder


def _not_a_head(folder: Path) -> str:
    """Why ``folder`` is not a head; a folder of heads (or of grids of heads) names the
    heads inside."""
    words = f"{folder}: not a head folder (needs config.json and model.safetensors)"
    cards = [*folder.glob("*/config.json"), *folder.glob("*/*/config.json")]
    names = sorted(
        str(card.parent.relative_to(folder))
        for card in cards
        if (card.parent / "model.safetensors").is_file()
        and not any(part.startswith(".") for part in card.parent.relative_to(folder).parts)
    )
    if not names:
        return words
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (
        f"{folder}: a folder of heads ({shown}), not a head; give one of them, e.g. "
        f"--head {folder / names[0]} (emi heads compare {folder} shows how good each is)"
    )


def load_head(folder: str | Path, *, device: str = "cpu") -> LoadedHead:
    """Load a head folder (config.json + model.safetensors); runs no stored code.

    Raises:
        HeadError: missing files, a config this version cannot read, weights that are
            not the ones the config records, unreadable or non-finite weights.
    """
    folder = Path(folder)
    config_file, weights = folder / "config.json", folder / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise HeadError(_not_a_head(Path(folder)))
    try:
        data = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise HeadError(f"{config_file}: not JSON ({err}); restore it or retrain the head") from err
    config = HeadCard.from_dict(data, str(config_file))
    raw = weights.read_bytes()
    recorded = config.weights_sha256
    if recorded is None:
        raise HeadError(f"{config_file}: records no weights_sha256; retrain the head")
    if hashlib.sha256(raw).hexdigest() != recorded:
        raise HeadError(
            f"{weights}: these are not the weights {config_file.name} was saved with "
            "(sha256 differs: replaced, damaged or half-written); retrain or restore the head"
        )
    model = build_head(config.head)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except (RuntimeError, SafetensorError) as err:
        raise HeadError(f"{weights}: weights do not fit the config ({err})") from err
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise HeadError(f"{weights}: the head's weights hold NaN or inf; retrain it")
    model.eval().to(device)
    return LoadedHead(name=config.name or folder.name, folder=folder, model=model, config=config)


def sets_for_head(store: FeatureStore, head: LoadedHead) -> list[FeatureStore]:
    """The feature sets of ``store`` that hold ``head``'s features (by fingerprint), in
    the order the head joins them.

    Raises:
        HeadError: no set of the store has them (the message names the set the head
            needs and the store's sets with their fingerprints).
    """
    found = []
    for ref in head.config.feature_refs:
        held = store.set_for_fingerprint(ref.fingerprint)
        if held is None:
            sets = ", ".join(
                f"{name} ({store.with_set(name).fingerprint[:12]})" for name in store.feature_sets
            )
            wanted = ref.feature_set
            raise HeadError(
                f"head {head.name!r} ({head.folder}) needs feature set "
                f"{wanted or '(unnamed)'!r} with fingerprint {ref.fingerprint[:12]} (trained "
                f"on store {ref.location}); store {store.location} has no set with those "
                f"features (its sets: {sets}). Extract them with `emi extract ... "
                f"--feature-set {wanted or 'NAME'}` using the head's backbone and settings "
                "(its config.json 'store.spec'), or train a head on this store."
            )
        found.append(held)
    return found
