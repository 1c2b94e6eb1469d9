"""Audio from video and audio containers (PyAV): the same audio written as WAV and muxed
into containers decodes equally (lossless codecs) or within a stated error (lossy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from featurestore.audio import AudioError, decode_clip
from featurestore.store import FeatureStore
from manifests import build_manifest
from tests.conftest import read_16k_mono, run_cli
from tests.media import mux_audio, write_video_without_audio
from tests.reference import ReferenceForward, assert_matches
from tests.synth import voiced

RATE = 44_100
SECONDS = 2.5


def _pcm(rate: int, seed: int = 3) -> np.ndarray:
    """2.5 s of stereo 16-bit speech-like audio at ``rate``: ``(frames, 2)`` int16."""
    mono = soxr.resample(voiced(SECONDS, seed=seed), 16_000, rate)
    stereo = np.stack([0.6 * mono, 0.4 * mono], axis=1)
    return np.clip(np.round(stereo * 32767), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    sf.write(str(folder / "reference.wav"), _pcm(RATE), RATE, subtype="PCM_16")
    sf.write(str(folder / "reference48.wav"), _pcm(48_000), 48_000, subtype="PCM_16")
    return folder


LOSSLESS = [
    ("clip.mkv", "flac", False),
    ("clip.mov", "pcm_s16le", False),
    ("clip.m4a", "alac", False),
    ("with_video.mkv", "flac", True),
    ("with_video.avi", "pcm_s16le", True),
]
LOSSY = [  # (name, codec, video, source rate)
    ("clip.mp4", "aac", False, RATE),
    ("with_video.mp4", "aac", True, RATE),
    ("clip.webm", "libopus", False, 48_000),
    ("clip.opus", "libopus", False, 48_000),
]
# Measured at PyAV's default bitrates on this speech-like signal: AAC 27.4 dB, Opus
# 30.5 dB; AAC pads its last frame (the decoded clip is up to 1024 source samples
# longer, after the encoder delay is trimmed by the container's edit list).
LOSSY_MIN_SNR_DB = 25.0
LOSSY_MAX_EXTRA_16K = 1024 * 16_000 // RATE + 1


@pytest.mark.parametrize(("name", "codec", "video"), LOSSLESS)
def test_lossless_containers_decode_exactly_as_the_wav(media, tmp_path, name, codec, video):
    path = mux_audio(tmp_path / name, _pcm(RATE), RATE, codec, video=video)
    decoded = decode_clip(str(path))
    reference = decode_clip(str(media / "reference.wav"))
    np.testing.assert_array_equal(decoded.samples, reference.samples)
    assert (decoded.source_hz, decoded.channels) == (RATE, 2)
    assert decoded.duration_s == pytest.approx(SECONDS, abs=1e-3)


@pytest.mark.parametrize(("name", "codec", "video", "rate"), LOSSY)
def test_lossy_containers_decode_within_the_stated_error(media, tmp_path, name, codec, video, rate):
    path = mux_audio(tmp_path / name, _pcm(rate), rate, codec, video=video)
    decoded = decode_clip(str(path)).samples
    wav = "reference.wav" if rate == RATE else "reference48.wav"
    reference = decode_clip(str(media / wav)).samples
    assert 0 <= len(decoded) - len(reference) <= LOSSY_MAX_EXTRA_16K
    n = len(reference)
    error = decoded[:n] - reference
    snr_db = 10 * np.log10(np.sum(reference**2) / np.sum(error**2))
    assert snr_db >= LOSSY_MIN_SNR_DB, f"{name}: {snr_db:.1f} dB"


def test_a_video_without_audio_is_a_clear_per_clip_failure(tmp_path):
    path = write_video_without_audio(tmp_path / "silent_film.mp4")
    with pytest.raises(AudioError, match="no audio stream"):
        decode_clip(str(path))
    garbage = tmp_path / "not_a_video.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a media file" * 40)
    with pytest.raises(AudioError, match="unreadable as a media container"):
        decode_clip(str(garbage))


def test_manifest_lists_containers_with_durations_from_the_container(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    mux_audio(folder / "talk.mp4", _pcm(RATE), RATE, "aac", video=True)
    mux_audio(folder / "voice.m4a", _pcm(RATE), RATE, "alac")
    write_video_without_audio(folder / "silent.mp4")
    records = {r.clip_id: r for r in build_manifest(folder)}
    assert set(records) == {"talk", "voice", "silent"}
    for clip_id in ("talk", "voice"):
        r = records[clip_id]
        assert (r.sample_rate_hz, r.channels, r.problem) == (RATE, 2, "")
        assert r.duration_s == pytest.approx(SECONDS, abs=0.03)
    assert "no audio stream" in records["silent"].problem


def test_extract_reads_containers_and_fails_a_silent_video_cleanly(media, tmp_path, tiny_backbone):
    folder = tmp_path / "corpus"
    folder.mkdir()
    mux_audio(folder / "lossless.mkv", _pcm(RATE), RATE, "flac", video=True)
    mux_audio(folder / "lossy.mp4", _pcm(RATE, seed=5), RATE, "aac", video=True)
    write_video_without_audio(folder / "silent.mp4")
    result = run_cli(
        "extract", folder, tmp_path / "s.zarr", "--model", tiny_backbone, "--json", expect=3
    )
    assert "no audio stream" in result.output
    store = FeatureStore.open(tmp_path / "s.zarr")
    assert sorted(store.clip_ids) == ["lossless", "lossy"]
    reference = ReferenceForward(tiny_backbone)
    assert_matches(store, "lossless", reference(read_16k_mono(media / "reference.wav")))
    info = run_cli("store", "info", tmp_path / "s.zarr")
    assert "silent" in info.output and "no audio stream" in info.output
