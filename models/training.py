"""Training heads on stored features: many heads per data load.

Two recipes (``models.options.RECIPES``): the paper's, exactly (``--preset paper``: MSE
loss, AdamW lr 1e-4, linear warm-up for one epoch then cosine decay to zero, 30 epochs,
batch 32, gradient clipping by value at 100, raw inputs), and emi's (every other preset:
the same schedule on standardized inputs at lr 1e-3, stopping early when validation
stops improving). Either way the best epoch is the one with the best mean validation
Pearson of predictions clamped to [0, 1]; seed 1; mixed precision on a GPU. Every
setting can be overridden per head. The ``mean-linear`` head is solved in closed form
(ridge regression, :mod:`models.ridge`), not by gradient descent.
"""

from __future__ import annotations

import copy
import csv
import functools
import itertools
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from featurestore.devices import require_device
from featurestore.store import FeatureStore
from manifests.id_match import explain_id_mismatch
from manifests.labels import LabelTable, check_label_values
from manifests.records import ManifestError, format_examples
from models.errors import SettingsError
from models.head_files import (
    HeadCard,
    StoreRef,
    check_head_destination,
    save_head,
)
from models.heads import (
    PRESETS,
    build_head,
    count_parameters,
    head_type_of,
    layer_weights,
    preset_config,
)
from models.input_scale import column_statistics, input_statistics
from models.metrics import evaluate
from models.options import (
    DEFAULT_PRESET,
    SIZE_KEYS,
    TrainSettings,
    check_features,
    check_head_name,
    check_layer_choice,
    check_setting,
    check_targets,
)
from models.sequences import DEFAULT_BUDGET_BYTES, Batch, SequenceData, load_sequences

T = TypeVar("T")

SETTING_FIELDS = frozenset(f.name for f in fields(TrainSettings))
# A layer weighting's logits learn at their own rate: Adam moves a parameter by about its
# rate per step whatever the gradient's size, so the rate is set from the run's length:
# over the whole schedule (warm-up and cosine: half the peak rate on average) a logit
# can travel about LAYER_WEIGHTS_TRAVEL / 2, enough for one layer to take nearly all the
# weight (e^5 = 150 x another's) on a small store and on a large one alike. At the head's
# own rate (1e-4: a few hundred steps move a logit by 0.01-0.1) the weights stay equal.
LAYER_WEIGHTS_TRAVEL = 10.0


@dataclass(frozen=True)
class HeadPlan:
    """One head to train: preset, size overrides, targets and settings (the preset's
    recipe where ``settings`` leaves a field unset)."""

    name: str
    preset: str = DEFAULT_PRESET
    targets: tuple[str, ...] | None = None  # None: every label column
    sizes: dict = field(default_factory=dict)
    settings: TrainSettings = TrainSettings()
    layer: int | str | None = None  # None: the last hidden state; k; or "weighted"
    features: tuple[str, ...] | None = None  # feature sets (None: the opened store's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", self.settings.for_preset(self.preset))

    def feature_stores(self, store: FeatureStore) -> list[FeatureStore]:
        """The feature sets this head reads, from ``store`` (opened on the set used
        where ``features`` is None), checked: several sets are joined per frame, each
        read at its last hidden state.

        Raises:
            StoreError: a set the store does not have (naming its sets).
            SettingsError: a layer choice with several sets.
        """
        if not self.features:
            return [store]
        if len(self.features) > 1 and self.layer is not None:
            raise SettingsError(
                f"head {self.name!r}: a head of several feature sets reads each set's last "
                "hidden state; give layer or layers for a head of one set"
            )
        return [store.with_set(n) if n != store.feature_set else store for n in self.features]

    def layers(self, store: FeatureStore) -> tuple[int | None, ...]:
        """The stored layers this head reads (None: ``hidden``), checked against
        ``store``: ``layer: k`` reads ``hidden_states[k]``, ``layers: weighted`` every
        stored layer (mixed by learned weights).

        Raises:
            SettingsError: the store lacks the layer (naming the stored ones).
        """
        stored = store.layers
        if self.layer == "weighted":
            if len(stored) < 2:
                raise SettingsError(
                    f"head {self.name!r}: layers: weighted needs a store with several "
                    f"layers (this one holds {list(stored) or 'the last hidden state only'}); "
                    "extract with --layers all"
                )
            return stored
        if self.layer is not None and self.layer not in stored:
            raise SettingsError(
                f"head {self.name!r}: layer {self.layer} is not stored (stored layers: "
                f"{', '.join(map(str, stored)) or 'none besides the last hidden state'}); "
                "extract with --layers"
            )
        return (self.layer,)


