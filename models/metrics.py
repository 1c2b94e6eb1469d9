"""The challenge metric (Pearson per target, averaged) and companions (CCC, MSE).

Degenerate inputs have defined values instead of NaN:

- Pearson r is 0.0 when the prediction or the target is constant (or fewer than two
  clips): no linear relation can be measured, and a constant predictor must not score
  well. The mean over targets includes these zeros.
- CCC's denominator is zero only when prediction and target are the same constant:
  that is perfect agreement, 1.0. (One constant side is handled by the formula.)
- A column holding NaN or inf (in prediction or target) has NaN metrics, never a
  defined value: :func:`evaluate` refuses such predictions (:class:`MetricError`).
"""

from __future__ import annotations

import numpy as np


class MetricError(ValueError):
    """Metrics asked of predictions or targets that are not finite numbers."""


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_2d(pred), _as_2d(true)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    return p, t


# Every metric reduces over the clip axis, the second to last: ``(clips, targets)``
# gives ``(targets,)``, and a stack of resamples ``(resamples, clips, targets)`` gives
# ``(resamples, targets)`` in one call (the bootstrap).


def pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r per column of ``(clips, targets)`` arrays (or one column as 1-d)."""
    p, t = _pair(pred, true)
    if p.shape[-2] < 2:
        return np.zeros(p.shape[:-2] + p.shape[-1:])
    pc, tc = p - p.mean(-2, keepdims=True), t - t.mean(-2, keepdims=True)
    denom = np.sqrt((pc**2).sum(-2) * (tc**2).sum(-2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(-2) / denom
    r = np.where(denom > 0, r, 0.0)
    return np.where(_finite(p, t), np.clip(r, -1.0, 1.0), np.nan)


def _finite(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per column: every value of prediction and target is finite."""
    return np.isfinite(p).all(-2) & np.isfinite(t).all(-2)


def constant_columns(values: np.ndarray) -> np.ndarray:
    """Per column of ``(clips, targets)``: True where every value is the same (Pearson
    is undefined there; the metrics report 0)."""
    v = _as_2d(values)
    return (v.max(-2) - v.min(-2)) == 0 if v.shape[-2] else np.ones(v.shape[-1], bool)


def ccc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Lin's concordance correlation per column (population variances)."""
    p, t = _pair(pred, true)
    mp, mt = p.mean(-2, keepdims=True), t.mean(-2, keepdims=True)
    cov = ((p - mp) * (t - mt)).mean(-2)
    denom = p.var(-2) + t.var(-2) + ((mp - mt) ** 2).squeeze(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 2 * cov / denom
    return np.where(_finite(p, t), np.where(denom > 0, value, 1.0), np.nan)


def mse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    p, t = _pair(pred, true)
    return ((p - t) ** 2).mean(-2)


def evaluate(
    pred: np.ndarray,
    true: np.ndarray,
    targets: list[str] | tuple[str, ...],
    *,
    allow_nonfinite: bool = False,
) -> dict:
    """All metrics per target and their means; ``pearson_mean`` is the challenge score.

    Raises:
        MetricError: a prediction or target is NaN or inf (naming the targets), unless
            ``allow_nonfinite`` (then those targets' metrics are NaN: a training epoch
            that diverged is never the best).
    """
    p, t = _pair(pred, true)
    bad = [name for name, ok in zip(targets, _finite(p, t), strict=True) if not ok]
    if bad and not allow_nonfinite:
        raise MetricError(f"predictions or targets hold NaN or inf for {', '.join(bad)}")
    r, c, e = pearson(pred, true), ccc(pred, true), mse(pred, true)
    return {
        "pearson": dict(zip(targets, map(float, r), strict=True)),
        "pearson_mean": float(r.mean()),
        "ccc": dict(zip(targets, map(float, c), strict=True)),
        "ccc_mean": float(c.mean()),
        "mse": dict(zip(targets, map(float, e), strict=True)),
        "mse_mean": float(e.mean()),
    }
