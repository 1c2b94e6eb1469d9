"""`emi evaluate`: the trainer's metrics on labelled clips, with bootstrap intervals."""

import csv
import json

import numpy as np
import pytest
import scipy.stats

from models.bootstrap import bootstrap_indices, score_head
from models.evaluation import paired_difference
from models.metrics import ccc, mse, pearson
from tests.conftest import labelled_store, run_cli

TARGETS = ["a", "b"]


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 2))


def test_metrics_on_stacks_of_resamples_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    pred, true = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    true[:, 0] = 0.5  # a constant column: Pearson 0 by definition
    idx = bootstrap_indices(40, 25, seed=1)
    for metric in (pearson, ccc, mse):
        stacked = metric(pred[idx], true[idx])
        one_by_one = np.stack([metric(pred[i], true[i]) for i in idx])
        np.testing.assert_allclose(stacked, one_by_one, rtol=1e-12, atol=1e-12)
    r = pearson(pred[idx[0]], true[idx[0]])
    assert r[1] == pytest.approx(scipy.stats.pearsonr(pred[idx[0]][:, 1], true[idx[0]][:, 1])[0])


def test_a_perfect_head_scores_one_and_a_constant_head_zero():
    true = _labels(60)
    idx = bootstrap_indices(60, 300, seed=0)
    perfect, _ = score_head("perfect", true, true, TARGETS, idx, 0.95)
    assert (perfect.score.value, perfect.score.low, perfect.score.high) == (1.0, 1.0, 1.0)
    constant, _ = score_head("constant", np.full_like(true, 0.5), true, TARGETS, idx, 0.95)
    assert (constant.score.value, constant.score.low, constant.score.high) == (0.0, 0.0, 0.0)
    assert constant.means["mse"].value == pytest.approx(float(((true - 0.5) ** 2).mean()))


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    true = _labels(n, seed)
    pred = true + np.random.default_rng(seed + 100).normal(0, 0.25, size=true.shape)
    return np.clip(pred, 0, 1), true


def test_a_noisy_heads_interval_holds_its_value_and_narrows_with_more_clips():
    widths = []
    for n in (40, 640):
        pred, true = _noisy(n, seed=n)
        scores, _ = score_head("noisy", pred, true, TARGETS, bootstrap_indices(n, 400, 7), 0.95)
        s = scores.score
        assert s.low < s.value < s.high
        assert s.value == pytest.approx(pearson(pred, true).mean())
        widths.append(s.high - s.low)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4 as wide


def test_paired_difference_of_a_head_with_itself_is_zero_and_a_better_head_wins():
    pred, true = _noisy(200, seed=1)
    worse = np.clip(pred + np.random.default_rng(9).normal(0, 0.3, size=pred.shape), 0, 1)
    idx = bootstrap_indices(200, 500, seed=2)
    good, good_samples = score_head("good", pred, true, TARGETS, idx, 0.95)
    bad, bad_samples = score_head("bad", worse, true, TARGETS, idx, 0.95)
    same = paired_difference(
        "good", "good", good_samples, good_samples, good.score.value, good.score.value, 0.95
    )
    assert same["difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    better = paired_difference(
        "good", "bad", good_samples, bad_samples, good.score.value, bad.score.value, 0.95
    )
    assert better["difference"]["low"] > 0 and better["share_a_better"] > 0.97


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_backbone):
    return labelled_store(
        tmp_path_factory.mktemp("evaluated"),
        tiny_backbone,
        clips=30,
        seed=11,
        presets=("mean-linear", "compact"),
        epochs=2,
    )


def test_evaluate_equals_scipy_on_the_predictions(evaluated, tmp_path):
    heads = [evaluated["folder"] / "mean-linear", evaluated["folder"] / "compact"]
    out = run_cli(
        "evaluate", evaluated["store"], "--head", heads[0], "--head", heads[1],
        "--labels", evaluated["test"], "--resamples", "200", "--json",
        "--csv", tmp_path / "new" / "metrics.csv",
    ).output  # fmt: skip
    result = json.loads(out)
    labels = list(csv.DictReader(evaluated["test"].open()))
    targets = [t for t in labels[0] if t != "Filename"]
    # the head's predictions at full precision (a CSV's 6 decimals would blur the r of
    # a nearly constant column: ridge predicts a target it cannot learn as its mean)
    from featurestore.store import FeatureStore
    from models.head_files import load_head
    from models.prediction import predict_store

    ids, by_head = predict_store(
        FeatureStore.open(evaluated["store"]),
        [load_head(heads[0])],
        clip_ids=[r["Filename"] for r in labels],
    )
    predicted = {c: dict(zip(targets, row, strict=True)) for c, row in
                 zip(ids, by_head["mean-linear"], strict=True)}  # fmt: skip
    assert result["clips"] == len(labels) and result["targets"] == targets
    scores = result["heads"]["mean-linear"]
    rs = []
    for t in targets:
        p = [float(predicted[r["Filename"]][t]) for r in labels]
        y = [float(r[t]) for r in labels]
        r = scipy.stats.pearsonr(p, y)[0] if np.std(p) > 0 else 0.0
        assert scores["per_target"]["pearson"][t]["value"] == pytest.approx(r, abs=1e-5)
        rs.append(r)
        interval = scores["per_target"]["pearson"][t]
        assert interval["low"] <= interval["value"] <= interval["high"] or np.std(p) == 0
    assert scores["means"]["pearson"]["value"] == pytest.approx(np.mean(rs), abs=1e-5)
    [diff] = result["differences"]
    assert (diff["a"], diff["b"]) == ("mean-linear", "compact")
    rows = list(csv.DictReader((tmp_path / "new" / "metrics.csv").open()))
    assert {r["head"] for r in rows} == {"mean-linear", "compact"}
    assert len(rows) == 2 * 3 * (len(targets) + 1)
    table = run_cli(
        "evaluate", evaluated["store"], "--head", heads[0], "--head", heads[1],
        "--labels", evaluated["test"], "--resamples", "50",
    ).output  # fmt: skip
    assert "challenge score" in table and "paired differences" in table
    assert "mean-linear - compact" in table


def test_evaluate_names_missing_clips_like_training(evaluated, tmp_path):
    labels = tmp_path / "more.csv"
    text = evaluated["test"].read_text()
    labels.write_text(text + "not-stored," + ",".join(["0.5"] * 6) + "\n")
    head = evaluated["folder"] / "mean-linear"
    missing = run_cli("evaluate", evaluated["store"], "--head", head, "--labels", labels, expect=2)
    assert "not-stored" in missing.output and "--skip-missing" in missing.output
    skipped = json.loads(
        run_cli(
            "evaluate", evaluated["store"], "--head", head, "--labels", labels,
            "--skip-missing", "--resamples", "20", "--json",
        ).output
    )  # fmt: skip
    assert skipped["skipped"] == ["not-stored"]