MAX_GRID_HEADS = 1000  # heads one grid file may make (each is a training run)


def plans_from_grid(grid: dict, *, defaults: TrainSettings) -> list[HeadPlan]:
    """Head plans from a grid file's dict.

    Format: ``{"defaults": {...}, "heads": [{...}, ...], "grid": {"key": [values]}}``;
    ``heads`` lists heads one by one, ``grid`` adds the cartesian product of its lists.
    Keys: ``name``, ``preset``, ``targets``, ``features`` (a feature set's name, or a
    list of names to join), ``layer`` (a stored layer number, or ``"last"``),
    ``layers`` (``"weighted"``), the sizes (``lstm_hidden``,
    ``lstm_layers``, ``mlp_hidden``, ``dropout``) and the training settings
    (``epochs``, ``lr``, ``seed``, ``max_seconds``, ...). Unnamed heads are named by what
    varies.
    """
    allowed = {
        "name",
        "preset",
        "targets",
        "layer",
        "layers",
        "features",
        *SIZE_KEYS,
        *(f.name for f in fields(TrainSettings)),
    }
    if not isinstance(grid, dict):
        raise SettingsError("grid file: expected a JSON object with 'defaults', 'heads', 'grid'")
    shapes = {"defaults": dict, "heads": list, "grid": dict}
    for key, kind in shapes.items():
        if not isinstance(grid.get(key, kind()), kind):
            raise SettingsError(f"grid file: '{key}' must be a JSON {kind.__name__}")
    if not all(isinstance(e, dict) for e in grid.get("heads", [])):
        raise SettingsError("grid file: every entry of 'heads' must be a JSON object")
    unknown = set(grid) - {"defaults", "heads", "grid"}
    if unknown:
        raise SettingsError(
            f"grid file: unknown top-level keys {sorted(unknown)}; "
            "use 'defaults', 'heads' and 'grid'"
        )
    base = dict(grid.get("defaults", {}))
    entries = [dict(e) for e in grid.get("heads", [])]
    product = grid.get("grid", {})
    lists = [v if isinstance(v, list) else [v] for v in product.values()]
    count = len(entries) + (math.prod(len(v) for v in lists) if product else 0)
    if count > MAX_GRID_HEADS:
        sizes = " x ".join(str(len(v)) for v in lists)
        raise SettingsError(
            f"grid file: {count} heads ({len(entries)} listed + a grid of {sizes}), more "
            f"than the limit of {MAX_GRID_HEADS} per run; split it into several grid files"
        )
    if product:
        keys = list(product)
        for values in itertools.product(
            *(product[k] if isinstance(product[k], list) else [product[k]] for k in keys)
        ):
            entry = dict(zip(keys, values, strict=True))
            entry.setdefault("name", _name_from(keys, entry))
            entries.append(entry)
    if not entries:
        raise SettingsError("grid file: no heads (give 'heads' or 'grid')")
    plans = []
    for index, entry in enumerate(entries):
        merged = {**base, **entry}
        bad = set(merged) - allowed
        if bad:
            raise SettingsError(
                f"grid file: unknown keys {sorted(bad)} in head {index}; allowed: {sorted(allowed)}"
            )
        try:
            keys = [k for k in entry if k != "name"]
            plans.append(_plan_from_entry(merged, defaults, keys))
        except SettingsError as err:
            raise SettingsError(f"grid file, head {merged.get('name', index)!r}: {err}") from None
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise SettingsError(
            f"grid file: head names repeat: {sorted(n for n in names if names.count(n) > 1)}"
        )
    return plans


def _name_from(keys: list[str], merged: dict) -> str:
    """A head's name from the values its entry sets: ``preset-mean-linear``,
    ``seed2-max_seconds12``; ``default`` for an entry that sets nothing."""
    parts = [f"{k}{'-' if isinstance(merged[k], str) else ''}{_short(merged[k])}" for k in keys]
    return "-".join(parts) or "default"


