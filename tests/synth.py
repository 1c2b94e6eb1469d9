"""Synthetic test audio, made in numpy: voiced tones with pitch glides, pauses and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def voiced(
    seconds: float, *, rate_hz: int = 16_000, f0_hz: float = 140.0, seed: int = 0, channels: int = 1
) -> np.ndarray:
    """A speech-like signal: harmonics of a gliding pitch, syllable envelope, noise.

    Returns ``(samples,)`` for one channel, else ``(samples, channels)``, float32.
    """
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * rate_hz)))
    t = np.arange(n) / rate_hz
    f0 = f0_hz * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    x = 0.3 * x * envelope + 0.02 * rng.standard_normal(n)
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return x


def write_clip(
    path: str | Path,
    seconds: float,
    *,
    rate_hz: int = 16_000,
    seed: int = 0,
    channels: int = 1,
    subtype: str | None = None,
    f0_hz: float = 140.0,
) -> Path:
    """Write a :func:`voiced` clip; the format follows the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = voiced(seconds, rate_hz=rate_hz, seed=seed, channels=channels, f0_hz=f0_hz)
    sf.write(str(path), data, rate_hz, subtype=subtype)
    return path
