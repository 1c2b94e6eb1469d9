"""Audio from video and audio containers (mp4, mkv, webm, avi, mov, m4a, aac, opus).

Decoded with PyAV (FFmpeg's libraries, bundled with its wheels: no system FFmpeg is
needed). The first audio stream is used; a file without one is reported as such. Files
that soundfile reads (wav, flac, ogg, mp3) do not come here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from manifests.records import CONTAINER_EXTENSIONS

# PyAV sample formats (packed or planar "p") -> numpy dtype and the scale to [-1, 1).
_FORMATS = {
    "u8": (np.uint8, 2.0**-7),
    "s16": (np.int16, 2.0**-15),
    "s32": (np.int32, 2.0**-31),
    "flt": (np.float32, 1.0),
    "dbl": (np.float64, 1.0),
}


class ContainerError(ValueError):
    """A container that gives no usable audio; the message is the reason."""


@dataclass(frozen=True)
class ContainerAudio:
    """The first audio stream of a container, decoded."""

    samples: np.ndarray  # (frames, channels) in the stream's sample format
    scale: float  # multiply by this (after float conversion) to get [-1, 1)
    offset: float  # subtract first (unsigned 8-bit: 128)
    sample_rate_hz: int
    channels: int
    duration_s: float  # of the stream, from the container (else the decoded length)


@dataclass(frozen=True)
class ContainerInfo:
    sample_rate_hz: int
    channels: int
    duration_s: float


def is_container(path: str) -> bool:
    return str(path).lower().endswith(CONTAINER_EXTENSIONS)


def _open(source: str | BinaryIO):
    import av

    try:
        return av.open(source, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise ContainerError(f"unreadable as a media container ({err})") from err


def _audio_stream(container):
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise ContainerError(
            f"no audio stream (streams: {', '.join(kinds)}); a video without sound cannot be scored"
        )
    return container.streams.audio[0]


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


def probe_container(source: str | BinaryIO) -> ContainerInfo:
    """Rate, channels and duration of the first audio stream, from the headers."""
    with _open(source) as container:
        stream = _audio_stream(container)
        rate = int(stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 0)
        duration = _duration(container, stream)
        if duration is None:  # no duration in the headers (e.g. raw ADTS): decode to count
            samples = sum(frame.samples for frame in container.decode(stream))
            duration = samples / rate if rate else 0.0
        return ContainerInfo(rate, channels, duration)


def read_container(source: str | BinaryIO, *, max_seconds: float | None = None) -> ContainerAudio:
    """Decode the first audio stream (its first ``max_seconds`` when given).

    Raises:
        ContainerError: not a media container, no audio stream, or nothing decoded.
    """
    import av

    with _open(source) as container:
        stream = _audio_stream(container)
        rate = int(stream.codec_context.sample_rate or 0)
        wanted = math.ceil(max_seconds * rate) if max_seconds and rate else None
        pieces: list[np.ndarray] = []
        got, fmt = 0, None
        try:
            for frame in container.decode(stream):
                fmt = frame.format.name.rstrip("p")
                data = frame.to_ndarray()
                channels = len(frame.layout.channels)
                # planar: (channels, n); packed: (1, n * channels)
                data = data.T if frame.format.is_planar else data.reshape(-1, channels)
                pieces.append(data)
                got += len(data)
                if wanted is not None and got >= wanted:
                    break
        except av.error.FFmpegError as err:
            raise ContainerError(f"audio stream cannot be decoded ({err})") from err
        if not pieces or fmt not in _FORMATS:
            raise ContainerError(
                "no audio samples decoded" if not pieces else f"sample format {fmt!r}"
            )
        samples = np.concatenate(pieces)
        if wanted is not None:
            samples = samples[:wanted]
        rate = rate or int(frame.sample_rate)
        duration = _duration(container, stream) or got / rate
        dtype, scale = _FORMATS[fmt]
        return ContainerAudio(
            samples=samples.astype(dtype, copy=False),
            scale=scale,
            offset=128.0 if fmt == "u8" else 0.0,
            sample_rate_hz=rate,
            channels=samples.shape[1],
            duration_s=float(duration),
        )
