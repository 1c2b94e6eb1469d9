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


def test_heads_validated_on_different_clips_are_not_ranked_and_the_figures_are_checked(
    grid, tmp_path
):
    from scipy.stats import pearsonr as scipy_pearson

    from models.bootstrap import bootstrap_indices
    from models.validation_check import RESAMPLES, SEED

    made, heads = grid
    report = json.loads(run_cli("heads", "compare", heads, "--json").output)
    rows = report["heads"]
    assert report["comparable"] and report["recommended"] == rows[0]["name"]
    labels = list(csv.DictReader(Path(made["valid"]).read_text().splitlines()))
    assert {r["val_set"] for r in rows} != {None} and len({r["val_set"] for r in rows}) == 1
    assert all(r["val_clips"] == len(labels) for r in rows)
    # the interval: the same resamples, Pearson by scipy (constant resample: r = 0)
    best = Path(rows[0]["folder"])
    from models import predict

    predicted = predict(made["store"], [best], device="cpu")
    (values,) = predicted.values.values()
    at = {c: i for i, c in enumerate(predicted.clip_ids)}
    targets = predicted.heads[0].targets
    pred = np.array([values[at[r["Filename"]]] for r in labels])
    true = np.array([[float(r[t]) for t in targets] for r in labels])
    means = []
    for sample in bootstrap_indices(len(labels), RESAMPLES, SEED):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rs = [scipy_pearson(true[sample, k], pred[sample, k]).statistic for k in range(6)]
        means.append(np.mean(np.nan_to_num(rs)))
    low, high = np.percentile(means, [2.5, 97.5])
    assert rows[0]["val_interval"] == pytest.approx([low, high], abs=1e-6)
    # a head validated on half the clips: its score is not ranked against the others
    half = tmp_path / "half_split.csv"
    with open(made["valid"]) as f:
        lines = f.read().splitlines()
    half.write_text("\n".join(lines[: 1 + len(labels) // 2]) + "\n")
    run_cli("train", made["store"], "--labels", made["train"], "--val-labels", half,
            "--out", tmp_path / "other", "--preset", "mean-linear", "--quiet")  # fmt: skip
    mixed = json.loads(run_cli("heads", "compare", heads, tmp_path / "other", "--json").output)
    assert mixed["recommended"] is None and not mixed["comparable"]
    assert "validated on 2 different sets of clips" in mixed["reason"]
    assert f"other on {len(labels) // 2} clips" in mixed["reason"]
    table = run_cli("heads", "compare", heads, tmp_path / "other").output
    assert table.splitlines()[-1].startswith("not comparable: the heads were validated on 2")


def test_nearly_constant_and_negative_targets_are_flagged():
    from models.validation_check import check_validation

    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, size=(40, 3))
    pred = np.stack(
        [
            true[:, 0] * 0.8 + 0.1,  # follows the labels
            0.49 + 1e-4 * true[:, 1],  # a constant 0.49 give or take: r = 1, meaningless
            1 - true[:, 2],  # the wrong way round
        ],
        axis=1,
    )
    record = check_validation(pred, true, ["A", "B", "C"], [f"c{i}" for i in range(40)])
    assert record["nearly_constant"] == ["B"] and record["negative"] == ["C"]
    assert record["targets"]["B"]["pred_mean"] == pytest.approx(0.49, abs=1e-3)
    assert record["targets"]["A"]["pearson"] == pytest.approx(1.0)
    interval = record["pearson_mean"]
    assert interval["low"] <= interval["value"] <= interval["high"]
    assert record["clips"] == 40 and len(record["set_sha256"]) == 64
    shuffled = check_validation(pred[::-1], true[::-1], ["A", "B", "C"],
                                [f"c{i}" for i in range(40)][::-1])  # fmt: skip
    assert shuffled["set_sha256"] == record["set_sha256"]  # the set, not its order
