"""PNG plots: learning curves of a head; predicted vs true per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# Figures are made as ``Figure`` objects and saved to files: pyplot and its global
# backend are never touched, so a notebook's own plotting is left as it was.


def plot_learning_curves(metrics: dict, path: str | Path, *, title: str = "") -> Path:
    """Train loss and validation mean Pearson per epoch; the best epoch marked."""
    epochs = [e["epoch"] for e in metrics["epochs"]]
    loss = [e["train_loss"] for e in metrics["epochs"]]
    pearson = [e["val"]["pearson_mean"] for e in metrics["epochs"]]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(epochs, loss, color="tab:blue", label="train loss (MSE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (MSE)", color="tab:blue")
    right = ax.twinx()
    right.plot(epochs, pearson, color="tab:orange", label="val mean Pearson")
    right.axvline(metrics["best_epoch"], color="grey", linestyle=":", label="best epoch")
    right.set_ylabel("validation mean Pearson", color="tab:orange")
    ax.set_title(title or "learning curves")
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