def _plan_from_entry(merged: dict, defaults: TrainSettings, entry_keys: list[str]) -> HeadPlan:
    """One grid entry, every value checked by the rule of its CLI option."""
    checked = {
        k: check_setting(k, v)
        for k, v in merged.items()
        if k not in ("name", "preset", "targets", "layer", "layers", "features")
    }
    preset = merged.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    targets = merged.get("targets")
    return HeadPlan(
        name=check_head_name(merged.get("name") or _name_from(entry_keys, merged)),
        preset=preset,
        targets=check_targets(targets) if targets is not None else None,
        layer=check_layer_choice(merged.get("layer"), merged.get("layers")),
        features=check_features(merged.get("features")),
        sizes={k: checked[k] for k in SIZE_KEYS if k in checked},
        settings=replace(
            defaults,
            **{k: v for k, v in checked.items() if k in TrainSettings.__dataclass_fields__},
        ),
    )


def _short(value) -> str:
    """A value as it appears in a generated head name (only name-safe characters)."""
    text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", text)


@dataclass
class LabelledSplit:
    clip_ids: list[str]
    targets: tuple[str, ...]
    values: np.ndarray  # (clips, targets)
    source: str = "the label file"  # the file the labels came from (named in errors)

    def as_dict(self, columns: list[int]) -> dict[str, np.ndarray]:
        return {c: self.values[i, columns] for i, c in enumerate(self.clip_ids)}


def resolve_labels(
    store: FeatureStore | list[FeatureStore],
    table: LabelTable,
    *,
    role: str,
    skip_missing: bool = False,
) -> LabelledSplit:
    """Labels of ``table`` for clips in ``store`` (with several feature sets: in every
    one of them).

    Raises:
        ManifestError: NaN or out-of-range labels; labelled clips missing from the store
            (unless ``skip_missing``); a store holding none of the labelled clips.
    """
    check_label_values(table)
    sets = store if isinstance(store, list) else [store]
    store = sets[0]
    stored = [c for c in table.rows if all(c in s for s in sets)]
    missing = [c for c in table.rows if not all(c in s for s in sets)]
    where = f"{store.location}" + (
        f" (in every one of feature sets {', '.join(s.feature_set for s in sets)})"
        if len(sets) > 1
        else ""
    )
    mismatch = (
        explain_id_mismatch(missing, store.clip_ids, show_labels=table.show_content)
        if missing
        else None
    )
    if not stored:
        raise ManifestError(
            f"{role} labels {table.path}: none of its {len(table.rows)} clips are in store "
            f"{where} (e.g. {table.examples(list(table.rows), 3)}; the store has e.g. "
            f"{format_examples(store.clip_ids, 3)}). "
            + (
                f"Their ids differ: {mismatch}."
                if mismatch
                else "Extract that audio into this store first."
            )
        )
    if missing and not skip_missing:
        raise ManifestError(
            f"{role} labels {table.path}: {len(missing)} of {len(table.rows)} clips are not "
            f"in store {where}: {table.examples(missing)}. "
            + (
                f"Their ids differ: {mismatch}."
                if mismatch
                else f"Extract them, or pass --skip-missing to "
                f"{'evaluate' if role == 'evaluation' else 'train on'} the rest."
            )
        )
    return LabelledSplit(
        stored,
        table.targets,
        np.array([table.rows[c] for c in stored], dtype=np.float32),
        source=os.path.basename(str(table.path)),
    )


def warmup_cosine(optimiser, warmup_steps: int, total_steps: int):
    """The LR schedule: linear warm-up over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``; the same factors as transformers' ``get_cosine_schedule_with_warmup``
    (a test holds them equal), without importing transformers: training reads only the
    store, and a fresh ``emi train`` starts about 1.7 s sooner."""
    from torch.optim.lr_scheduler import LambdaLR

    factor = functools.partial(_warmup_cosine_factor, warmup=warmup_steps, total=total_steps)
    return LambdaLR(optimiser, factor)


