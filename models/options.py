"""The rules for training options, shared by the CLI's options and grid files.

Torch-free, so the CLI can build its options from it without importing torch. A grid
file's value passes exactly when the same value typed on the command line would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import click

from models.errors import SettingsError

DEFAULT_PRESET = "compact"
DEFAULT_CACHE_GB = 4.0  # memory for cached sequences (emi train --cache-gb)
SIZE_KEYS = ("lstm_hidden", "lstm_layers", "mlp_hidden", "dropout")
FRAMES_PER_SECOND = 50  # the store's frame rate (featurestore.audio.FRAMES_PER_SECOND)


# The paper's recipe, exactly (docs/heads.md): AdamW lr 1e-4 (weight decay 0.01, AdamW's
# default), linear warm-up for one epoch then cosine decay, 30 epochs, batch 32, clipping
# by value at 100, the best epoch by validation mean Pearson, raw inputs.
PAPER_RECIPE = {
    "epochs": 30,
    "batch_size": 32,
    "lr": 1e-4,
    "weight_decay": 0.01,
    "warmup_epochs": 1.0,
    "clip_value": 100.0,
    "standardize": False,
    "patience": 0,
}
# emi's recipe, chosen by measurement (bench/heads_quality.py, docs/heads.md): the
# same schedule on standardized inputs at a higher rate, stopping once validation mean
# Pearson has not improved for `patience` epochs.
EMI_RECIPE = {**PAPER_RECIPE, "lr": 1e-3, "standardize": True, "patience": 10}


@dataclass(frozen=True)
class Preset:
    """A named head: its type (:data:`models.heads.HEAD_TYPES`), its sizes for an input
    of a given width, and the recipe it is trained by. Adding a preset is one record
    in :data:`PRESET_RECORDS`; the CLI's ``--preset``, the grid's rules and the API
    read the names from there.

    Attributes:
        name: ``--preset``'s value.
        head_type: the architecture.
        recipe: the training recipe (:class:`TrainSettings`' fields it sets).
        sizes: the sizes (``lstm_hidden``, ``lstm_layers``, ``mlp_hidden``) for an
            input of that many features per frame.
    """

    name: str
    head_type: str
    recipe: dict
    sizes: Callable[[int], dict]
    summary: str = ""  # in a line, for people choosing a head (the service's page)


def _paper_sizes(width: int) -> dict:
    """The paper's architecture: an LSTM as wide as its input, two layers."""
    return {"lstm_hidden": width, "lstm_layers": 2, "mlp_hidden": 2 * width}


PRESET_RECORDS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "compact",
            "fusion",
            EMI_RECIPE,
            lambda width: {"lstm_hidden": 256, "lstm_layers": 1, "mlp_hidden": 256},
            "a small LSTM reading the clip frame by frame, beside its average (emi's default)",
        ),
        Preset(
            "fusion",
            "fusion",
            EMI_RECIPE,
            _paper_sizes,
            "the paper's LSTM fusion head, trained by emi's recipe",
        ),
        Preset(
            "paper",
            "fusion",
            PAPER_RECIPE,
            _paper_sizes,
            "the paper's LSTM fusion head and its training recipe, exactly",
        ),
        # closed form: of the recipe, only standardize counts
        Preset(
            "mean-linear",
            "mean-linear",
            {**PAPER_RECIPE, "standardize": True},
            lambda width: {},
            "a straight line (ridge regression) from the clip's average features: the baseline",
        ),
    )
}
PRESETS = tuple(PRESET_RECORDS)
RECIPES = {name: preset.recipe for name, preset in PRESET_RECORDS.items()}
RECIPE_KEYS = tuple(PAPER_RECIPE)


@dataclass(frozen=True)
class TrainSettings:
    """How a head is trained. A recipe field left None takes the preset's value
    (:data:`RECIPES`, :meth:`for_preset`); a value given overrides it."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    clip_value: float | None = None
    standardize: bool | None = None  # inputs scaled per dimension (models.input_scale)
    patience: int | None = None  # stop after this many epochs without improvement; 0: never
    seed: int = 1
    max_seconds: float | None = None  # crop sequences (the paper: 12)
    mixed_precision: bool = True  # on a GPU only

    def __post_init__(self) -> None:
        """Every field by the rule of its CLI option (:data:`SETTING_RULES`).

        Raises:
            SettingsError: naming the field, its value and the rule.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in RECIPE_KEYS:
                continue
            object.__setattr__(self, f.name, check_setting(f.name, value))

    def for_preset(self, preset: str) -> TrainSettings:
        """These settings with every unset recipe field taken from ``preset``'s recipe."""
        recipe = RECIPES.get(preset)
        if recipe is None:
            raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        unset = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        return replace(self, **unset) if unset else self

    def overrides(self, preset: str) -> dict:
        """The recipe fields whose values differ from ``preset``'s recipe."""
        return {
            k: getattr(self, k)
            for k, v in RECIPES[preset].items()
            if getattr(self, k) is not None and getattr(self, k) != v
        }

    @property
    def max_frames(self) -> int | None:
        if self.max_seconds is None:
            return None
        return max(1, int(round(self.max_seconds * FRAMES_PER_SECOND)))


