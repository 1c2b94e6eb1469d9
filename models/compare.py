"""Comparing trained heads side by side (``emi heads compare``).

Reads each head's ``config.json`` and ``metrics.json`` (the validation metrics of its
best epoch); never its weights. Heads are ranked by the challenge score, the mean
Pearson correlation over the targets on the validation clips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from models.errors import HeadError
from models.head_files import HeadCard


@dataclass(frozen=True)
class HeadRow:
    """One head's line of the comparison."""

    name: str
    folder: str
    features: str  # backbone and feature fingerprint the head was trained on
    layer: str
    preset: str
    best_epoch: int
    val_pearson_mean: float  # the challenge score, at the best epoch
    val_ccc_mean: float
    val_pearson: dict[str, float]
    val_ccc: dict[str, float]
    parameters: int
    train_seconds: float | None  # None for heads saved before it was recorded
    # what the validation figures rest on (models.validation_check); None or empty for
    # heads saved before it was recorded
    val_clips: int | None = None
    val_set: str | None = None  # sha256 of the validation clips, targets and labels
    val_interval: tuple[float, float] | None = None  # of val_pearson_mean (bootstrap)
    nearly_constant: tuple[str, ...] = ()  # targets whose predictions barely vary
    negative: tuple[str, ...] = ()  # targets of negative validation Pearson

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    """Which head to prefer, where the heads' validation scores can be compared.

    Attributes:
        head: the best head's name; None where the scores are not comparable.
        comparable: every head was validated on the same clips with the same labels.
        reason: in words, why this head, or why none.
    """

    head: str | None
    comparable: bool
    reason: str


def recommendation(rows: Sequence[HeadRow]) -> Recommendation:
    """The best of ``rows`` (best first, as :func:`compare_heads` gives them) where all
    were validated on one set (their ``val_set``); otherwise none, saying why: a score
    on 12 clips and a score on 48 others measure different things."""
    if not rows:
        return Recommendation(None, True, "no heads")
    unknown = [r.name for r in rows if r.val_set is None]
    if len(rows) > 1 and unknown:
        return Recommendation(
            None,
            False,
            f"{_names(unknown)} {'does' if len(unknown) == 1 else 'do'} not record which "
            "clips validated them (trained before emi recorded it), so the scores may rest "
            "on different clips: retrain them, or compare the heads on one labelled set "
            "with emi evaluate",
        )
    sets: dict[str, list[HeadRow]] = {}
    for r in rows:
        sets.setdefault(r.val_set, []).append(r)
    if len(sets) > 1:
        groups = "; ".join(
            f"{_names([r.name for r in group])} on {_clips(group[0].val_clips)}"
            for group in sets.values()
        )
        return Recommendation(
            None,
            False,
            f"the heads were validated on {len(sets)} different sets of clips ({groups}), "
            "so their scores are not comparable: compare them on one labelled set with "
            "emi evaluate",
        )
    best = rows[0]
    if len(rows) == 1:
        return Recommendation(
            best.name, True, f"the only head (validated on {_clips(best.val_clips)})"
        )
    return Recommendation(
        best.name,
        True,
        f"the best validation score of {len(rows)} heads validated on the same "
        f"{_clips(best.val_clips)}",
    )


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _clips(count: int | None) -> str:
    return "clips (how many not recorded)" if count is None else f"{count} clips"


def layer_choice(layers: tuple[int | None, ...]) -> str:
    """A head's layers as the table shows them: ``last``, ``6``, ``weighted(0-12)``."""
    if len(layers) == 1:
        return "last" if layers[0] is None else str(layers[0])
    numbers = [k for k in layers if k is not None]
    span = (
        f"{numbers[0]}-{numbers[-1]}"
        if numbers == list(range(numbers[0], numbers[-1] + 1))
        else ",".join(map(str, numbers))
    )
    return f"weighted({span})"