def _warmup_cosine_factor(step: int, *, warmup: int, total: int) -> float:
    """The LR factor at ``step``: ``step / warmup`` while warming up, then half a cosine
    period from 1 down to 0 at ``total`` (the cosine goes on past it, as transformers'
    does; training stops there)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def predict_batches(
    model: nn.Module,
    data: SequenceData,
    clip_ids: list[str],
    *,
    device: str,
    batch_size: int = 64,
    max_frames: int | None = None,
) -> dict[str, np.ndarray]:
    """Raw (unclamped) predictions per clip id."""
    out: dict[str, np.ndarray] = {}
    model.eval()
    layers = getattr(getattr(model, "config", None), "layers", (None,))
    with torch.inference_mode():
        for batch in data.batches(
            batch_size, clip_ids=clip_ids, max_frames=max_frames, layers=layers
        ):
            b = batch.to(device)
            pred = model(b.frames, b.lengths, b.mean).float().cpu().numpy()
            out.update(zip(batch.clip_ids, pred, strict=True))
    return out


@dataclass
class TrainedHead:
    name: str
    folder: Path
    best_epoch: int
    best_val_pearson: float
    metrics: dict  # per epoch: train loss, validation metrics
    seconds: float
    parameters: int = 0
    plan: HeadPlan | None = None


def flush_denormals(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` with denormal floats treated as zero on the CPU.

    The gradient that reaches an LSTM only through each clip's last frame fades into
    denormal numbers over hundreds of steps, which x86 CPUs process about 20x slower
    (measured here: a 2-layer 259-wide LSTM, batch 32 x 300 frames, backward 5.3 s ->
    0.34 s). Values below 1.2e-38 change nothing a head learns. The CPU's flush-to-zero
    flag is per thread, and torch's worker threads copy it when they are created, so
    ``fn`` runs in a fresh thread that sets it first (its own worker threads inherit
    it); the caller's threads, and a notebook's torch, are left as they were.
    """
    result: dict = {}

    def run() -> None:
        torch.set_flush_denormal(True)
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    worker = threading.Thread(target=run, name="emi-heads", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)  # stays interruptible with Ctrl-C
    if "error" in result:
        raise result["error"]
    return result["value"]


def _amp(device: str, settings: TrainSettings):
    if not (device.startswith("cuda") and settings.mixed_precision):
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return dtype, scaler


def _label_columns(plan: HeadPlan, train: LabelledSplit, val: LabelledSplit):
    """The head's targets and, per clip, its label rows (training and validation).

    Raises:
        ManifestError: a target that is not a column of a label file, naming the file
            and the nearest column (a misspelling).
    """
    targets = list(plan.targets or train.targets)
    for split in (train, val):
        unknown = [t for t in targets if t not in split.targets]
        if unknown:
            raise ManifestError(
                f"head {plan.name!r}: "
                + "; ".join(_missing_column(t, split) for t in unknown)
                + f" (its columns: {', '.join(split.targets)})"
            )
    y_train = train.as_dict([train.targets.index(t) for t in targets])
    y_val = val.as_dict([val.targets.index(t) for t in targets])
    return targets, y_train, y_val


