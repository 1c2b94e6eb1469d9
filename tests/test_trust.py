"""Trust, second pass: clip identity across folders, every field of what is read
checked, and runs that end with a message instead of a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from tests.conftest import labelled_store, run_cli
from tests.synth import write_clip


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backbone) -> dict:
    """A labelled store of 16 clips and a mean-linear head on it."""
    return labelled_store(
        tmp_path_factory.mktemp("trust"), tiny_backbone, clips=16, seed=5, max_seconds=1.5
    )


def copy_store(made: dict, to: Path) -> Path:
    import shutil

    shutil.copytree(made["store"], to)
    return to


# -- 1. a stored clip is never replaced by another folder's file of the same name ----------


def test_score_never_replaces_a_stored_clip_with_another_folders_file(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    before = FeatureStore.open(store).hidden("00003").copy()
    other = tmp_path / "other"
    write_clip(other / "00003.wav", 1.2, seed=77, f0_hz=300)  # another recording, same name
    (other / "00004.wav").write_bytes((made["audio"] / "00004.wav").read_bytes())  # same content
    result = run_cli(
        "score", other, "--head", made["head"], "--store", store, "-o", tmp_path / "p.csv",
        expect=3,
    )  # fmt: skip
    assert "00003" in result.output and "already stored from another file" in result.output
    assert str(made["audio"] / "00003.wav") in result.output
    opened = FeatureStore.open(store)
    np.testing.assert_array_equal(opened.hidden("00003"), before)
    assert opened.clip_info("00003").source_path == str(made["audio"] / "00003.wav")
    # the same content from another folder is the same clip: scored from the store
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["clip_id"] for r in rows] == ["00004"]
    assert run_cli("store", "verify", store).exit_code == 0
    # extracting the training folder again: nothing changed, nothing blamed
    again = run_cli("extract", made["audio"], store, "--json", "--quiet")
    summary = json.loads(again.stdout)
    assert summary["changed_sources"] == [] and summary["other_sources"] == []
    assert summary["extracted"] == 0


def test_extract_refuses_another_source_unless_asked(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    other = tmp_path / "other"
    write_clip(other / "00002.wav", 1.0, seed=78, f0_hz=250)
    refused = run_cli("extract", other, store, "--refresh-changed", "--json", "--quiet", expect=3)
    summary = json.loads(refused.stdout)
    assert summary["other_sources"] == ["00002"] and summary["refreshed"] == 0
    assert "--replace-other-sources" in summary["failed"][0]["reason"]
    assert FeatureStore.open(store).clip_info("00002").source_path.startswith(str(made["audio"]))
    run_cli("extract", other, store, "--replace-other-sources", "--quiet")
    assert FeatureStore.open(store).clip_info("00002").source_path == str(other / "00002.wav")
    # the same path with new content is a change of that file: refreshed when asked
    write_clip(other / "00002.wav", 1.0, seed=79, f0_hz=200)
    changed = json.loads(run_cli("extract", other, store, "--json", "--quiet").stdout)
    assert changed["changed_sources"] == ["00002"] and changed["other_sources"] == []


# -- 7. plain readers see a missing chunk as NaN (floats) or -1 (counts), not zeros -------


def test_a_deleted_chunk_reads_as_nan_in_plain_zarr(made, tmp_path):
    import zarr

    store = copy_store(made, tmp_path / "s.zarr")
    part = FeatureStore.open(store).complete_parts[0]
    for array in ("hidden", "vad_mean", "frames"):
        for chunk in (store / "parts" / part / array / "c").rglob("*"):
            if chunk.is_file():
                chunk.unlink()
    group = zarr.open_group(store / "parts" / part, mode="r")
    assert np.isnan(group["hidden"][:]).all() and np.isnan(group["vad_mean"][:]).all()
    assert (group["frames"][:] == -1).all()


# -- 3. metrics of non-finite predictions are an error, never a perfect score ------------


def test_nan_predictions_are_refused_by_metrics_and_evaluate(made):
    import torch

    from models.head_files import load_head
    from models.metrics import MetricError, ccc, evaluate, pearson
    from models.prediction import predict

    true = np.random.default_rng(0).random((20, 2))
    nan = np.full((20, 2), np.nan)
    assert np.isnan(ccc(nan, true)).all() and np.isnan(pearson(nan, true)).all()
    with pytest.raises(MetricError, match="NaN or inf for a, b"):
        evaluate(nan, true, ["a", "b"])
    head = load_head(made["head"])
    with torch.no_grad():
        next(p for p in head.model.parameters() if p.ndim == 1).fill_(float("nan"))
    with pytest.raises(Exception, match="predicted NaN or inf"):
        predict(made["store"], [head])
    from models.evaluation import evaluate_heads

    with pytest.raises(Exception, match="predicted NaN or inf"):
        evaluate_heads(made["store"], [head], made["test"], resamples=10)
