"""The labelled corpus of synthesized speech (espeak-ng) used by the heads benchmark."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from manifests import ManifestError, build_manifest, read_labels
from manifests.spoken import write_spoken_corpus
from manifests.synthetic import factor_targets


def test_splits_hold_disjoint_voices_and_labels_follow_the_factors(tmp_path):
    splits = write_spoken_corpus(
        tmp_path, clips=24, seed=3, voices_per_split={"train": 4, "valid": 2, "test": 2}
    )
    with (tmp_path / "voices.csv").open() as f:
        rows = list(csv.DictReader(f))
    voices = {s: {r["voice"] for r in rows if r["split"] == s} for s in splits}
    assert voices["train"].isdisjoint(voices["valid"] | voices["test"])
    assert voices["valid"].isdisjoint(voices["test"])
    assert len(voices["train"]) <= 4 and len(voices["valid"]) <= 2
    labels = {s: read_labels(path) for s, path in splits.items()}
    assert sum(len(t.rows) for t in labels.values()) == len(rows) == 24
    for row in rows:
        value = np.array(labels[row["split"]].rows[row["clip_id"]])
        expected = factor_targets(float(row["pitch"]), float(row["rate"]), float(row["pauses"]))
        assert np.all((value >= 0) & (value <= 1))
        assert np.abs(value - np.clip(expected, 0, 1)).max() < 0.15  # noise sd 0.03
    # real speech: espeak-ng's own WAVs, which the manifest reads (and emi resamples)
    info = sf.info(str(tmp_path / "audio" / f"{rows[0]['clip_id']}.wav"))
    assert info.samplerate == 22050 and info.duration > 1.0
    records = build_manifest(tmp_path / "audio", label_files=list(splits.values()))
    assert len(records) == 24


def test_faster_speech_is_shorter_and_the_corpus_is_the_same_for_a_seed(tmp_path):
    write_spoken_corpus(tmp_path / "a", clips=16, seed=5)
    write_spoken_corpus(tmp_path / "b", clips=16, seed=5)
    a = sorted((tmp_path / "a" / "audio").iterdir())
    b = sorted((tmp_path / "b" / "audio").iterdir())
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with (tmp_path / "a" / "voices.csv").open() as f:
        rows = list(csv.DictReader(f))
    words = {r["clip_id"]: r for r in rows}
    # seconds per clip fall as the rate rises (sentences of 5-12 words, random)
    rate = np.array([float(words[p.stem]["rate"]) for p in a])
    seconds = np.array([sf.info(str(p)).duration for p in a])
    assert np.corrcoef(rate, seconds)[0, 1] < 0


def test_a_missing_espeak_ng_is_named_with_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr("manifests.spoken.shutil.which", lambda name: None)
    with pytest.raises(ManifestError, match="apt-get install espeak-ng"):
        write_spoken_corpus(tmp_path, clips=4)
    assert not (tmp_path / "audio").exists()
