"""Heads trained on stored features: training, prediction, evaluation (reading stores
only; scoring audio folders, which extracts, is :mod:`service`).

Public API (imported on first use, so ``import models`` stays light):

    from models import train, predict
    train("feats.zarr", "train_split.csv", "valid_split.csv", "heads/paper")
    predict("feats.zarr", ["heads/paper"], output="predictions.csv")

See the docs' "Python API" page (docs/python-api.md) for a walk through.
"""

from __future__ import annotations

from featurestore.exports import lazy_exports

_EXPORTS = {
    "train": "models.trainer",
    "HeadPlan": "models.training",
    "TrainedHead": "models.training",
    "plans_from_grid": "models.training",
    "TrainSettings": "models.options",
    "PRESETS": "models.options",
    "predict": "models.prediction",
    "Predictions": "models.prediction",
    "load_heads": "models.prediction",
    "evaluate_heads": "models.evaluation",
    "compare_heads": "models.compare",
    "HeadRow": "models.compare",
    "Evaluation": "models.evaluation",
    "load_head": "models.head_files",
    "LoadedHead": "models.head_files",
    "evaluate": "models.metrics",
    "pearson": "models.metrics",
    "ccc": "models.metrics",
    "mse": "models.metrics",
    "StoreDataset": "models.dataset",
    "HeadError": "models.errors",
    "SettingsError": "models.errors",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