def _missing_column(target: str, split: LabelledSplit) -> str:
    """``Admiraton: not in valid_split.csv; did you mean Admiration?``"""
    import difflib

    near = difflib.get_close_matches(target, split.targets, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else ""
    return f"{target}: not in {split.source}{hint}"


@dataclass
class _Optimiser:
    """AdamW with the warm-up cosine schedule, value clipping and (on a GPU) AMP."""

    model: nn.Module
    settings: TrainSettings
    device: str
    steps_per_epoch: int

    def __post_init__(self) -> None:
        s = self.settings
        mix = getattr(self.model, "layer_mix", None)
        mixing = set() if mix is None else {id(p) for p in mix.parameters()}
        groups = [
            {"params": [p for p in self.model.parameters() if id(p) not in mixing]},
            # A layer weighting's few logits: without weight decay (it would pull them
            # back to equal weights), at their own rate (LAYER_WEIGHTS_TRAVEL).
            {
                "params": [] if mix is None else list(mix.parameters()),
                "lr": LAYER_WEIGHTS_TRAVEL / (self.steps_per_epoch * s.epochs),
                "weight_decay": 0.0,
            },
        ]
        self.adamw = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
        warmup = max(1, round(s.warmup_epochs * self.steps_per_epoch))
        self.schedule = warmup_cosine(self.adamw, warmup, self.steps_per_epoch * s.epochs)
        self.amp_dtype, self.scaler = _amp(self.device, s)

    def step(self, batch: Batch) -> float:
        """One optimisation step on a batch's MSE loss; returns the loss."""
        b = batch.to(self.device)
        with torch.autocast(
            device_type=torch.device(self.device).type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loss = nn.functional.mse_loss(
                self.model(b.frames, b.lengths, b.mean).float(), b.targets
            )
        self.adamw.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.adamw)
        else:
            loss.backward()
        nn.utils.clip_grad_value_(self.model.parameters(), self.settings.clip_value)
        if self.scaler is not None:
            self.scaler.step(self.adamw)
            self.scaler.update()
        else:
            self.adamw.step()
        self.schedule.step()
        return float(loss.detach())


def train_one(
    plan: HeadPlan,
    data: SequenceData,
    train: LabelledSplit,
    val: LabelledSplit,
    *,
    device: str,
    store: FeatureStore,
    out: Path,
    log: Callable[[str], None] = lambda _: None,
    overwrite: bool = False,
    joined: list[FeatureStore] | tuple = (),
    progress: Callable[[EpochStep], None] | None = None,
) -> TrainedHead:
    """Train one head on already-loaded data and save its folder to ``out``
    (``joined``: the further feature sets the data joins to ``store``'s)."""
    started = time.perf_counter()
    s = plan.settings
    targets, y_train, y_val = _label_columns(plan, train, val)
    torch.manual_seed(s.seed)
    config = preset_config(
        plan.preset,
        input_dim=data.input_dim,
        num_targets=len(targets),
        layers=plan.layers(store),
        layer_width=data.hidden_size,
        standardize=s.standardize,
        **plan.sizes,
    )
    model = build_head(config)
    fit = _ClosedFormFit() if head_type_of(config).closed_form else _GradientFit()
    facts: dict = {}
    stats = fit.statistics(data, train, y_train, config, s.max_frames)
    if stats is not None:
        model.standardizer.set(stats.mean, stats.std)
        facts["standardized_over"] = f"{stats.count} training {stats.over}"
    model = model.to(device)
    history, best, extra = fit.fit(
        plan, model, data, train, val, y_train, y_val, targets, device, log, progress
    )
    trained_s = time.perf_counter() - started
    card = _head_card(plan, config, model, targets, train, val, device, store, best, trained_s)
    training = fit.card_training({**card.training, **facts}, extra)
    card = replace(card, joined=tuple(_store_ref(s) for s in joined), training=training)
    metrics = {"best_epoch": best[1], "epochs": history, **extra}
    metrics["validation"] = _validation_record(model, data, val, y_val, targets, device, s)
    if config.mixes_layers:  # the weights of the saved (best) epoch
        metrics["layer_weights"] = layer_weights(model)

    def plots(folder: Path) -> None:
        fit.plot(metrics, folder, title=plan.name)

    save_head(out, model, card, metrics, extra_files=plots, overwrite=overwrite)
    seconds = time.perf_counter() - started
    return TrainedHead(plan.name, out, best[1], best[0], metrics, seconds, card.parameters, plan)


class _GradientFit:
    """How a head trained by gradient steps is fitted: epochs of the recipe over the
    training clips' sequences, the best epoch by validation mean Pearson."""

    def statistics(self, data, train, y_train, config, max_frames):
        """The inputs' per-dimension statistics (over the training frames), where the
        head standardizes its inputs."""
        if not config.standardize:
            return None
        return input_statistics(data, train.clip_ids, layers=config.layers, max_frames=max_frames)

    def fit(self, plan, model, data, train, val, y_train, y_val, targets, device, log, progress):
        return _fit_by_gradient(
            plan, model, data, train, val, y_train, y_val, targets, device, log, progress
        )

    def card_training(self, training: dict, extra: dict) -> dict:
        return training

    def plot(self, metrics: dict, folder: Path, *, title: str) -> None:
        from models.plots import plot_learning_curves

        plot_learning_curves(metrics, folder / "learning_curves.png", title=title)


class _ClosedFormFit:
    """How a closed-form head is fitted: one pass over the training clips' mean
    vectors (their statistics and the ridge solver), the penalty chosen on validation."""

    def statistics(self, data, train, y_train, config, max_frames):
        self.x, self.y = _training_means(data, train, y_train, config.layers, max_frames)
        return column_statistics(self.x) if config.standardize else None

    def fit(self, plan, model, data, train, val, y_train, y_val, targets, device, log, progress):
        fitted = _fit_ridge(plan, model, self.x, self.y, data, val, y_val, targets, device, log)
        best = fitted[1]
        if progress is not None:
            progress(_epoch_progress(plan.name, 1, 1, best[0], best[0]))
        return fitted

    def card_training(self, training: dict, extra: dict) -> dict:
        return _ridge_training(training, extra["ridge"])

    def plot(self, metrics: dict, folder: Path, *, title: str) -> None:
        from models.plots import plot_ridge_penalty

        plot_ridge_penalty(metrics, folder / "ridge_penalty.png", title=title)


def _validation_predictions(model, data, val, y_val, device, max_frames):
    """``(pred, true)``: predictions clamped to [0, 1] and labels, ``(clips, targets)``
    in ``val``'s clip order."""
    raw = predict_batches(model, data, val.clip_ids, device=device, max_frames=max_frames)
    pred = np.clip(np.stack([raw[c] for c in val.clip_ids]), 0.0, 1.0)
    return pred, np.stack([y_val[c] for c in val.clip_ids])


def _validate(model, data, val, y_val, targets, device, max_frames) -> dict:
    """Validation metrics of predictions clamped to [0, 1] (NaN where non-finite)."""
    pred, true = _validation_predictions(model, data, val, y_val, device, max_frames)
    return evaluate(pred, true, targets, allow_nonfinite=True)


def _validation_record(model, data, val, y_val, targets, device, settings) -> dict:
    """The saved (best) model's validation record (:mod:`models.validation_check`)."""
    from models.validation_check import check_validation

    pred, true = _validation_predictions(model, data, val, y_val, device, settings.max_frames)
    return check_validation(pred, true, targets, val.clip_ids)


@dataclass(frozen=True)
class EpochStep:
    """What a training's progress call gets after each epoch of each head: the head,
    its epoch of ``epochs``, its validation mean Pearson then and its best so far (NaN
    where the predictions were constant)."""

    head: str
    epoch: int
    epochs: int
    val_pearson_mean: float
    best_val_pearson: float


def _epoch_progress(head: str, epoch: int, epochs: int, score: float, best: float) -> EpochStep:
    return EpochStep(head, epoch, epochs, float(score), float(best))


def _fit_by_gradient(
    plan, model, data, train, val, y_train, y_val, targets, device, log, progress=None
):
    """The epochs of the recipe (stopping after ``patience`` epochs without improvement);
    leaves ``model`` at its best epoch. Returns (history, (best score, best epoch), {})."""
    s = plan.settings
    rng = np.random.default_rng(s.seed)
    config = model.config
    optimiser = _Optimiser(model, s, device, math.ceil(len(train.clip_ids) / s.batch_size))
    history, best_state, best = [], None, (-math.inf, -1)
    for epoch in range(1, s.epochs + 1):
        model.train()
        losses = [
            optimiser.step(batch)
            for batch in data.batches(
                s.batch_size,
                clip_ids=train.clip_ids,
                targets=y_train,
                rng=rng,
                max_frames=s.max_frames,
                layers=config.layers,
            )
        ]
        scores = _validate(model, data, val, y_val, targets, device, s.max_frames)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val": scores})
        if config.mixes_layers:
            history[-1]["layer_weights"] = layer_weights(model)
        improved = scores["pearson_mean"] > best[0]
        if improved:
            best = (scores["pearson_mean"], epoch)
            best_state = copy.deepcopy(model.state_dict())
        log(
            f"{plan.name}: epoch {epoch}/{s.epochs} loss {np.mean(losses):.4f} "
            f"val pearson {scores['pearson_mean']:.3f}{' *' if improved else ''}"
        )
        if progress is not None:
            progress(_epoch_progress(plan.name, epoch, s.epochs, scores["pearson_mean"], best[0]))
        if s.patience and best_state is not None and epoch - best[1] >= s.patience:
            log(
                f"{plan.name}: stopping early after epoch {epoch}: no better validation "
                f"mean Pearson for {s.patience} epochs (best: epoch {best[1]})"
            )
            break
    if best_state is None:
        raise SettingsError(
            f"head {plan.name!r}: every epoch predicted NaN or inf on the validation clips "
            "(the training diverged); lower --lr or check the features with `emi store verify`"
        )
    model.load_state_dict(best_state)
    return history, best, {}


def _training_means(data, train, y_train, layers, max_frames) -> tuple[np.ndarray, np.ndarray]:
    """The training clips' mean vectors ``(clips, width)`` and their label rows
    ``(clips, targets)``, in one order, as float64."""
    means, rows = [], []
    for batch in data.batches(256, clip_ids=train.clip_ids, max_frames=max_frames, layers=layers):
        means.append(batch.mean.numpy().astype(np.float64))
        rows.extend(y_train[c] for c in batch.clip_ids)
    return np.concatenate(means), np.stack(rows).astype(np.float64)


def _fit_ridge(plan, model, x, y, data, val, y_val, targets, device, log):
    """The closed-form ridge solution on the training clips' mean vectors ``x`` (put
    through the head's standardizer) and labels ``y``, its penalty chosen by
    leave-one-out on the training clips only; written into the head's linear layer.
    Returns (history of one entry, (score, 1), {"ridge": ...})."""
    from models.errors import HeadError
    from models.ridge import fit_ridge

    s = plan.settings
    scaler = model.standardizer
    if scaler is not None:
        x = (x - scaler.mean.double().cpu().numpy()) / scaler.std.double().cpu().numpy()
    try:
        solved = fit_ridge(x, y)
    except ValueError as err:
        raise HeadError(f"head {plan.name!r}: {err}") from None
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(solved.weights.T).float())
        model.linear.bias.copy_(torch.from_numpy(solved.bias).float())
    train_mse = float(np.mean((solved.predict(x) - y) ** 2))
    scores = _validate(model, data, val, y_val, targets, device, s.max_frames)
    if not math.isfinite(scores["pearson_mean"]):
        raise SettingsError(
            f"head {plan.name!r}: the ridge solution predicts NaN or inf on the validation "
            "clips; check the features with `emi store verify`"
        )
    edge = " (a penalty at the edge of the grid)" if solved.at_edge else ""
    shown = ", ".join(f"{a:g}" for a in solved.alpha)
    log(
        f"{plan.name}: ridge penalties {shown}{edge} by leave-one-out on "
        f"{len(x)} training clips; val pearson {scores['pearson_mean']:.3f}"
    )
    ridge = {
        "alpha": dict(zip(targets, solved.alpha.tolist(), strict=True)),
        "alpha_at_edge": solved.at_edge,
        "alphas": list(solved.alphas),
        "loo_mse": {t: solved.loo_mse[:, j].tolist() for j, t in enumerate(targets)},
    }
    history = [{"epoch": 1, "train_loss": train_mse, "val": scores}]
    return history, (scores["pearson_mean"], 1), {"ridge": ridge}


