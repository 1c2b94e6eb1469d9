"""The bootstrap over clips behind every interval emi reports (``emi evaluate``, a
head's validation record): ``resamples`` sets of clips drawn with replacement (seeded),
each metric recomputed on every set, the percentile interval. Needs numpy and the
metrics only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.metrics import ccc, mse, pearson

METRICS = {"pearson": pearson, "ccc": ccc, "mse": mse}
_CHUNK = 100  # resamples evaluated at once (memory: chunk x clips x targets floats)


@dataclass(frozen=True)
class Interval:
    """A point estimate on all clips and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class HeadScores:
    """One head's metrics: per target and their means (``pearson_mean`` is the
    challenge score), each with its interval."""

    head: str
    per_target: dict[str, dict[str, Interval]]  # metric -> target -> interval
    means: dict[str, Interval]  # metric -> interval of the mean over targets

    @property
    def score(self) -> Interval:
        return self.means["pearson"]


def bootstrap_indices(clips: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, clips)`` clip indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, clips, size=(resamples, clips))


def _resampled(metric, pred: np.ndarray, true: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``metric`` on every resample: ``(resamples, targets)``."""
    out = [
        metric(pred[chunk], true[chunk])
        for chunk in (indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK))
    ]
    return np.concatenate(out) if out else np.zeros((0, pred.shape[1]))


def percentile_interval(value: float, samples: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail]) if len(samples) else (value, value)
    return Interval(float(value), float(low), float(high))


def score_head(
    name: str,
    pred: np.ndarray,
    true: np.ndarray,
    targets: Sequence[str],
    indices: np.ndarray,
    confidence: float,
) -> tuple[HeadScores, np.ndarray]:
    """Metrics and intervals of one head's ``(clips, targets)`` predictions; also the
    resampled challenge scores ``(resamples,)`` for paired differences."""
    per_target, means, score_samples = {}, {}, None
    for metric_name, metric in METRICS.items():
        full = metric(pred, true)
        samples = _resampled(metric, pred, true, indices)
        per_target[metric_name] = {
            t: percentile_interval(full[k], samples[:, k], confidence)
            for k, t in enumerate(targets)
        }
        means[metric_name] = percentile_interval(full.mean(), samples.mean(axis=1), confidence)
        if metric_name == "pearson":
            score_samples = samples.mean(axis=1)
    return HeadScores(name, per_target, means), score_samples
