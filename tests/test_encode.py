import numpy as np
import pytest

from featurestore.audio import frames_for_samples, normalise
from featurestore.backbone import load_backbone
from featurestore.encode import encode_clips, plan_batches, plan_segments
from tests.reference import ReferenceForward
from tests.synth import voiced

LENGTHS = (8_000, 16_000, 23_456, 401, 40_000, 16_000, 720)


@pytest.mark.parametrize("samples", [400, 719, 16_000, 160_321, 960_000])
@pytest.mark.parametrize("window_seconds", [None, 0.5, 1.0, 7.3])
def test_windows_tile_the_clip_frames_exactly(samples, window_seconds):
    segments = plan_segments(0, samples, window_seconds=window_seconds)
    assert sum(s.frames for s in segments) == frames_for_samples(samples)
    first = 0
    for seg in segments:
        assert seg.first_frame == first
        assert seg.sample_start == 320 * first
        assert frames_for_samples(seg.samples) == seg.frames
        if window_seconds:
            assert seg.frames <= window_seconds * 50
        first += seg.frames


def test_batches_respect_budget_and_norm_rule():
    segments = [s for i, n in enumerate(LENGTHS) for s in plan_segments(i, n, window_seconds=None)]
    padded = plan_batches(segments, batch_seconds=3.0, allow_padding=True)
    assert sorted(s.clip for b in padded for s in b) == list(range(len(LENGTHS)))
    assert any(len({s.samples for s in b}) > 1 for b in padded)  # lengths do mix
    for batch in padded:
        assert len(batch) == 1 or max(s.samples for s in batch) * len(batch) <= 48_000
    equal_only = plan_batches(segments, batch_seconds=3.0, allow_padding=False)
    assert all(len({s.samples for s in b}) == 1 for b in equal_only)
    assert any(len(b) == 2 for b in equal_only)  # the two 16,000-sample clips share one
    assert all(len(b) == 1 for b in plan_batches(segments, batch_seconds=0, allow_padding=True))


def _compare(results, audio, reference):
    for clip, result in zip(audio, results, strict=True):
        ref = reference(clip, normalised=True)
        np.testing.assert_allclose(
            result.hidden.astype(np.float32), ref["hidden"], rtol=2**-10, atol=1e-4
        )
        np.testing.assert_allclose(result.frame_vad, ref["frame_vad"], atol=1e-4)
        np.testing.assert_allclose(result.hidden_mean, ref["hidden_mean"], atol=1e-4)
        np.testing.assert_allclose(result.clip_vad, ref["clip_vad"], atol=1e-4)
        np.testing.assert_allclose(result.vad_mean, ref["vad_mean"], atol=1e-4)


@pytest.mark.parametrize("backbone_fixture", ["tiny_backbone", "tiny_group_backbone"])
def test_batched_encoding_equals_unbatched_forward(backbone_fixture, request):
    folder = request.getfixturevalue(backbone_fixture)
    backbone = load_backbone(str(folder))
    audio = [normalise(voiced(n / 16_000, seed=i)) for i, n in enumerate(LENGTHS)]
    results = encode_clips(backbone.model, audio, batch_seconds=4.0, window_seconds=None)
    _compare(results, audio, ReferenceForward(folder))


def test_padding_without_mask_would_differ(tiny_backbone):
    """The test above has teeth: padding a clip without the mask changes its features."""
    import torch

    backbone = load_backbone(str(tiny_backbone))
    clip = normalise(voiced(0.5, seed=1))
    padded = np.zeros((1, 16_000), np.float32)
    padded[0, : len(clip)] = clip
    with torch.inference_mode():
        alone = backbone.model(torch.from_numpy(clip)[None])[0][0]
        unmasked = backbone.model(torch.from_numpy(padded))[0][0, : alone.shape[0]]
    assert (alone - unmasked).abs().max() > 1e-2


def test_windowed_clip_equals_per_window_forward(tiny_backbone):
    backbone = load_backbone(str(tiny_backbone))
    audio = normalise(voiced(5.0, seed=9))
    [result] = encode_clips(backbone.model, [audio], batch_seconds=0, window_seconds=1.5)
    reference = ReferenceForward(tiny_backbone)
    segments = plan_segments(0, len(audio), window_seconds=1.5)
    assert len(segments) == 4 and result.frames == frames_for_samples(len(audio))
    expected = np.concatenate(
        [
            reference(audio[s.sample_start : s.sample_end], normalised=True)["hidden"]
            for s in segments
        ]
    )
    np.testing.assert_allclose(result.hidden.astype(np.float32), expected, rtol=2**-10, atol=1e-4)
    np.testing.assert_allclose(result.hidden_mean, expected.mean(0), atol=1e-4)