def _ridge_training(training: dict, ridge: dict) -> dict:
    """A closed-form head's card ``training``: the solver and its penalty instead of
    the gradient recipe's settings, which it does not use."""
    unused = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "clip_value")
    unused += ("patience", "mixed_precision", "recipe")
    kept = {k: v for k, v in training.items() if k not in unused}
    return {
        **kept,
        "solver": "ridge, closed form; a penalty per target by leave-one-out on the training clips",
        "alpha": ridge["alpha"],
        "alpha_at_edge": ridge["alpha_at_edge"],
    }


def _head_card(plan, config, model, targets, train, val, device, store, best, seconds) -> HeadCard:
    s = plan.settings
    changed = s.overrides(plan.preset)
    return HeadCard(
        name=plan.name,
        preset=plan.preset,
        head=config,
        parameters=count_parameters(model),
        targets=tuple(targets),
        training={
            **asdict(s),
            "recipe": _recipe_words(plan.preset, changed),
            "mixed_precision": _amp(device, s)[0] is not None,  # what ran, not what was asked
            "max_frames": s.max_frames,
            "train_clips": len(train.clip_ids),
            "val_clips": len(val.clip_ids),
            "device": device,
            "seconds": round(seconds, 3),  # training, before saving
            "trained_by": f"{socket.gethostname()}:{os.getpid()}",
        },
        store=_store_ref(store),
        best_epoch=best[1],
        best_val_pearson_mean=best[0],
    )


