"""A synthetic labelled corpus whose targets depend on audible structure.

Each clip has three hidden factors in [0, 1]: **pitch** (fundamental 90-260 Hz),
**rate** (2-6 syllables per second) and **pauses** (share of the clip that is
silent gaps). Loudness is random and carries no information: per-clip normalisation
removes it. The six targets are fixed functions of the factors plus a little noise:

================  ==========================
Admiration        pitch
Amusement         rate
Determination     1 - pauses
Empathic Pain     (1 - pitch + pauses) / 2
Excitement        (pitch + rate) / 2
Joy               (rate + 1 - pauses) / 2
================  ==========================

It measures whether the pipeline can carry such information from audio to a head; it
says nothing about emotion recognition.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from manifests.records import EMOTIONS

RATE_HZ = 16_000


def factor_targets(pitch: float, rate: float, pauses: float) -> list[float]:
    return [
        pitch,
        rate,
        1 - pauses,
        (1 - pitch + pauses) / 2,
        (pitch + rate) / 2,
        (rate + 1 - pauses) / 2,
    ]


def synth_clip(
    pitch: float, rate: float, pauses: float, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """Voiced syllables at the given pitch and rate, with silent gaps; float32 16 kHz."""
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    f0 = (90 + 170 * pitch) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    voice = sum(np.sin(k * phase) * (0.8**k) for k in range(1, 8))
    syllables_per_s = 2 + 4 * rate
    envelope = np.clip(np.sin(np.pi * syllables_per_s * t), 0, None) ** 2
    gate = np.ones(n)
    silent = int(pauses * 0.5 * n)  # up to half the clip in gaps
    gaps = rng.integers(1, 4)
    for length in np.full(gaps, silent // gaps):
        if length <= 0:
            continue
        start = int(rng.integers(0, max(1, n - length)))
        gate[start : start + length] = 0.0
    gain = 10 ** rng.uniform(-1.5, 0)  # loudness: random, uninformative
    x = gain * voice * envelope * gate + 0.003 * rng.standard_normal(n)
    return x.astype(np.float32)


def write_corpus(
    folder: str | Path,
    *,
    clips: int = 240,
    seed: int = 0,
    splits: tuple[tuple[str, float], ...] = (("train", 0.6), ("valid", 0.2), ("test", 0.2)),
    min_seconds: float = 2.5,
    max_seconds: float = 6.0,
    label_noise: float = 0.03,
) -> dict[str, Path]:
    """Write ``audio/<id>.wav`` and ``<split>_split.csv`` label files (challenge format).

    Returns:
        Split name -> its label file.
    """
    folder = Path(folder)
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(clips):
        pitch, rate, pauses = rng.uniform(0, 1, size=3)
        seconds = rng.uniform(min_seconds, max_seconds)
        clip_id = f"{i:05d}"
        sf.write(
            str(audio / f"{clip_id}.wav"),
            synth_clip(pitch, rate, pauses, seconds, rng),
            RATE_HZ,
            subtype="PCM_16",
        )
        targets = np.clip(
            np.array(factor_targets(pitch, rate, pauses)) + label_noise * rng.standard_normal(6),
            0,
            1,
        )
        rows.append([clip_id, *(f"{v:.4f}" for v in targets)])
    order = rng.permutation(clips)
    files, start = {}, 0
    for index, (name, share) in enumerate(splits):
        count = clips - start if index == len(splits) - 1 else int(round(share * clips))
        path = folder / f"{name}_split.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Filename", *EMOTIONS])
            writer.writerows(rows[j] for j in sorted(order[start : start + count]))
        files[name] = path
        start += count
    return files