def find_heads(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Head folders: each path that is one, or the head folders found below it."""
    from manifests.atomic import clean_leftovers, is_leftover

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise HeadError(f"{path}: no such folder")
        if is_leftover(path):
            raise HeadError(f"{path}: the temporary of an interrupted write, not a head")
        clean_leftovers(path)  # what killed trainings left beside the heads
        if is_head(path):
            found.append(path)
            continue
        below = sorted(
            c.parent
            for c in path.rglob("config.json")
            if is_head(c.parent) and not _hidden_below(c.parent, path)
        )
        if not below:
            raise HeadError(f"{path}: no head folders in it (config.json + model.safetensors)")
        found.extend(below)
    return list(dict.fromkeys(p.resolve() for p in found))


def _hidden_below(folder: Path, top: Path) -> bool:
    """A folder below ``top`` whose path has a hidden part (``.a.partial-*`` left by an
    interrupted write, ``.git``, ...): never a head to list."""
    return any(part.startswith(".") for part in folder.relative_to(top).parts)


def is_head(folder: Path) -> bool:
    """A head folder: ``config.json`` and ``model.safetensors``."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def compare_heads(paths: Sequence[str | os.PathLike]) -> list[HeadRow]:
    """Every head found under ``paths``, best first (validation mean Pearson).

    Raises:
        HeadError: a path holds no head, or a head's config or metrics are unreadable.
    """
    rows = [_row(folder) for folder in find_heads(paths)]
    return sorted(rows, key=lambda r: (-r.val_pearson_mean, r.name, r.folder))


def _row(folder: Path) -> HeadRow:
    try:
        card = HeadCard.from_dict(
            json.loads((folder / "config.json").read_text()), str(folder / "config.json")
        )
    except HeadError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HeadError(f"{folder / 'config.json'}: malformed head config ({err})") from err
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        best = metrics["epochs"][card.best_epoch - 1]["val"]
        pearson = {k: float(v) for k, v in best["pearson"].items()}
        ccc = {k: float(v) for k, v in best["ccc"].items()}
        pearson_mean, ccc_mean = float(best["pearson_mean"]), float(best["ccc_mean"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise HeadError(
            f"{folder / 'metrics.json'}: missing or malformed metrics ({err}); retrain the head"
        ) from err
    seconds = card.training.get("seconds")
    validation = metrics.get("validation") if isinstance(metrics, dict) else None
    validation = validation if isinstance(validation, dict) else {}
    interval = validation.get("pearson_mean") or {}
    clips = validation.get("clips", card.training.get("val_clips"))
    return HeadRow(
        name=card.name or folder.name,
        folder=str(folder),
        features="+".join(
            f"{ref.feature_set or (Path(ref.spec.backbone.ref).name if ref.spec else '?')}"
            f"@{ref.fingerprint[:12]}"
            for ref in card.feature_refs
        ),
        layer=layer_choice(card.head.layers),
        preset=card.preset,
        best_epoch=card.best_epoch,
        val_pearson_mean=pearson_mean,
        val_ccc_mean=ccc_mean,
        val_pearson=pearson,
        val_ccc=ccc,
        parameters=card.parameters,
        train_seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
        val_clips=clips if isinstance(clips, int) else None,
        val_set=validation.get("set_sha256"),
        val_interval=(
            (float(interval["low"]), float(interval["high"]))
            if "low" in interval and "high" in interval
            else None
        ),
        nearly_constant=tuple(validation.get("nearly_constant", ())),
        negative=tuple(t for t, r in pearson.items() if r < 0),
    )


def comparison_table(rows: list[HeadRow]) -> str:
    """A plain-text table, one line per head, best first, then the best head's folder."""
    targets = list(dict.fromkeys(t for r in rows for t in r.val_pearson))
    short = {t: t.split()[0][:5] for t in targets}
    header = ["head", "features", "layer", "preset", "epoch", "Pearson", "CCC"]
    header += [f"r:{short[t]}" for t in targets] + ["params", "train s"]
    lines = [header]
    for r in rows:
        lines.append(
            [
                r.name,
                r.features,
                r.layer,
                r.preset,
                str(r.best_epoch),
                f"{r.val_pearson_mean:.4f}",
                f"{r.val_ccc_mean:.4f}",
                *(f"{r.val_pearson[t]:.3f}" if t in r.val_pearson else "-" for t in targets),
                f"{r.parameters:,}",
                "-" if r.train_seconds is None else f"{r.train_seconds:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(
            cell.ljust(w) if i < 4 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
    best, chosen = rows[0], recommendation(rows)
    if not chosen.comparable:
        return f"{text}\nnot comparable: {chosen.reason}"
    return f"{text}\nbest: {best.name} ({best.val_pearson_mean:.4f}) in {best.folder}"


def comparison_figure(rows: list[HeadRow], path: str | os.PathLike) -> Path:
    """A PNG: each head's mean validation Pearson (bar) and per-target Pearson (one
    marker and colour per target), the legend beside the axes."""
    fig = comparison_plot(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def comparison_plot(rows: list[HeadRow]):
    """The ``matplotlib`` Figure of :func:`comparison_figure`."""
    from matplotlib.figure import Figure

    from models.plots import LEGEND_POINTS, PALETTE, style

    shown = list(reversed(rows))  # best at the top
    fig = Figure(figsize=(9, 1.4 + 0.45 * len(shown)))
    ax = fig.add_subplot()
    positions = range(len(shown))
    ax.barh(positions, [r.val_pearson_mean for r in shown], color="#c6dbef", label="mean")
    targets = list(dict.fromkeys(t for r in rows for t in r.val_pearson))
    for k, target in enumerate(targets):
        look = style(k)
        ax.scatter(
            [r.val_pearson.get(target, float("nan")) for r in shown],
            positions,
            s=22,
            marker=look["marker"],
            color=PALETTE[k % len(PALETTE)],
            label=target,
            zorder=3,
        )
    ax.set_yticks(list(positions), [r.name for r in shown])
    ax.set_xlabel("validation Pearson r at the best epoch (-1 to 1; higher is better)")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.legend(fontsize=LEGEND_POINTS, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_title(
        f"{len(shown)} head{'s' if len(shown) != 1 else ''} compared: the bar is the mean "
        "over targets (the challenge score), the markers each target",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