def _recipe_words(preset: str, changed: dict) -> str:
    """What recipe a head was trained with, in words (its card's ``training.recipe``)."""
    name = "the paper's recipe" if preset == "paper" else "emi's recipe"
    if not changed:
        return f"{name}, exactly" if preset == "paper" else name
    return f"{name} with {', '.join(f'{k}={v}' for k, v in changed.items())}"


def _store_ref(store: FeatureStore) -> StoreRef:
    return StoreRef(store.fingerprint, store.location, store.spec, store.feature_set)


def train_heads(
    store: FeatureStore,
    train_table: LabelTable,
    val_table: LabelTable,
    plans: list[HeadPlan],
    out: str | Path,
    *,
    device: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    skip_missing: bool = False,
    single: bool = False,
    log: Callable[[str], None] = lambda _: None,
    overwrite: bool = False,
    progress: Callable[[EpochStep], None] | None = None,
) -> list[TrainedHead]:
    """Train every plan; the plans that read the same feature sets share one load of
    them (every layer any of them reads, at once).

    Args:
        store: the store, opened on the set that plans without ``features`` read.
        out: the head folder when ``single``, else the parent of one folder per plan.
    """
    out = Path(out)
    for p in plans:  # before any work: never write over something that is not a head
        check_head_destination(out if single else out / p.name, overwrite=overwrite)
    device = require_device(device)
    groups: dict[tuple[str, ...], list[HeadPlan]] = {}
    for p in plans:
        groups.setdefault(tuple(s.feature_set for s in p.feature_stores(store)), []).append(p)
    loads = []  # every group's sets, labels and data, before any head trains
    for names, members in groups.items():
        sets = members[0].feature_stores(store)
        train = resolve_labels(sets, train_table, role="training", skip_missing=skip_missing)
        val = resolve_labels(sets, val_table, role="validation", skip_missing=skip_missing)
        data = load_sequences(
            sets,
            sorted(set(train.clip_ids) | set(val.clip_ids)),
            crops=[p.settings.max_frames for p in members],
            budget_bytes=budget_bytes,
            layers=tuple(k for p in members for k in p.layers(sets[0])),
        )
        loads.append((sets, members, train, val, data))
        log(
            f"feature set{'s' if len(sets) > 1 else ''} {'+'.join(names)}: "
            f"{len(train.clip_ids)} training and {len(val.clip_ids)} validation clips, "
            f"{data.total_bytes / 2**20:.0f} MiB of sequences "
            f"({'cached in memory' if data.cached else 'streamed from the store'}); "
            f"{len(members)} head{'s' if len(members) != 1 else ''} on {device}"
        )

    def train_all() -> list[TrainedHead]:
        return [
            train_one(
                p,
                data,
                train,
                val,
                device=device,
                store=sets[0],
                joined=sets[1:],
                out=out if single else out / p.name,
                log=log,
                overwrite=overwrite,
                progress=progress,
            )
            for sets, members, train, val, data in loads
            for p in members
        ]

    by_name = {t.name: t for t in flush_denormals(train_all)}
    trained = [by_name[p.name] for p in plans]  # in plan order
    if not single:
        write_summary(trained, out)
    return trained


