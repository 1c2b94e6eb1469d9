"""PNG plots: learning curves of a head; predicted vs true per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# Figures are made as ``Figure`` objects and saved to files: pyplot and its global
# backend are never touched, so a notebook's own plotting is left as it was.


def plot_learning_curves(metrics: dict, path: str | Path, *, title: str = "") -> Path:
    """Per epoch: train loss beside validation MSE (left), validation mean Pearson and
    each target's Pearson (middle); the best epoch marked and labelled in both; for a
    layer-mixing head, its learned layer weights (right)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [e["epoch"] for e in metrics["epochs"]]
    best = metrics["best_epoch"]
    weights = metrics.get("layer_weights")  # a layer-mixing head's learned weights
    fig = Figure(figsize=(14 if weights else 10, 3.8))
    loss_ax, pearson_ax, *rest = fig.subplots(1, 3 if weights else 2)
    if weights:
        (weights_ax,) = rest
        weights_ax.bar(list(weights), list(weights.values()), color="tab:purple")
        weights_ax.axhline(1 / len(weights), color="grey", linestyle=":", label="equal")
        weights_ax.set_xlabel("layer")
        weights_ax.set_ylabel(f"learned weight (epoch {best})")
        weights_ax.legend(fontsize=7)
    loss_ax.plot(epochs, [e["train_loss"] for e in metrics["epochs"]], label="train loss (MSE)")
    loss_ax.plot(
        epochs,
        [e["val"]["mse_mean"] for e in metrics["epochs"]],
        label="validation MSE (clamped predictions)",
    )
    loss_ax.set_ylabel("mean squared error")
    targets = list(metrics["epochs"][0]["val"]["pearson"]) if epochs else []
    for target in targets:
        pearson_ax.plot(
            epochs,
            [e["val"]["pearson"][target] for e in metrics["epochs"]],
            linewidth=0.8,
            alpha=0.7,
            label=target,
        )
    pearson_ax.plot(
        epochs,
        [e["val"]["pearson_mean"] for e in metrics["epochs"]],
        color="black",
        linewidth=2,
        label="mean (the challenge score)",
    )
    pearson_ax.set_ylabel("validation Pearson r")
    for ax in (loss_ax, pearson_ax):
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(title or "learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_predictions(
    pred: np.ndarray, true: np.ndarray, targets: list[str], path: str | Path, *, title: str = ""
) -> Path:
    """Scatter of predicted vs true, one panel per target, with Pearson r in the title."""
    from models.metrics import pearson

    r = pearson(pred, true)
    cols = min(3, len(targets))
    rows = int(np.ceil(len(targets) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, target in enumerate(targets):
        ax = axes[i // cols][i % cols]
        ax.scatter(true[:, i], pred[:, i], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{target}: r={r[i]:.2f}", fontsize=9)
        ax.set_xlabel("true", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
    for j in range(len(targets), rows * cols):
        axes[j // cols][j % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
