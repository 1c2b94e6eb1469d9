"""A labelled corpus of synthesized speech (espeak-ng), split by voice.

Each clip is a random English sentence spoken by one voice (an espeak-ng language
voice with a variant: ``en-us+f3``, ``en-gb-scotland+m2``, ...) with three hidden
factors in [0, 1]: **pitch** (espeak-ng's ``-p`` 15-85, relative to the voice's own
pitch), **rate** (``-s`` 110-240 words per minute) and **pauses** (the gap between
words, ``-g`` 0-30 units of 10 ms, and one longer pause in the sentence). Loudness
(``-a``) is random and carries no information. The six targets are the same fixed
functions of the factors as :mod:`manifests.synthetic`'s, plus noise.

The splits hold disjoint voices: the validation and test voices are never heard in
training, so a head must generalise across speakers, as on real data. The audio is
espeak-ng's own WAV (22,050 Hz, 16-bit), which emi resamples on read.

It measures whether features carry prosody from audio to a head across voices; it says
nothing about emotion recognition. Needs the ``espeak-ng`` program (Debian:
``apt-get install espeak-ng``; ``./run test`` installs it where it can).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.records import EMOTIONS, ManifestError
from manifests.synthetic import factor_targets

LANGUAGE_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4", "f5", "klatt")
_WORD_TEXT = (
    "the a morning river garden window letter market winter summer evening story "
    "mountain village station kitchen doctor teacher family friend neighbour brother "
    "sister mother father child people water light music paper table corner street "
    "city country island forest ocean bridge road train ship plane house room door "
    "walked found carried opened closed watched heard remembered noticed believed "
    "wanted needed brought taught learned painted counted answered followed reached "
    "quietly slowly quickly gently suddenly finally always never often almost nearly "
    "bright dark warm cold old young small large quiet busy empty full early late "
    "green blue golden silver heavy light simple strange happy tired careful certain "
    "with under over behind beside before after near across through about into from "
    "and but because while when then so yet"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class SpokenClip:
    """One clip's recipe: its voice, factors and espeak-ng settings."""

    clip_id: str
    voice: str  # espeak-ng's -v: language voice + variant
    pitch: float
    rate: float
    pauses: float
    text: str
    amplitude: int  # espeak-ng's -a (uninformative)

    def command(self, wav: Path) -> list[str]:
        return [
            "espeak-ng",
            "-v",
            self.voice,
            "-p",
            str(int(round(15 + 70 * self.pitch))),
            "-s",
            str(int(round(110 + 130 * self.rate))),
            "-g",
            str(int(round(30 * self.pauses))),
            "-a",
            str(self.amplitude),
            "-w",
            str(wav),
            self.text,
        ]


def espeak_program() -> str:
    """The espeak-ng program's path.

    Raises:
        ManifestError: espeak-ng is not installed (naming how to install it).
    """
    program = shutil.which("espeak-ng")
    if program is None:
        raise ManifestError(
            "the spoken corpus needs the espeak-ng program, which is not on PATH; install "
            "it (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)"
        )
    return program


def voices(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct voices (language voice + variant), in random order."""
    pool = [f"{lang}+{variant}" for lang in LANGUAGE_VOICES for variant in VARIANTS]
    if count > len(pool):
        raise ManifestError(f"the spoken corpus has {len(pool)} voices; asked for {count}")
    return [pool[i] for i in rng.permutation(len(pool))[:count]]


def _sentence(rng: np.random.Generator, words: int, pause_at: int | None) -> str:
    chosen = [WORDS[i] for i in rng.integers(0, len(WORDS), size=words)]
    if pause_at is not None:  # a comma and a full stop: a longer pause mid-sentence
        chosen[pause_at] += "."
    return " ".join(chosen)


def plan_corpus(
    *,
    clips: int,
    seed: int,
    voices_per_split: dict[str, int],
    words: tuple[int, int] = (5, 12),
) -> dict[str, list[SpokenClip]]:
    """The clips of each split (split name -> clips), each split with its own voices."""
    rng = np.random.default_rng(seed)
    chosen = voices(sum(voices_per_split.values()), rng)
    total_voices = len(chosen)
    plans: dict[str, list[SpokenClip]] = {}
    start = 0
    for split, count in voices_per_split.items():
        split_voices = chosen[start : start + count]
        start += count
        share = round(clips * count / total_voices)
        plans[split] = []
        for _ in range(share):
            pitch, rate, pauses = (float(v) for v in rng.uniform(0, 1, size=3))
            length = int(rng.integers(words[0], words[1] + 1))
            # more pauses: a full stop in the sentence, more often
            pause_at = int(rng.integers(1, length - 1)) if rng.uniform() < pauses else None
            index = sum(len(p) for p in plans.values())
            plans[split].append(
                SpokenClip(
                    clip_id=f"s{index:05d}",
                    voice=split_voices[int(rng.integers(0, len(split_voices)))],
                    pitch=pitch,
                    rate=rate,
                    pauses=pauses,
                    text=_sentence(rng, length, pause_at),
                    amplitude=int(rng.integers(60, 181)),
                )
            )
    return plans


def write_spoken_corpus(
    folder: str | Path,
    *,
    clips: int = 300,
    seed: int = 0,
    voices_per_split: dict[str, int] | None = None,
    label_noise: float = 0.03,
    workers: int = 4,
) -> dict[str, Path]:
    """Write ``audio/<id>.wav`` (espeak-ng) and ``<split>_split.csv`` label files
    (challenge format), plus ``voices.csv`` (clip id, split, voice, factors).

    Args:
        clips: about this many clips in all, shared by the splits in proportion to
            their voices.
        voices_per_split: split name -> number of voices (default train 16, valid 6,
            test 6); no voice is in two splits.
        label_noise: standard deviation of the noise added to each target (then
            clipped to [0, 1]).

    Returns:
        Split name -> its label file.

    Raises:
        ManifestError: espeak-ng is missing or fails on a clip (naming it).
    """
    espeak_program()
    folder = Path(folder)
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(
        clips=clips,
        seed=seed,
        voices_per_split=voices_per_split or {"train": 16, "valid": 6, "test": 6},
    )
    every = [c for split in plans.values() for c in split]

    def speak(clip: SpokenClip) -> None:
        done = subprocess.run(clip.command(audio / f"{clip.clip_id}.wav"), capture_output=True)
        if done.returncode != 0:
            raise ManifestError(
                f"espeak-ng failed on clip {clip.clip_id} (voice {clip.voice}): "
                f"{done.stderr.decode(errors='replace').strip()[:300]}"
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(speak, every))
    rng = np.random.default_rng(seed + 1)
    files = {}
    for split, members in plans.items():
        path = folder / f"{split}_split.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Filename", *EMOTIONS])
            for clip in members:
                values = np.array(factor_targets(clip.pitch, clip.rate, clip.pauses))
                values = np.clip(values + label_noise * rng.standard_normal(len(values)), 0, 1)
                writer.writerow([clip.clip_id, *(f"{v:.4f}" for v in values)])
        files[split] = path
    with (folder / "voices.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "split", "voice", "pitch", "rate", "pauses"])
        for split, members in plans.items():
            for c in members:
                writer.writerow(
                    [
                        c.clip_id,
                        split,
                        c.voice,
                        f"{c.pitch:.4f}",
                        f"{c.rate:.4f}",
                        f"{c.pauses:.4f}",
                    ]
                )
    return files
