"""Features made on a device against the plain, unbatched float32 reference (on the CPU).

The device is ``EMI_TEST_DEVICE`` (default ``cpu``; ``bench/gpu_check.sh`` runs this
file with ``cuda``): float32 features equal the reference within float16 storage error,
in padded batches too; bfloat16 features stay within the bound the Benchmarks page
states (every array within 10% of its largest value, mean cosine over frames above
0.99) and are not float32's.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from featurestore.store import FeatureStore
from tests.conftest import read_16k_mono, run_cli
from tests.reference import ReferenceForward, assert_matches

DEVICE = os.environ.get("EMI_TEST_DEVICE", "cpu")
BATCH_SECONDS = ("0", "8")  # one clip per forward; padded batches of mixed lengths


def _clips(corpus):
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        yield path.relative_to(corpus).with_suffix("").as_posix(), path


def _extract(corpus, store, backbone, dtype: str, batch_seconds: str):
    return run_cli(
        "extract", corpus, store, "--model", backbone, "--device", DEVICE,
        "--dtype", dtype, "--batch-seconds", batch_seconds,
    )  # fmt: skip


@pytest.mark.parametrize("batch_seconds", BATCH_SECONDS)
def test_float32_features_equal_the_reference(mixed_corpus, tiny_backbone, tmp_path, batch_seconds):
    result = _extract(mixed_corpus, tmp_path / "f32.zarr", tiny_backbone, "float32", batch_seconds)
    assert "compute dtype float32 (--dtype" in result.stderr
    store = FeatureStore.open(tmp_path / "f32.zarr")
    reference = ReferenceForward(tiny_backbone)
    for clip_id, path in _clips(mixed_corpus):
        assert_matches(store, clip_id, reference(read_16k_mono(path)))


def _worst_relative(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference over the array's largest magnitude."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows (frames) of the cosine between ``a`` and ``b``."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    dots = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(dots.mean())


def bfloat16_fidelity(store: FeatureStore, reference: ReferenceForward, corpus) -> dict:
    """Per array the worst relative difference over the clips, the mean cosine of the
    hidden states' frames (the worst clip's), and whether any clip met float32's bound."""
    worst = {key: 0.0 for key in ("hidden", "frame_vad", "hidden_mean", "clip_vad")}
    cosines, exact = [], True
    for clip_id, path in _clips(corpus):
        ref = reference(read_16k_mono(path))
        got = {
            "hidden": store.hidden(clip_id).astype(np.float32),
            "frame_vad": store.frame_vad(clip_id),
            "hidden_mean": store.hidden_mean(clip_id),
            "clip_vad": store.clip_vad(clip_id),
        }
        for key, value in got.items():
            worst[key] = max(worst[key], _worst_relative(value, ref[key]))
        cosines.append(_mean_cosine(got["hidden"], ref["hidden"]))
        exact &= np.allclose(got["hidden"], ref["hidden"], rtol=2**-10, atol=1e-4)
    return {"worst_relative": worst, "min_mean_cosine": min(cosines), "float32_exact": exact}


@pytest.mark.parametrize("batch_seconds", BATCH_SECONDS)
def test_bfloat16_features_stay_close_to_the_float32_reference(
    mixed_corpus, tiny_backbone, tmp_path, batch_seconds
):
    store_path = tmp_path / "bf16.zarr"
    result = _extract(mixed_corpus, store_path, tiny_backbone, "bfloat16", batch_seconds)
    assert "compute dtype bfloat16 (--dtype" in result.stderr
    store = FeatureStore.open(store_path)
    assert store.spec["compute_dtype"] == "bfloat16"
    found = bfloat16_fidelity(store, ReferenceForward(tiny_backbone), mixed_corpus)
    assert all(value < 0.10 for value in found["worst_relative"].values()), found
    assert found["min_mean_cosine"] > 0.99, found
    assert not found["float32_exact"]  # bfloat16 did run: the features are not float32's
