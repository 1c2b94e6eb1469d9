"""``emi heads compare``: the heads of a grid side by side, best first."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr

from tests.conftest import labelled_store, run_cli, train_cli


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_backbone):
    folder = tmp_path_factory.mktemp("compare")
    made = labelled_store(folder, tiny_backbone, clips=30, seed=11)
    spec = {
        "defaults": {"preset": "mean-linear", "epochs": 3},
        "grid": {"lr": [0.05, 0.0001], "seed": [1, 2]},
    }
    (folder / "grid.json").write_text(json.dumps(spec))
    train_cli(made, folder / "grid", "--grid", folder / "grid.json", "--epochs", "3")
    return made, folder / "grid"


def _pearson_of_predictions(made: dict, head: Path) -> tuple[float, dict]:
    """A head's validation Pearson recomputed with scipy from its predictions (clamped
    to [0, 1], as everywhere); a constant column counts as r = 0, emi's convention where
    scipy says NaN."""
    from models import predict

    with open(made["valid"]) as f:
        labels = {r["Filename"]: r for r in csv.DictReader(f)}
    predictions = predict(made["store"], [head], device="cpu")
    (values,) = predictions.values.values()
    rows = [i for i, c in enumerate(predictions.clip_ids) if c in labels]
    ids = [predictions.clip_ids[i] for i in rows]
    per_target = {}
    for k, target in enumerate(predictions.heads[0].targets):
        truth = [float(labels[c][target]) for c in ids]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: r = 0 below
            r = pearsonr(truth, values[rows, k]).statistic
        per_target[target] = 0.0 if np.isnan(r) else float(r)
    return float(np.mean(list(per_target.values()))), per_target


def test_compare_ranks_a_grid_by_validation_pearson_of_each_best_epoch(grid, tmp_path):
    made, heads = grid
    result = run_cli("heads", "compare", heads, "--json", "--png", tmp_path / "cmp.png")
    report = json.loads(result.output)
    rows = report["heads"]
    assert len(rows) == 4
    scores = [r["val_pearson_mean"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert report["best"] == rows[0]["folder"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:  # the figures are those of the saved (best-epoch) weights
        mean, per_target = _pearson_of_predictions(made, Path(row["folder"]))
        assert row["val_pearson_mean"] == pytest.approx(mean, abs=1e-4)
        for target, value in per_target.items():
            assert row["val_pearson"][target] == pytest.approx(value, abs=1e-4)
        assert row["layer"] == "last" and row["preset"] == "mean-linear"
        assert row["train_seconds"] > 0 and row["parameters"] > 0
    table = run_cli("heads", "compare", heads).output
    lines = table.splitlines()
    assert lines[1].startswith(rows[0]["name"]) and lines[-1].endswith(rows[0]["folder"])


def test_compare_accepts_several_folders_and_refuses_what_is_not_a_head(grid, tmp_path):
    made, heads = grid
    one = sorted(p for p in heads.iterdir() if p.is_dir())[0]
    result = run_cli("heads", "compare", one, made["head"], "--json")
    assert len(json.loads(result.output)["heads"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run_cli("heads", "compare", empty, expect=2)
    assert "no head folders" in refused.output
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((one / name).read_bytes())
    (broken / "metrics.json").write_text("{not json")
    refused = run_cli("heads", "compare", broken, expect=2)
    assert "metrics.json" in refused.output
