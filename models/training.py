"""Training heads on stored features: the paper's recipe, many heads per data load.

Recipe defaults (``method.md``): MSE loss, AdamW lr 1e-4, linear warm-up for one epoch
then cosine decay to zero, 30 epochs, batch 32, gradient clipping by value at 100,
seed 1, the best epoch chosen by mean validation Pearson of predictions clamped to
[0, 1]; mixed precision on a GPU. Every setting can be overridden per head.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featurestore.store import FeatureStore
from manifests.labels import LabelTable, check_label_values
from manifests.records import ManifestError, format_examples
from models.head_files import check_head_destination, save_head, torch_device
from models.heads import PRESETS, build_head, count_parameters, preset_config
from models.metrics import evaluate
from models.options import check_head_name, check_setting, check_targets
from models.sequences import DEFAULT_BUDGET_BYTES, SequenceData


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01  # AdamW's default
    warmup_epochs: float = 1.0
    clip_value: float = 100.0
    seed: int = 1
    max_seconds: float | None = None  # crop sequences (the paper: 12)
    mixed_precision: bool = True  # on a GPU only

    @property
    def max_frames(self) -> int | None:
        return None if self.max_seconds is None else max(1, int(round(self.max_seconds * 50)))


SIZE_KEYS = ("lstm_hidden", "lstm_layers", "mlp_hidden", "dropout")
SETTING_FIELDS = frozenset(f.name for f in fields(TrainSettings))


@dataclass(frozen=True)
class HeadPlan:
    """One head to train: preset, size overrides, targets and settings."""

    name: str
    preset: str = "paper"
    targets: tuple[str, ...] | None = None  # None: every label column
    sizes: dict = field(default_factory=dict)
    settings: TrainSettings = TrainSettings()


def plans_from_grid(grid: dict, *, defaults: TrainSettings) -> list[HeadPlan]:
    """Head plans from a grid file's dict.

    Format: ``{"defaults": {...}, "heads": [{...}, ...], "grid": {"key": [values]}}``;
    ``heads`` lists heads one by one, ``grid`` adds the cartesian product of its lists.
    Keys: ``name``, ``preset``, ``targets``, the sizes (``lstm_hidden``, ``lstm_layers``,
    ``mlp_hidden``, ``dropout``) and the training settings (``epochs``, ``lr``,
    ``seed``, ``max_seconds``, ...). Unnamed heads are named by what varies.
    """
    allowed = {"name", "preset", "targets", *SIZE_KEYS, *(f.name for f in fields(TrainSettings))}
    if not isinstance(grid, dict):
        raise ValueError("grid file: expected a JSON object with 'defaults', 'heads', 'grid'")
    shapes = {"defaults": dict, "heads": list, "grid": dict}
    for key, kind in shapes.items():
        if not isinstance(grid.get(key, kind()), kind):
            raise ValueError(f"grid file: '{key}' must be a JSON {kind.__name__}")
    if not all(isinstance(e, dict) for e in grid.get("heads", [])):
        raise ValueError("grid file: every entry of 'heads' must be a JSON object")
    unknown = set(grid) - {"defaults", "heads", "grid"}
    if unknown:
        raise ValueError(
            f"grid file: unknown top-level keys {sorted(unknown)}; "
            "use 'defaults', 'heads' and 'grid'"
        )
    base = dict(grid.get("defaults", {}))
    entries = [dict(e) for e in grid.get("heads", [])]
    product = grid.get("grid", {})
    if product:
        keys = list(product)
        for values in itertools.product(
            *(product[k] if isinstance(product[k], list) else [product[k]] for k in keys)
        ):
            entry = dict(zip(keys, values, strict=True))
            entry.setdefault("name", "-".join(f"{k}{_short(v)}" for k, v in entry.items()))
            entries.append(entry)
    if not entries:
        raise ValueError("grid file: no heads (give 'heads' or 'grid')")
    plans = []
    for index, entry in enumerate(entries):
        merged = {**base, **entry}
        bad = set(merged) - allowed
        if bad:
            raise ValueError(
                f"grid file: unknown keys {sorted(bad)} in head {index}; allowed: {sorted(allowed)}"
            )
        try:
            plans.append(_plan_from_entry(merged, index, defaults))
        except ValueError as err:
            raise ValueError(f"grid file, head {merged.get('name', index)!r}: {err}") from None
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise ValueError(
            f"grid file: head names repeat: {sorted(n for n in names if names.count(n) > 1)}"
        )
    return plans


def _plan_from_entry(merged: dict, index: int, defaults: TrainSettings) -> HeadPlan:
    """One grid entry, every value checked by the rule of its CLI option."""
    checked = {
        k: check_setting(k, v) for k, v in merged.items() if k not in ("name", "preset", "targets")
    }
    preset = merged.get("preset", "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    targets = merged.get("targets")
    return HeadPlan(
        name=check_head_name(merged.get("name") or f"head{index}"),
        preset=preset,
        targets=check_targets(targets) if targets is not None else None,
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

    def as_dict(self, columns: list[int]) -> dict[str, np.ndarray]:
        return {c: self.values[i, columns] for i, c in enumerate(self.clip_ids)}


def resolve_labels(
    store: FeatureStore, table: LabelTable, *, role: str, skip_missing: bool = False
) -> LabelledSplit:
    """Labels of ``table`` for clips in ``store``.

    Raises:
        ManifestError: NaN or out-of-range labels; labelled clips missing from the store
            (unless ``skip_missing``); a store holding none of the labelled clips.
    """
    check_label_values(table)
    stored = [c for c in table.rows if c in store]
    missing = [c for c in table.rows if c not in store]
    if not stored:
        raise ManifestError(
            f"{role} labels {table.path}: none of its {len(table.rows)} clips are in store "
            f"{store.location} (e.g. {format_examples(list(table.rows), 3)}; the store has e.g. "
            f"{format_examples(store.clip_ids, 3)}). Extract that audio into this store first."
        )
    if missing and not skip_missing:
        raise ManifestError(
            f"{role} labels {table.path}: {len(missing)} of {len(table.rows)} clips are not "
            f"in store {store.location}: {format_examples(missing)}. Extract them, or pass "
            "--skip-missing to train on the rest."
        )
    return LabelledSplit(
        stored, table.targets, np.array([table.rows[c] for c in stored], dtype=np.float32)
    )


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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
    with torch.inference_mode():
        for batch in data.batches(batch_size, clip_ids=clip_ids, max_frames=max_frames):
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
    metrics: dict
    seconds: float


def _amp(device: str, settings: TrainSettings):
    if not (device.startswith("cuda") and settings.mixed_precision):
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return dtype, scaler


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
) -> TrainedHead:
    """Train one head on already-loaded data and save its folder to ``out``."""
    started = time.perf_counter()
    s = plan.settings
    targets = list(plan.targets or train.targets)
    unknown = [t for t in targets if t not in train.targets or t not in val.targets]
    if unknown:
        raise ManifestError(
            f"head {plan.name!r}: targets {unknown} are not columns of both "
            f"label files ({', '.join(train.targets)})"
        )
    train_cols = [train.targets.index(t) for t in targets]
    val_cols = [val.targets.index(t) for t in targets]
    y_train, y_val = train.as_dict(train_cols), val.as_dict(val_cols)
    true_val = np.stack([y_val[c] for c in val.clip_ids])

    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    config = preset_config(
        plan.preset, input_dim=data.input_dim, num_targets=len(targets), **plan.sizes
    )
    model = build_head(config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(train.clip_ids) / s.batch_size)
    total = steps_per_epoch * s.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, warmup_cosine(max(1, round(s.warmup_epochs * steps_per_epoch)), total)
    )
    amp_dtype, scaler = _amp(device, s)
    loss_fn = nn.MSELoss()
    history, best_state, best = [], None, (-math.inf, -1)
    for epoch in range(1, s.epochs + 1):
        model.train()
        losses = []
        for batch in data.batches(
            s.batch_size, clip_ids=train.clip_ids, targets=y_train, rng=rng, max_frames=s.max_frames
        ):
            b = batch.to(device)
            with torch.autocast(
                device_type=torch.device(device).type,
                dtype=amp_dtype or torch.float32,
                enabled=amp_dtype is not None,
            ):
                loss = loss_fn(model(b.frames, b.lengths, b.mean).float(), b.targets)
            optimiser.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimiser)
            else:
                loss.backward()
            nn.utils.clip_grad_value_(model.parameters(), s.clip_value)
            if scaler is not None:
                scaler.step(optimiser)
                scaler.update()
            else:
                optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        raw = predict_batches(model, data, val.clip_ids, device=device, max_frames=s.max_frames)
        pred = np.clip(np.stack([raw[c] for c in val.clip_ids]), 0.0, 1.0)
        scores = evaluate(pred, true_val, targets)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val": scores})
        improved = scores["pearson_mean"] > best[0]
        if improved:
            best = (scores["pearson_mean"], epoch)
            best_state = copy.deepcopy(model.state_dict())
        log(
            f"{plan.name}: epoch {epoch}/{s.epochs} loss {np.mean(losses):.4f} "
            f"val pearson {scores['pearson_mean']:.3f}{' *' if improved else ''}"
        )
    model.load_state_dict(best_state)
    head_config = {
        "name": plan.name,
        "preset": plan.preset,
        "head": config.to_dict(),
        "parameters": count_parameters(model),
        "targets": targets,
        "training": {
            **asdict(s),
            "max_frames": s.max_frames,
            "train_clips": len(train.clip_ids),
            "val_clips": len(val.clip_ids),
            "device": device,
            "trained_by": f"{socket.gethostname()}:{os.getpid()}",
        },
        "store": {"fingerprint": store.fingerprint, "location": store.location, "spec": store.spec},
        "best_epoch": best[1],
        "best_val_pearson_mean": best[0],
    }
    metrics = {"best_epoch": best[1], "epochs": history}
    from models.plots import plot_learning_curves

    save_head(
        out,
        model,
        head_config,
        metrics,
        extra_files=lambda folder: plot_learning_curves(
            metrics, folder / "learning_curves.png", title=plan.name
        ),
    )
    return TrainedHead(plan.name, out, best[1], best[0], metrics, time.perf_counter() - started)


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
) -> list[TrainedHead]:
    """Train every plan over one shared load of the features.

    Args:
        out: the head folder when ``single``, else the parent of one folder per plan.
    """
    out = Path(out)
    for p in plans:  # before any work: never write over something that is not a head
        check_head_destination(out if single else out / p.name)
    device = torch_device(device)
    train = resolve_labels(store, train_table, role="training", skip_missing=skip_missing)
    val = resolve_labels(store, val_table, role="validation", skip_missing=skip_missing)
    crops = [p.settings.max_frames for p in plans]
    data = SequenceData(
        store,
        sorted(set(train.clip_ids) | set(val.clip_ids)),
        max_frames=None if None in crops else max(crops),
        budget_bytes=budget_bytes,
    )
    log(
        f"{len(train.clip_ids)} training and {len(val.clip_ids)} validation clips, "
        f"{data.total_bytes / 2**20:.0f} MiB of sequences "
        f"({'cached in memory' if data.cached else 'streamed from the store'}); "
        f"{len(plans)} heads on {device}"
    )
    return [
        train_one(
            p,
            data,
            train,
            val,
            device=device,
            store=store,
            out=out if single else out / p.name,
            log=log,
        )
        for p in plans
    ]
