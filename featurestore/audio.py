"""Decoding a clip into what the backbone reads: 16 kHz mono float32, normalised.

Decoding uses soundfile (libsndfile: wav, flac, ogg, mp3) or, for video and audio
containers (mp4, mkv, webm, avi, mov, m4a, aac, opus), PyAV on the first audio stream
(``manifests.containers``); it mixes channels down by their mean, resamples with soxr
(high quality) and normalises to zero mean and unit variance over the clip's real
samples, exactly as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for one
unpadded clip.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from featurestore.frames import (  # noqa: F401  (re-exported: the decoder's rate and grid)
    FRAME_HOP_SAMPLES,
    FRAME_WINDOW_SAMPLES,
    FRAMES_PER_SECOND,
    SAMPLE_RATE_HZ,
    frames_for_samples,
)
from manifests.containers import ContainerError, is_container, read_container
from manifests.sources import UnsafeSource, broken_link, is_url, open_source, source_exists

NORM_EPS = 1e-7  # the variance floor Wav2Vec2FeatureExtractor uses


class AudioError(ValueError):
    """A clip that cannot be turned into backbone input; the message is the reason."""


@dataclass(frozen=True)
class DecodedClip:
    """A clip ready for the backbone."""

    samples: np.ndarray  # (samples,) float32 at 16 kHz, normalised
    source_hz: int
    channels: int
    duration_s: float  # of the source file, before any crop
    sha256: str = ""  # of the file's bytes that were decoded


def normalise(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over ``samples`` (float32), as the processor does.

    Bit-identical to ``(x - x.mean()) / np.sqrt(x.var() + 1e-7)`` (the same float32
    sums), with two fewer passes over the clip.

    Raises:
        AudioError: the samples are so large that their mean or variance overflows
            float32 (a per-clip failure, never a clip stored as silence).
    """
    x = samples.astype(np.float32, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        centred = x - x.mean()
        variance = np.square(centred).sum() / centred.size
        if not np.isfinite(variance):
            peak = float(np.abs(x).max())
            raise AudioError(
                f"sample values too large to normalise (peak |x| = {peak:.3g}; the variance "
                "overflows float32); rescale the file to [-1, 1]"
            )
        centred /= np.sqrt(variance + NORM_EPS)
    return centred


def check_wav_truncation(f: BinaryIO, size: int) -> None:
    """Raise if a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile silently reads the part that is there; a truncated upload should be
    reported, not stored as a shorter clip. ``f`` is rewound afterwards.
    """
    try:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        endian = "<" if head[:4] == b"RIFF" else ">"
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size != 0xFFFFFFFF and chunk_size > available:
                    raise AudioError(
                        f"truncated WAV: header declares {chunk_size} bytes of audio, "
                        f"the file holds {available}; re-export or re-upload it"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
    finally:
        f.seek(0)


def decode_clip(
    path: str | Path,
    *,
    max_seconds: float | None = None,
    expected_sha256: str | None = None,
    exact: bool = False,
) -> DecodedClip:
    """Read, hash, mix down, resample, crop and normalise one clip.

    The file is read once into memory; its sha256 is taken over those bytes and the
    decoder reads the same bytes, so the hash always names the audio decoded.

    Args:
        path: an audio file soundfile can read (or a container PyAV reads).
        max_seconds: keep only the first ``max_seconds`` (the paper's 12 s crop).
        expected_sha256: the content's hash when the folder was listed; a file whose
            bytes differ now is refused (never stored under the listed hash).
        exact: ``path`` was resolved when listed: a symbolic link swapped in since is
            not followed (``manifests.sources.open_source``).

    Raises:
        AudioError: unreadable, not a regular file, changed since listed, truncated,
            empty, non-finite or shorter than one frame.
    """
    data = _read_bytes(path, exact)
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 and sha256 != expected_sha256:
        raise AudioError(
            f"changed since the folder was listed (its content's sha256 was "
            f"{expected_sha256[:12]}, the bytes read now are {sha256[:12]}); nothing was "
            "stored from it. Run the job again once the file stays as it is"
        )
    source = io.BytesIO(data)
    if is_container(path):
        clip = _decode_container(source, max_seconds)
    else:
        check_wav_truncation(source, len(data))
        clip = _decode(source, max_seconds)
    return replace(clip, sha256=sha256)


def _read_bytes(path: str | Path, exact: bool) -> bytes:
    """A clip's whole file, in one read (local files: a regular file, opened without
    waiting and, with ``exact``, without following a link swapped in since listing)."""
    if is_url(path) and not source_exists(path):
        raise AudioError(f"no such file: {path}")
    try:
        with open_source(path, exact=exact) as raw:
            data = raw.read()
    except UnsafeSource as err:
        raise AudioError(str(err)) from None
    except FileNotFoundError:
        raise AudioError(broken_link(path) or f"no such file: {path}") from None
    except OSError as err:
        raise AudioError(
            broken_link(path) or f"cannot be read ({err.strerror or type(err).__name__})"
        ) from None
    if not data:
        raise AudioError("empty file (0 bytes)")
    return data


def _decode(source: BinaryIO | str, max_seconds: float | None) -> DecodedClip:
    try:
        with sf.SoundFile(source) as f:
            source_hz, channels, total = f.samplerate, f.channels, f.frames
            wanted = total
            if max_seconds is not None:
                wanted = min(total, int(np.ceil(max_seconds * source_hz)))
            mono = _read_mono(f, wanted)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        # libsndfile's own words, without the in-memory file object it was given
        why = getattr(err, "error_string", None) or str(err)
        raise AudioError(
            f"unreadable as audio ({why}); check the file is wav, flac, ogg or mp3"
        ) from err
    return _prepare(mono, source_hz, channels, float(total) / float(source_hz), max_seconds)


def _decode_container(source: BinaryIO | str, max_seconds: float | None) -> DecodedClip:
    try:
        audio = read_container(source, max_seconds=max_seconds)
    except ContainerError as err:
        raise AudioError(str(err)) from err
    data = audio.samples
    if audio.offset:
        data = data.astype(np.float32) - np.float32(audio.offset)
    mono = _mix_down(data, audio.scale)
    return _prepare(mono, audio.sample_rate_hz, audio.channels, audio.duration_s, max_seconds)


def _prepare(
    mono: np.ndarray, source_hz: int, channels: int, duration_s: float, max_seconds
) -> DecodedClip:
    """Check, resample to 16 kHz, crop and normalise a mixed-down clip."""
    if mono.size == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(mono).all():
        raise AudioError("contains NaN or infinite samples")
    if source_hz != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, source_hz, SAMPLE_RATE_HZ, quality="HQ")
    if max_seconds is not None:
        mono = mono[: int(round(max_seconds * SAMPLE_RATE_HZ))]
    if len(mono) < FRAME_WINDOW_SAMPLES:
        raise AudioError(
            f"too short: {len(mono)} samples at 16 kHz, fewer than {FRAME_WINDOW_SAMPLES} "
            "(25 ms, one backbone frame)"
        )
    return DecodedClip(
        samples=normalise(mono),
        source_hz=int(source_hz),
        channels=int(channels),
        duration_s=float(duration_s),
    )


def _read_mono(f: sf.SoundFile, frames: int) -> np.ndarray:
    """``frames`` frames of ``f`` as float32, channels mixed down by their mean.

    16-bit files are read as integers and scaled by 2**-15 (exactly what libsndfile's
    float conversion does, at a third of its cost).
    """
    if f.subtype == "PCM_16":
        return _mix_down(f.read(frames=frames, dtype="int16", always_2d=True), 2.0**-15)
    return _mix_down(f.read(frames=frames, dtype="float32", always_2d=True), 1.0)


def _mix_down(data: np.ndarray, scale: float) -> np.ndarray:
    """``(frames, channels)`` samples -> float32 mono: the channels' mean, times ``scale``.

    Channels are added in place (for one or two channels bit-identical to
    ``mean(axis=1)`` of the scaled floats, at five times its speed; no BLAS call, whose
    thread pool would fight the other decoding threads).
    """
    mono = data[:, 0].astype(np.float32)
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    factor = np.float32(scale / data.shape[1])
    if factor != 1:
        mono *= factor
    return mono
