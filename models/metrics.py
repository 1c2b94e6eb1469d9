"""The challenge metric (Pearson per target, averaged) and companions (CCC, MSE).

Degenerate inputs have defined values instead of NaN:

- Pearson r is 0.0 when the prediction or the target is constant (or fewer than two
  clips): no linear relation can be measured, and a constant predictor must not score
  well. The mean over targets includes these zeros.
- CCC's denominator is zero only when prediction and target are the same constant:
  that is perfect agreement, 1.0. (One constant side is handled by the formula.)
"""

from __future__ import annotations

import numpy as np


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
    return np.clip(r, -1.0, 1.0)


def ccc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Lin's concordance correlation per column (population variances)."""
    p, t = _pair(pred, true)
    mp, mt = p.mean(-2, keepdims=True), t.mean(-2, keepdims=True)
    cov = ((p - mp) * (t - mt)).mean(-2)
    denom = p.var(-2) + t.var(-2) + ((mp - mt) ** 2).squeeze(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 2 * cov / denom
    return np.where(denom > 0, value, 1.0)


def mse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    p, t = _pair(pred, true)
    return ((p - t) ** 2).mean(-2)


def evaluate(pred: np.ndarray, true: np.ndarray, targets: list[str] | tuple[str, ...]) -> dict:
    """All metrics per target and their means; ``pearson_mean`` is the challenge score."""
    r, c, e = pearson(pred, true), ccc(pred, true), mse(pred, true)
    return {
        "pearson": dict(zip(targets, map(float, r), strict=True)),
        "pearson_mean": float(r.mean()),
        "ccc": dict(zip(targets, map(float, c), strict=True)),
        "ccc_mean": float(c.mean()),
        "mse": dict(zip(targets, map(float, e), strict=True)),
        "mse_mean": float(e.mean()),
    }
