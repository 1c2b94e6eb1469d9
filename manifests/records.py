"""The manifest's row: one clip, where it is, what it is, and its labels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Video and audio containers, decoded with PyAV (``manifests.containers``).
CONTAINER_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4a", ".aac", ".opus")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + CONTAINER_EXTENSIONS
EMOTIONS = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")


def planning_seconds(duration_s: float | None) -> float:
    """A clip's duration for planning work (parts, rounds, decoding ahead): unknown,
    zero, negative or not finite counts as 1 s."""
    if duration_s and math.isfinite(duration_s) and duration_s > 0:
        return float(duration_s)
    return 1.0


class ManifestError(ValueError):
    """A manifest problem, with the offending rows in the message."""


def count_of(number: int, noun: str, plural: str | None = None) -> str:
    """``1 clip``, ``2 clips``: a number with its noun in the right form."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def format_examples(items: list, limit: int = 5) -> str:
    """The first ``limit`` items, and how many there are in all when more."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


@dataclass
class ClipRecord:
    """One clip of a manifest.

    ``problem`` is set when the file's header could not be read: the clip stays in the
    manifest so that extraction records it as failed, with that reason.
    """

    clip_id: str
    path: str
    duration_s: float | None = None
    sample_rate_hz: int | None = None
    channels: int | None = None
    sha256: str = ""
    split: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    problem: str = ""

    FIELDS = (
        "clip_id",
        "path",
        "duration_s",
        "sample_rate_hz",
        "channels",
        "sha256",
        "split",
        "problem",
    )

    def to_dict(self) -> dict:
        return {
            "clip_id": self.clip_id,
            "path": self.path,
            "duration_s": self.duration_s,
            "sample_rate_hz": self.sample_rate_hz,
            "channels": self.channels,
            "sha256": self.sha256,
            "split": self.split,
            "problem": self.problem,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClipRecord:
        def number(key, kind):
            value = data.get(key)
            if value in (None, ""):
                return None
            value = kind(float(value))
            return None if isinstance(value, float) and math.isnan(value) else value

        for key in ("clip_id", "path"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise ValueError(f"{key} must be a non-empty text, not {data.get(key)!r}")
        labels = data.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValueError(f"labels must be an object of target: value, not {labels!r}")
        return cls(
            clip_id=data["clip_id"],
            path=data["path"],
            duration_s=number("duration_s", float),
            sample_rate_hz=number("sample_rate_hz", int),
            channels=number("channels", int),
            sha256=str(data.get("sha256") or ""),
            split=str(data.get("split") or ""),
            problem=str(data.get("problem") or ""),
            labels={str(k): float(v) for k, v in labels.items()},
        )
