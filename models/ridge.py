"""Ridge regression in closed form, its penalty chosen by leave-one-out cross-validation.

The ``mean-linear`` head's solver. For training inputs ``x (clips, features)`` and
targets ``y (clips, targets)``, with an unpenalised intercept, every penalty ``alpha``
of a grid is scored, for each target, by the mean squared leave-one-out error over the
clips, computed exactly from one SVD of the centred inputs (the hat matrix
``H = U diag(s^2 / (s^2 + alpha)) U^T + 1/n``; the left-out residual of clip ``i`` is
``(y_i - yhat_i) / (1 - H_ii)``); each target gets the solution at its best penalty
(targets differ in how predictable they are: one penalty for all over-fits the weak
ones or under-fits the strong ones). This is what scikit-learn's
``RidgeCV(alphas, fit_intercept=True, alpha_per_target=True)`` does in its default
(efficient leave-one-out) mode; the tests hold the two equal.

Only the training split is used: the validation labels never choose the penalty.
Computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 10^-2 .. 10^6 in half decades: standardized features of a few hundred to a few
# thousand dimensions and clips want penalties around 10^1..10^4.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 17))


@dataclass(frozen=True)
class RidgeFit:
    """A solved ridge regression: ``y = x @ weights + bias``.

    Attributes:
        weights: ``(features, targets)``.
        bias: ``(targets,)``.
        alpha: ``(targets,)`` the penalty chosen for each target.
        alphas: the penalties tried.
        loo_mse: ``(len(alphas), targets)`` mean squared leave-one-out error of each
            penalty, per target.
    """

    weights: np.ndarray
    bias: np.ndarray
    alpha: np.ndarray
    alphas: tuple[float, ...]
    loo_mse: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(clips, features)`` -> ``(clips, targets)``."""
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias

    @property
    def at_edge(self) -> bool:
        """A target's penalty is the grid's smallest or largest (the grid may be short)."""
        edges = (min(self.alphas), max(self.alphas))
        return len(self.alphas) > 1 and any(a in edges for a in self.alpha)


def fit_ridge(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS
) -> RidgeFit:
    """Ridge regression of ``y (clips, targets)`` on ``x (clips, features)`` with an
    intercept, each target's penalty chosen from ``alphas`` by its leave-one-out mean
    squared error.

    Raises:
        ValueError: fewer than 3 clips, shapes that disagree, non-finite values or
            penalties that are not positive.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"ridge: inputs {x.shape} and targets {y.shape} do not pair up")
    if len(x) < 3:
        raise ValueError(f"ridge: needs at least 3 training clips, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ridge: inputs or targets hold NaN or inf")
    alphas = tuple(float(a) for a in alphas)
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"ridge: penalties must be positive, got {alphas}")
    n = len(x)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    s2 = s**2
    uty = u.T @ yc  # (rank, targets)
    errors = np.empty((len(alphas), y.shape[1]))
    for row, alpha in enumerate(alphas):
        shrink = s2 / (s2 + alpha)
        fitted = u @ (shrink[:, None] * uty)  # centred predictions
        leverage = (u**2) @ shrink + 1.0 / n
        residual = (yc - fitted) / (1.0 - leverage)[:, None]
        errors[row] = np.mean(residual**2, axis=0)
    best = np.argmin(errors, axis=0)  # per target; the first of equal errors
    chosen = np.array([alphas[b] for b in best])
    # each target's weights at its own penalty: V diag(s / (s^2 + alpha_t)) U^T y_t
    weights = vt.T @ ((s[:, None] / (s2[:, None] + chosen[None, :])) * uty)
    return RidgeFit(
        weights=weights,
        bias=y_mean - x_mean @ weights,
        alpha=chosen,
        alphas=alphas,
        loo_mse=errors,
    )