def plan_settings(plan: HeadPlan) -> dict:
    """A plan's settings as one flat dict (preset, targets, sizes, training settings)."""
    return {
        "preset": plan.preset,
        "targets": ",".join(plan.targets) if plan.targets else "all",
        "layer": "last" if plan.layer is None else plan.layer,
        "features": "+".join(plan.features) if plan.features else "default",
        **plan.sizes,
        **asdict(plan.settings),
    }


def write_summary(trained: list[TrainedHead], out: Path) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.json`` in ``out``: one row per head with the
    settings that vary across the grid, best epoch, validation metrics at the best
    epoch, parameters and training time; best head first."""
    settings = [plan_settings(t.plan) for t in trained]
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
    rows = []
    for t, s in sorted(
        zip(trained, settings, strict=True), key=lambda pair: -pair[0].best_val_pearson
    ):
        best = t.metrics["epochs"][t.best_epoch - 1]["val"]
        rows.append(
            {
                "name": t.name,
                **{k: s.get(k) for k in varying},
                "best_epoch": t.best_epoch,
                "val_pearson_mean": best["pearson_mean"],
                "val_ccc_mean": best["ccc_mean"],
                "val_mse_mean": best["mse_mean"],
                **{f"val_pearson/{k}": v for k, v in best["pearson"].items()},
                "parameters": t.parameters,
                "seconds": round(t.seconds, 1),
                "folder": str(t.folder),
            }
        )
    from manifests.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "summary.json") as temporary:
        temporary.write_text(json.dumps({"varying": varying, "heads": rows}, indent=2))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_file(out / "summary.csv") as temporary, temporary.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return out / "summary.csv", out / "summary.json"
