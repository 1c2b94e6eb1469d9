"""Per-dimension input statistics for heads that standardize their inputs.

A head with ``standardize`` applies ``(x - mean) / std`` to each input dimension
(:class:`models.heads.Standardizer`). The statistics come from its training clips only:

- a head that reads frames (``fusion``, ``compact``): over every real frame of every
  training clip (padding never counts; a crop to ``max_frames`` counts the kept frames);
- the ``mean-linear`` head, which reads one mean vector per clip: over the clips' mean
  vectors (the scale the ridge penalty acts on; scikit-learn's ``StandardScaler`` on
  ``hidden_mean``), from the matrix its solver gathers anyway
  (:func:`column_statistics`).

Accumulated in float64 by Chan's pairwise merge of batch means and squared deviations,
so a dimension with a large mean and a small spread keeps its precision. A dimension
that does not vary (std below ``MIN_STD``) gets std 1: it is only centred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.sequences import SequenceData

MIN_STD = 1e-6


@dataclass(frozen=True)
class InputStatistics:
    """``mean`` and ``std``, ``(width,)`` float64, over ``count`` frames or clips."""

    mean: np.ndarray
    std: np.ndarray
    count: int
    over: str  # "frames" or "clips"


class _Running:
    """Running count, mean and sum of squared deviations per dimension (float64)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if len(rows) == 0:
            return
        n, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self, over: str) -> InputStatistics:
        if self.mean is None:
            raise ValueError("input statistics of no data")
        std = np.sqrt(self.m2 / self.count)
        return InputStatistics(self.mean, np.where(std < MIN_STD, 1.0, std), self.count, over)


def input_statistics(
    data: SequenceData,
    clip_ids: list[str],
    *,
    layers: tuple[int | None, ...],
    max_frames: int | None,
    batch_size: int = 64,
) -> InputStatistics:
    """Per-dimension mean and std of the frames a head reads (``layers`` side by side,
    then the VAD outputs), over the real frames of ``clip_ids`` (cropped to
    ``max_frames``)."""
    running = _Running()
    for batch in data.batches(batch_size, clip_ids=clip_ids, max_frames=max_frames, layers=layers):
        frames = batch.frames.numpy()
        for row, length in enumerate(batch.lengths.tolist()):
            running.add(frames[row, :length])  # the real frames only, never padding
    return running.result("frames")


def column_statistics(rows: np.ndarray) -> InputStatistics:
    """Per-dimension mean and std of ``rows (clips, width)``: the mean vectors a
    ``mean-linear`` head reads, already gathered for its solver."""
    running = _Running()
    running.add(rows)
    return running.result("clips")