@dataclass(frozen=True)
class NumberRule:
    """An int or a float within bounds (``low_open``: the bound itself is excluded)."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def click_type(self) -> click.ParamType:
        if self.low is None and self.high is None:
            return click.INT if self.kind is int else click.FLOAT
        ranged = click.IntRange if self.kind is int else click.FloatRange
        extra = {} if self.kind is int else {"min_open": self.low_open}
        return ranged(min=self.low, max=self.high, **extra)

    def check(self, key: str, value):
        """The value as ``kind``; raises SettingsError naming ``key`` and the rule."""
        ok_type = isinstance(value, int) if self.kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            raise SettingsError(f"{key}: {value!r} is not {self.describe()}")
        value = self.kind(value)
        if self.kind is float and not math.isfinite(value):
            raise SettingsError(f"{key}: {value!r} is not {self.describe()}")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if below or (self.high is not None and value > self.high):
            raise SettingsError(f"{key}: {value!r} is not {self.describe()}")
        return value

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low}"
        return what


SIZE_RULES = {
    "lstm_hidden": NumberRule(int, 1),
    "lstm_layers": NumberRule(int, 1),
    "mlp_hidden": NumberRule(int, 1),
    "dropout": NumberRule(float, 0, 1),
}
SETTING_RULES = {
    "epochs": NumberRule(int, 1),
    "batch_size": NumberRule(int, 1),
    "lr": NumberRule(float, 0, low_open=True),
    "weight_decay": NumberRule(float, 0),
    "warmup_epochs": NumberRule(float, 0),
    "clip_value": NumberRule(float, 0, low_open=True),
    "seed": NumberRule(int),
    "max_seconds": NumberRule(float, 0.02),
    "patience": NumberRule(int, 0),
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]{0,99}")


def check_head_name(name) -> str:
    """A head name is a plain folder name: letters, digits and ``_ . + = , -``, not
    starting with ``.``, at most 100 characters (never a path)."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise SettingsError(
            f"name: {name!r} is not a plain head name (letters, digits, _ . + = , -; "
            "not starting with '.'; no '/' or '\\\\'; at most 100 characters)"
        )
    return name


def _distinct_names(value, key: str, what: str) -> tuple[str, ...]:
    """``"a,b"`` or a JSON list of distinct non-empty names, for option ``key``."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError(f"{key}: {value!r} is not a list of {what}")
    names = tuple(v.strip() if isinstance(v, str) else v for v in value)
    if not all(isinstance(v, str) and v for v in names) or len(set(names)) != len(names):
        raise SettingsError(f"{key}: {value!r} must name distinct {what}")
    return names


def check_targets(value) -> tuple[str, ...]:
    """Targets as the CLI takes them (``"A,B"``) or as a JSON list of names."""
    return _distinct_names(value, "targets", "label columns")


def check_features(value) -> tuple[str, ...] | None:
    """A head's ``features``: a feature set's name, ``"a,b"`` or a list of names (joined
    per frame, in that order); None: the store's default set."""
    return None if value is None else _distinct_names(value, "features", "feature sets")


def check_layer_choice(layer=None, layers=None) -> int | str | None:
    """A head's layer choice from its ``layer`` (a layer number or ``"last"``) and
    ``layers`` (``"weighted"``) options: None (the last hidden state), k or
    ``"weighted"``."""
    if layer is not None and layers is not None:
        raise SettingsError("give layer or layers: weighted, not both")
    if layers is not None:
        if layers != "weighted":
            raise SettingsError(f"layers: {layers!r} is not 'weighted'")
        return "weighted"
    if layer is None or layer == "last":
        return None
    if isinstance(layer, str) and layer.isdigit():
        layer = int(layer)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise SettingsError(f"layer: {layer!r} is not 'last' or a layer number (0 or more)")
    return layer


def parse_layer(value: int | str | None) -> int | str | None:
    """One value naming a head's layers (the CLI's ``--layer``/``--layers weighted``
    combined, a train job's ``layer``): None or ``"last"`` (the last hidden state), a
    layer number, or ``"weighted"`` (a learned weighting of every stored layer)."""
    if value == "weighted":
        return check_layer_choice(layers=value)
    return check_layer_choice(layer=value)


def check_setting(key: str, value):
    """One grid value, by the rule of the CLI option of the same name."""
    if key == "max_seconds" and value is None:
        return None
    if key in ("mixed_precision", "standardize"):
        if not isinstance(value, bool):
            raise SettingsError(f"{key}: {value!r} is not true or false")
        return value
    rule = SETTING_RULES.get(key) or SIZE_RULES[key]
    return rule.check(key, value)
