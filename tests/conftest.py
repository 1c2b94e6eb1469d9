"""Shared fixtures: offline mode, random backbones, synthetic corpora, CLI runner."""

from __future__ import annotations

import collections
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The user cache (score store, weights hashes) of a test run is its own.
os.environ["EMI_CACHE"] = tempfile.mkdtemp(prefix="emi-test-cache-")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from cli.main import emi  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from tests.synth import write_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """Layer-norm random backbone (the real model's norm), tiny sizes."""
    return write_random_backbone(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def small_backbone(tmp_path_factory) -> Path:
    """Layer-norm random backbone, small sizes: parts that last long enough for a test
    to act while they run (a worker killed, a job cancelled mid-run)."""
    return write_random_backbone(tmp_path_factory.mktemp("small"), size="small", seed=0)


@pytest.fixture(scope="session")
def tiny_group_backbone(tmp_path_factory) -> Path:
    """Group-norm random backbone (wav2vec2-base style), tiny sizes."""
    return write_random_backbone(
        tmp_path_factory.mktemp("tiny-group"), size="tiny", seed=1, norm="group"
    )


# Lengths chosen so batches mix lengths, and some share a length exactly.
MIXED_SECONDS = (0.5, 1.0, 1.7, 2.25, 3.0, 1.0, 4.1, 0.03, 2.25)


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory) -> Path:
    """A folder of 16 kHz clips of mixed lengths (wav and flac, one nested)."""
    folder = tmp_path_factory.mktemp("mixed")
    for i, seconds in enumerate(MIXED_SECONDS):
        ext = "flac" if i % 3 == 2 else "wav"
        sub = "speaker_b/" if i == 4 else ""
        write_clip(folder / f"{sub}{i:05d}.{ext}", seconds, seed=i, f0_hz=110 + 15 * i)
    return folder


def read_16k_mono(path) -> np.ndarray:
    """A file as the reference sees it: soundfile, channel mean, soxr to 16 kHz."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return mono if rate == 16_000 else soxr.resample(mono, rate, 16_000, quality="HQ")


@pytest.fixture(scope="session")
def layer_store(mixed_corpus, tiny_backbone, tmp_path_factory) -> Path:
    """The mixed corpus extracted with padded, mixed-length batches (1 worker)."""
    store = tmp_path_factory.mktemp("stores") / "layer.zarr"
    run_cli(
        "extract",
        mixed_corpus,
        store,
        "--model",
        tiny_backbone,
        "--batch-seconds",
        "3",
        "--workers",
        "1",
        "--quiet",
    )
    return store


def labelled_store(
    folder: Path,
    backbone: Path,
    *,
    clips: int,
    seed: int,
    presets: tuple[str, ...] = ("mean-linear",),
    epochs: int = 1,
    max_seconds: float = 2.0,
    extract_options: tuple[str, ...] = (),
) -> dict:
    """A synthetic labelled corpus, its store and one head per preset (``folder/<preset>``).

    Returns ``store``, ``audio``, ``head`` (the first preset's folder), ``folder`` and
    the split label files (``train``, ``valid``, ``test``).
    """
    from manifests.synthetic import write_corpus

    splits = write_corpus(
        folder / "corpus", clips=clips, seed=seed, min_seconds=1.0, max_seconds=max_seconds
    )
    store, audio = folder / "feats.zarr", folder / "corpus" / "audio"
    run_cli("extract", audio, store, "--model", backbone, *extract_options, "--quiet")
    for preset in presets:
        run_cli(
            "train", store, "--labels", splits["train"], "--val-labels", splits["valid"],
            "--out", folder / preset, "--preset", preset, "--epochs", str(epochs), "--quiet",
        )  # fmt: skip
    head = folder / presets[0] if presets else None
    return {"store": store, "audio": audio, "head": head, "folder": folder, **splits}


def train_cli(made: dict, out: Path, *extra: str, expect: int | None = 0):
    """``emi train`` on a :func:`labelled_store` (1 epoch, quiet) into ``out``; ``extra``
    options come last, so they win over these."""
    return run_cli(
        "train", made["store"], "--labels", made["train"], "--val-labels", made["valid"],
        "--out", out, "--epochs", "1", "--quiet", *extra, expect=expect,
    )  # fmt: skip


def run_cli(*args: str, expect: int | None = 0):
    """Invoke ``emi`` in-process; assert its exit status unless ``expect`` is None."""
    result = CliRunner().invoke(emi, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (result.exit_code, result.output)
    return result


def pytest_collection_modifyitems(config, items: list) -> None:
    """The files with the most slow tests first, each file's tests in their order.

    ``./run test`` hands whole files to its test processes (``--dist loadfile
    --no-loadscope-reorder``) in this order, each taking the next file when it is done:
    the long end-to-end files started first leave the short ones to even out the end,
    instead of one process running a long file alone while the others wait."""
    slow = collections.Counter(
        item.path for item in items if item.get_closest_marker("slow") is not None
    )
    items.sort(key=lambda item: -slow[item.path])  # stable: the rest keeps its order
