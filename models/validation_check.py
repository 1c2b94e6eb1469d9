"""What a head's validation figures rest on, recorded when it is trained (its
``metrics.json``, ``validation``): which clips (an id of the set: clip ids, targets and
labels), how many, the bootstrap interval of the mean Pearson, and the targets whose
figures mislead: predictions that barely vary (Pearson of a near-constant is noise) and
negative correlations (worse than predicting a constant).

Two heads' validation scores compare only when their sets are the same
(:func:`models.compare.recommendation`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

NEARLY_CONSTANT = 0.1  # predictions whose std is under this share of the labels' std
RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0


def validation_set_id(clip_ids: Sequence[str], targets: Sequence[str], labels: np.ndarray) -> str:
    """sha256 of the validation set: its clip ids (sorted), targets and label values
    ``(clips, targets)`` (float32). Equal ids: the same clips with the same labels."""
    order = np.argsort(np.asarray(clip_ids, dtype=object).astype(str), kind="stable")
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(clip_ids)).encode())
    digest.update(b"\0" + "\n".join(targets).encode() + b"\0")
    digest.update(np.ascontiguousarray(np.asarray(labels, np.float32)[order]).tobytes())
    return digest.hexdigest()


def check_validation(
    pred: np.ndarray, true: np.ndarray, targets: Sequence[str], clip_ids: Sequence[str]
) -> dict:
    """The ``validation`` record of a head from its validation predictions (clamped,
    ``(clips, targets)``) and labels: ``clips``, ``set_sha256``, ``pearson_mean`` (value
    and bootstrap interval), per target its Pearson, prediction mean and std and label
    std, and the lists ``nearly_constant`` and ``negative``."""
    from models.bootstrap import bootstrap_indices, score_head

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    indices = bootstrap_indices(len(clip_ids), RESAMPLES, SEED)
    scores, _ = score_head("head", pred, true, targets, indices, CONFIDENCE)
    per_target = {}
    for k, t in enumerate(targets):
        per_target[t] = {
            "pearson": scores.per_target["pearson"][t].value,
            "pred_mean": float(pred[:, k].mean()),
            "pred_std": float(pred[:, k].std()),
            "label_std": float(true[:, k].std()),
        }
    return {
        "clips": len(clip_ids),
        "set_sha256": validation_set_id(clip_ids, targets, true),
        "pearson_mean": scores.means["pearson"].to_dict(),
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "targets": per_target,
        "nearly_constant": [
            t for t, v in per_target.items() if v["pred_std"] <= NEARLY_CONSTANT * v["label_std"]
        ],
        "negative": [t for t, v in per_target.items() if v["pearson"] < 0],
    }
