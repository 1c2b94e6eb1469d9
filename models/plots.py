"""PNG plots: learning curves of a head (or a ridge head's penalty search); predicted vs
true per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# Figures are made as ``Figure`` objects and saved to files: pyplot and its global
# backend are never touched, so a notebook's own plotting is left as it was.

# Okabe and Ito's colour-blind-safe palette, each colour with its own line style and
# marker, so targets stay apart in grey print and for colour-blind readers too.
LEGEND_POINTS = 9  # legend text: readable with the image shown at 100%
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")


def style(k: int) -> dict:
    """The colour, line style and marker of series ``k``."""
    return {
        "color": PALETTE[k % len(PALETTE)],
        "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
        "marker": MARKERS[k % len(MARKERS)],
    }


def legend_below(ax, columns: int = 2) -> None:
    """The axes' legend under its x label, outside the data."""
    ax.legend(
        fontsize=LEGEND_POINTS,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=columns,
        frameon=False,
    )


def plot_learning_curves(metrics: dict, path: str | Path, *, title: str = "") -> Path:
    """Write :func:`learning_curves_figure` to ``path`` (PNG)."""
    learning_curves_figure(metrics, title=title).savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def learning_curves_figure(metrics: dict, *, title: str = "") -> Figure:
    """Per epoch: train loss beside validation MSE (left), validation mean Pearson and
    each target's Pearson (middle); the best epoch marked and labelled in both; for a
    layer-mixing head, its learned layer weights (right). Legends sit below the axes."""
    from matplotlib.ticker import MaxNLocator

    epochs = [e["epoch"] for e in metrics["epochs"]]
    best = metrics["best_epoch"]
    weights = metrics.get("layer_weights")  # a layer-mixing head's learned weights
    fig = Figure(figsize=(14 if weights else 10, 4.8))
    loss_ax, pearson_ax, *rest = fig.subplots(1, 3 if weights else 2)
    if weights:
        (weights_ax,) = rest
        weights_ax.bar(list(weights), list(weights.values()), color=PALETTE[0])
        weights_ax.axhline(1 / len(weights), color="grey", linestyle=":", label="equal")
        weights_ax.set_xlabel("layer")
        weights_ax.set_ylabel(f"learned weight (epoch {best})")
        legend_below(weights_ax, 1)
    loss_ax.plot(
        epochs,
        [e["train_loss"] for e in metrics["epochs"]],
        label="train loss (MSE)",
        color=PALETTE[0],
        linestyle="-",
    )
    loss_ax.plot(
        epochs,
        [e["val"]["mse_mean"] for e in metrics["epochs"]],
        label="validation MSE (clamped predictions)",
        color=PALETTE[1],
        linestyle="--",
    )
    loss_ax.set_ylabel("mean squared error")
    targets = list(metrics["epochs"][0]["val"]["pearson"]) if epochs else []
    for k, target in enumerate(targets):
        pearson_ax.plot(
            epochs,
            [e["val"]["pearson"][target] for e in metrics["epochs"]],
            linewidth=1.0,
            markersize=3,
            label=target,
            **style(k),
        )
    pearson_ax.plot(
        epochs,
        [e["val"]["pearson_mean"] for e in metrics["epochs"]],
        color="black",
        linewidth=2.2,
        label="mean (the challenge score)",
    )
    pearson_ax.set_ylabel("validation Pearson r")
    for ax in (loss_ax, pearson_ax):
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    legend_below(loss_ax, 1)
    legend_below(pearson_ax, 2)
    fig.suptitle(title or "learning curves")
    fig.tight_layout()
    return fig


def plot_ridge_penalty(metrics: dict, path: str | Path, *, title: str = "") -> Path:
    """A closed-form ridge head's penalty search: per target, leave-one-out MSE on the
    training clips against the penalty (log scale), the chosen penalty circled (PNG)."""
    ridge = metrics["ridge"]
    fig = Figure(figsize=(7, 4.8))
    ax = fig.subplots()
    for k, (target, errors) in enumerate(ridge["loo_mse"].items()):
        chosen = ridge["alpha"][target]
        ax.plot(
            ridge["alphas"],
            errors,
            label=f"{target} (chosen {chosen:g})",
            linewidth=1.0,
            markersize=3,
            **style(k),
        )
        ax.plot(
            [chosen],
            [errors[ridge["alphas"].index(chosen)]],
            marker="o",
            markersize=9,
            markerfacecolor="none",
            color="grey",
        )
    ax.set_xscale("log")
    ax.set_xlabel("ridge penalty (alpha)")
    ax.set_ylabel("leave-one-out MSE on the training clips")
    val = metrics["epochs"][0]["val"]["pearson_mean"]
    legend_below(ax, 2)
    fig.suptitle(f"{title or 'ridge'}: validation mean Pearson {val:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def plot_predictions(
    pred: np.ndarray, true: np.ndarray, targets: list[str], path: str | Path, *, title: str = ""
) -> Path:
    """Write :func:`predictions_figure` to ``path`` (PNG)."""
    predictions_figure(pred, true, targets, title=title).savefig(path, dpi=100)
    return Path(path)


def predictions_figure(
    pred: np.ndarray, true: np.ndarray, targets: list[str], *, title: str = ""
) -> Figure:
    """Scatter of predicted against true intensity (both on the 0-1 scale), one panel
    per target, titled with its Pearson r and the number of clips."""
    from models.metrics import pearson

    r = pearson(pred, true)
    cols = min(3, len(targets))
    rows = int(np.ceil(len(targets) / cols))
    fig = Figure(figsize=(3.4 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, target in enumerate(targets):
        ax = axes[i // cols][i % cols]
        ax.scatter(true[:, i], pred[:, i], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="predicted = true")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{target}: r = {r[i]:.2f}, n = {len(true)}", fontsize=10)
        ax.set_xlabel("true intensity (0-1)", fontsize=9)
        ax.set_ylabel("predicted intensity (0-1)", fontsize=9)
    for j in range(len(targets), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title or f"predicted against true intensity ({len(true)} clips)")
    fig.tight_layout()
    return fig
