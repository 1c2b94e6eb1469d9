import numpy as np
import pytest
import soundfile as sf
import soxr
from transformers import Wav2Vec2FeatureExtractor

from featurestore.audio import AudioError, decode_clip, frames_for_samples, normalise
from tests.synth import voiced, write_clip


def test_normalise_equals_the_processor():
    x = voiced(1.3, seed=4) * 3 + 0.2
    processor = Wav2Vec2FeatureExtractor(do_normalize=True)
    expected = processor(x, sampling_rate=16_000, return_tensors="np").input_values[0]
    np.testing.assert_allclose(normalise(x), expected, atol=1e-6)


def test_frames_formula():
    assert [frames_for_samples(n) for n in (0, 399, 400, 719, 720, 16_000)] == [0, 0, 1, 1, 2, 49]


def test_stereo_is_mixed_and_resampled(tmp_path):
    path = write_clip(tmp_path / "s.wav", 1.0, rate_hz=44_100, channels=2, seed=2)
    data, _ = sf.read(str(path), dtype="float32")
    expected = normalise(soxr.resample(data.mean(axis=1), 44_100, 16_000, quality="HQ"))
    clip = decode_clip(path)
    assert (clip.source_hz, clip.channels) == (44_100, 2)
    assert clip.duration_s == pytest.approx(1.0)
    np.testing.assert_allclose(clip.samples, expected, atol=1e-6)


def test_crop_keeps_the_first_seconds(tmp_path):
    path = write_clip(tmp_path / "c.wav", 3.0)
    clip = decode_clip(path, max_seconds=1.25)
    assert len(clip.samples) == 20_000
    assert clip.duration_s == pytest.approx(3.0)  # the source's duration
    data, _ = sf.read(str(path), dtype="float32")
    np.testing.assert_allclose(clip.samples, normalise(data[:20_000]), atol=1e-6)


def _bad(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (lambda p: _bad(p, "empty.wav", b""), "empty file"),
        (lambda p: _bad(p, "noise.wav", np.random.default_rng(0).bytes(4000)), "unreadable"),
        (lambda p: _bad(p, "text.mp3", b"hello, not audio\n" * 50), "unreadable"),
        (lambda p: write_clip(p / "short.wav", 399 / 16_000), "too short: 399 samples"),
    ],
)
def test_bad_files_give_reasons(tmp_path, maker, reason):
    with pytest.raises(AudioError, match=reason):
        decode_clip(maker(tmp_path))


def test_truncated_wav_is_detected(tmp_path):
    path = write_clip(tmp_path / "t.wav", 1.0, subtype="PCM_16")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(AudioError, match="truncated WAV"):
        decode_clip(path)


def test_non_finite_samples_are_refused(tmp_path):
    x = voiced(0.5)
    x[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), x, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode_clip(tmp_path / "nan.wav")
