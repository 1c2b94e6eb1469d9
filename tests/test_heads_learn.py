"""Heads that learn: a closed-form ridge baseline, inputs on a common scale, layer weights
that move, and the paper's exact recipe beside emi's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from featurestore.store import FeatureStore
from manifests import read_labels
from models.card_rules import card_digest
from models.head_files import load_head
from models.heads import build_head
from models.options import EMI_RECIPE, PAPER_RECIPE
from models.prediction import predict_store
from models.ridge import DEFAULT_ALPHAS, fit_ridge
from models.sequences import load_sequences
from models.training import HeadPlan, TrainSettings, predict_batches, train_heads
from tests.conftest import run_cli, train_cli
from tests.test_layer_heads import SIGNAL_LAYER, layered, make_layer_store  # noqa: F401 (a fixture)
from tests.test_models import make_store, write_labels

OLD_HEADS = Path(__file__).parent / "data" / "heads_c95217d"


@pytest.fixture(scope="module")
def store_and_labels(tmp_path_factory, tiny_backbone):
    """The synthetic store of test_models (clips of 30-120 frames, tiny backbone)."""
    folder = tmp_path_factory.mktemp("learn")
    targets = make_store(folder / "feats.zarr", tiny_backbone, clips=160, seed=4)
    ids = sorted(targets)
    return {
        "store": folder / "feats.zarr",
        "train": write_labels(folder / "train.csv", targets, ids[:110]),
        "valid": write_labels(folder / "valid.csv", targets, ids[110:]),
        "ids": ids,
        "targets": targets,
    }


# ------------------------------------------------------------------ ridge, closed form


@pytest.mark.parametrize("clips,features", [(40, 300), (300, 30)])
def test_ridge_equals_scikit_learns_ridgecv(clips, features):
    rng = np.random.default_rng(clips)
    # scales as after standardization, offsets far from zero (the intercept's job); raw
    # scales of 0.01-100 make some penalties' errors equal to 1e-8 (either is right)
    scale = rng.uniform(0.5, 2, features)
    x = rng.normal(size=(clips, features)) * scale + rng.normal(0, 50, features)
    # targets from barely to well predictable
    y = x[:, :4] / scale[:4] @ rng.normal(size=(4, 6)) * np.linspace(0.05, 3, 6)
    y += rng.normal(size=(clips, 6))
    ours = fit_ridge(x, y)
    reference = RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True).fit(x, y)
    assert ours.alpha.tolist() == reference.alpha_.tolist()
    assert len(set(ours.alpha)) > 1  # the targets got penalties of their own
    np.testing.assert_allclose(ours.loo_mse.min(axis=0), -reference.best_score_, rtol=1e-9)
    np.testing.assert_allclose(ours.weights, reference.coef_.T, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.bias, reference.intercept_, rtol=0, atol=1e-6)
    fresh = rng.normal(size=(50, features)) * scale
    np.testing.assert_allclose(ours.predict(fresh), reference.predict(fresh), rtol=0, atol=1e-6)


def test_ridge_refuses_what_it_cannot_solve():
    with pytest.raises(ValueError, match="at least 3"):
        fit_ridge(np.ones((2, 3)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="NaN"):
        fit_ridge(np.full((5, 3), np.nan), np.ones((5, 1)))


def _stored_means(store: FeatureStore, ids: list[str]) -> np.ndarray:
    return np.stack([np.concatenate([store.hidden_mean(c), store.vad_mean(c)]) for c in ids])


def test_mean_linear_is_ridge_on_standardized_means(store_and_labels, tmp_path):
    made = store_and_labels
    head = tmp_path / "ridge"
    train_cli(made, head, "--preset", "mean-linear")
    store = FeatureStore.open(made["store"])
    train_ids, val_ids = made["ids"][:110], made["ids"][110:]
    x_train, x_val = _stored_means(store, train_ids), _stored_means(store, val_ids)
    y_train = np.stack([made["targets"][c] for c in train_ids])
    scaler = StandardScaler().fit(x_train)
    reference = RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True)
    reference.fit(scaler.transform(x_train), y_train)
    card = json.loads((head / "config.json").read_text())
    assert list(card["training"]["alpha"].values()) == reference.alpha_.tolist()
    assert card["head"]["standardize"] is True and "lr" not in card["training"]
    # the saved head predicts through the same code path as every head
    ids, predictions = predict_store(store, [load_head(head)], clip_ids=val_ids)
    expected = np.clip(reference.predict(scaler.transform(x_val)), 0, 1)
    np.testing.assert_allclose(predictions["ridge"], expected, rtol=0, atol=2e-5)
    assert (head / "ridge_penalty.png").stat().st_size > 0
    metrics = json.loads((head / "metrics.json").read_text())
    assert list(metrics["ridge"]["alpha"].values()) == reference.alpha_.tolist()
    assert len(metrics["epochs"]) == 1


def test_the_ridge_penalty_never_looks_at_validation_labels(store_and_labels, tmp_path):
    made = store_and_labels
    val = read_labels(made["valid"])
    shuffled = write_labels(
        tmp_path / "shuffled.csv",
        dict(
            zip(
                val.rows,
                np.random.default_rng(0).permutation(list(val.rows.values())),
                strict=True,
            )
        ),
        list(val.rows),
    )
    for name, labels in (("a", made["valid"]), ("b", shuffled)):
        train_cli({**made, "valid": labels}, tmp_path / name, "--preset", "mean-linear")
    weights = [(tmp_path / n / "model.safetensors").read_bytes() for n in "ab"]
    assert weights[0] == weights[1]


# ------------------------------------------------------------------ standardized inputs


@pytest.mark.parametrize("max_seconds", [None, 1.0])
def test_standardization_uses_real_training_frames_and_applies_at_prediction(
    store_and_labels, tmp_path, max_seconds
):
    made = store_and_labels
    store = FeatureStore.open(made["store"])
    settings = TrainSettings(epochs=1, max_seconds=max_seconds)
    plan = HeadPlan(
        "std", preset="compact", sizes={"lstm_hidden": 8, "mlp_hidden": 8}, settings=settings
    )
    tables = [read_labels(made[k]) for k in ("train", "valid")]
    train_heads(store, *tables, [plan], tmp_path / "std", single=True)
    head = load_head(tmp_path / "std")
    assert head.config.head.standardize and head.config.training["standardize"] is True
    keep = None if max_seconds is None else int(max_seconds * 50)
    frames = np.concatenate(
        [
            np.concatenate([store.hidden(c), store.frame_vad(c)], axis=1)[:keep].astype(np.float64)
            for c in made["ids"][:110]  # the training clips only, real frames only
        ]
    )
    scaler = head.model.standardizer
    np.testing.assert_allclose(scaler.mean.numpy(), frames.mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(scaler.std.numpy(), frames.std(0), rtol=1e-5, atol=1e-6)
    # Applied at prediction: the head equals its own layers fed standardized inputs.
    bare = build_head(type(head.config.head)(**{**head.config.head.__dict__, "standardize": False}))
    state = {k: v for k, v in head.model.state_dict().items() if not k.startswith("standard")}
    bare.load_state_dict(state)
    ids = made["ids"][110:]
    data = load_sequences([store], ids, crops=[keep])
    batch = next(data.batches(64, clip_ids=ids, max_frames=keep))
    with torch.no_grad():
        ours = head.model(batch.frames, batch.lengths, batch.mean)
        by_hand = bare(scaler(batch.frames), batch.lengths, scaler(batch.mean))
        unscaled = bare(batch.frames, batch.lengths, batch.mean)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, unscaled, atol=1e-3)
    raw = predict_batches(head.model, data, ids, device="cpu", max_frames=keep)
    np.testing.assert_allclose(
        np.stack([raw[c] for c in batch.clip_ids]), ours.numpy(), rtol=0, atol=1e-6
    )


def _old_predictions() -> dict[str, dict[str, list[float]]]:
    out: dict = {}
    with (OLD_HEADS / "predictions.csv").open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["head"], {}).setdefault(row["clip_id"], []).append(
                float(row["value"])
            )
    return out


def test_heads_saved_before_standardization_load_and_predict_the_same(tiny_backbone, tmp_path):
    """Heads written by the version before this one (tests/data/heads_c95217d/make.py),
    on the same store rebuilt here, predict exactly what they predicted then."""
    make_layer_store(tmp_path / "feats.zarr", tiny_backbone, clips=60)
    store = FeatureStore.open(tmp_path / "feats.zarr")
    expected = _old_predictions()
    ids = sorted(next(iter(expected.values())))
    data = load_sequences([store], ids, crops=[None], layers=(None, 0, 1, 2))
    assert set(expected) == {
        "compact-last", "compact-weighted", "mean-linear-last", "mean-linear-weighted"
    }  # fmt: skip
    for name, by_clip in expected.items():
        head = load_head(OLD_HEADS / name)
        card = json.loads((OLD_HEADS / name / "config.json").read_text())
        assert "standardize" not in card["head"] and not head.config.head.standardize
        raw = predict_batches(head.model, data, ids, device="cpu")
        got = np.stack([raw[c] for c in ids])
        np.testing.assert_allclose(got, np.array([by_clip[c] for c in ids]), rtol=0, atol=1e-6)
    # and they still score stores: a layer-weighted head and a linear one, by the CLI
    out = tmp_path / "p.csv"
    run_cli("predict", store.location, "--head", OLD_HEADS / "mean-linear-weighted", "-o", out)
    assert len(list(csv.DictReader(out.open()))) == 60


def test_card_fields_of_the_input_scale_are_checked(store_and_labels, tmp_path):
    made = store_and_labels
    head = tmp_path / "h"
    train_cli(made, head, "--preset", "mean-linear")
    for field, value, words in (
        ("standardize", "yes", "true or false"),
        ("mix", "concat", "only for a mean-linear"),
        ("mix", "sum", "'softmax' or 'concat'"),
    ):
        edited = tmp_path / f"edited-{field}-{value}"
        shutil.copytree(head, edited)
        card = json.loads((edited / "config.json").read_text())
        card["head"][field] = value
        if words.startswith("only"):
            card["head"].update(head_type="fusion", lstm_hidden=4, lstm_layers=1, mlp_hidden=4)
        card["card_sha256"] = card_digest(card)  # a careful edit: the rules still hold it
        (edited / "config.json").write_text(json.dumps(card))
        result = run_cli("predict", made["store"], "--head", edited, "-o", tmp_path / "p.csv",
                         expect=2)  # fmt: skip
        assert f"head.{field}" in result.output and words in result.output


# ------------------------------------------------------------------ layer weights that move


@pytest.mark.parametrize("standardize", [True, False])
def test_layer_weights_move_to_the_layer_that_carries_the_signal(
    layered,  # noqa: F811 (the imported fixture)
    tmp_path,
    standardize,
):
    """Standardized inputs (emi's recipe) or raw ones with each layer normalized before
    the mix (the paper's raw inputs): the layer with the signal takes most of the
    weight within one run (180 clips, 25 epochs: 150 steps)."""
    store = FeatureStore.open(layered["store"])
    plan = HeadPlan(
        "weighted",
        preset="compact",
        sizes={"lstm_hidden": 16, "mlp_hidden": 16},
        settings=TrainSettings(epochs=25, patience=0, lr=1e-2, standardize=standardize),
        layer="weighted",
    )
    tables = [read_labels(layered[k]) for k in ("train", "valid")]
    (trained,) = train_heads(store, *tables, [plan], tmp_path)
    weights = trained.metrics["layer_weights"]
    first = trained.metrics["epochs"][0]["layer_weights"]
    assert weights[str(SIGNAL_LAYER)] == max(weights.values())
    assert weights[str(SIGNAL_LAYER)] > 0.45  # from 1/3 each
    assert weights[str(SIGNAL_LAYER)] - 1 / 3 > 2 * (first[str(SIGNAL_LAYER)] - 1 / 3)
    assert trained.best_val_pearson > 0.4
    card = json.loads((tmp_path / "weighted" / "config.json").read_text())
    assert card["head"]["layer_norm"] is (not standardize)
    assert card["head"]["standardize"] is standardize


# ------------------------------------------------------------------ recipes


def test_the_paper_preset_is_the_papers_recipe_and_says_so(store_and_labels, tmp_path):
    made = store_and_labels
    common = ["--labels", made["train"], "--val-labels", made["valid"], "--quiet",
              "--lstm-hidden", "8", "--mlp-hidden", "8"]  # fmt: skip
    run_cli("train", made["store"], *common, "--out", tmp_path / "paper", "--preset", "paper",
            "--epochs", "30")  # fmt: skip
    run_cli("train", made["store"], *common, "--out", tmp_path / "default", "--epochs", "3")
    paper = json.loads((tmp_path / "paper" / "config.json").read_text())
    default = json.loads((tmp_path / "default" / "config.json").read_text())
    assert paper["training"]["recipe"] == "the paper's recipe, exactly"
    assert {k: paper["training"][k] for k in PAPER_RECIPE} == PAPER_RECIPE
    assert paper["head"]["standardize"] is False and paper["head"]["lstm_layers"] == 2
    assert len(json.loads((tmp_path / "paper" / "metrics.json").read_text())["epochs"]) == 30
    assert default["preset"] == "compact" and default["head"]["lstm_hidden"] == 8
    assert default["training"]["recipe"] == "emi's recipe with epochs=3"
    assert {k: default["training"][k] for k in EMI_RECIPE if k != "epochs"} == {
        k: v for k, v in EMI_RECIPE.items() if k != "epochs"
    }
    assert default["head"]["standardize"] is True


def test_grid_keys_override_the_recipe_and_the_grid_loads_the_features_once(
    store_and_labels, tmp_path, monkeypatch
):
    from models.sequences import SequenceData

    reads = []
    original = SequenceData._read_parts
    monkeypatch.setattr(
        SequenceData,
        "_read_parts",
        lambda self, parts: reads.append(parts) or original(self, parts),
    )
    made = store_and_labels
    grid = {
        "defaults": {"lstm_hidden": 8, "mlp_hidden": 8, "epochs": 2},
        "heads": [
            {"name": "emi", "preset": "compact"},
            {"name": "paper-std", "preset": "paper", "standardize": True, "lr": 1e-3},
            {"name": "emi-raw", "preset": "compact", "standardize": False},
            {"name": "ridge", "preset": "mean-linear"},
        ],
    }
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    run_cli(
        "train", made["store"], "--labels", made["train"], "--val-labels", made["valid"],
        "--out", tmp_path / "heads", "--grid", tmp_path / "grid.json", "--quiet",
    )  # fmt: skip
    assert len(reads) == 1  # four heads, standardization statistics included: one load
    cards = {
        n: json.loads((tmp_path / "heads" / n / "config.json").read_text())
        for n in ("emi", "paper-std", "emi-raw", "ridge")
    }
    assert cards["paper-std"]["training"]["recipe"] == (
        "the paper's recipe with epochs=2, lr=0.001, standardize=True"
    )
    assert cards["paper-std"]["head"]["standardize"] is True
    assert cards["emi-raw"]["head"]["standardize"] is False
    assert cards["emi"]["training"]["lr"] == EMI_RECIPE["lr"]


def test_training_stops_early_after_patience_epochs_without_improvement(store_and_labels, tmp_path):
    made = store_and_labels
    store = FeatureStore.open(made["store"])
    plan = HeadPlan(
        "patient",
        preset="compact",
        sizes={"lstm_hidden": 8, "mlp_hidden": 8},
        settings=TrainSettings(epochs=60, patience=3, lr=3e-2),
    )
    tables = [read_labels(made[k]) for k in ("train", "valid")]
    (trained,) = train_heads(store, *tables, [plan], tmp_path / "p", single=True)
    epochs = trained.metrics["epochs"]
    assert len(epochs) == trained.best_epoch + 3 < 60
    best = max(e["val"]["pearson_mean"] for e in epochs)
    assert epochs[trained.best_epoch - 1]["val"]["pearson_mean"] == best


def test_the_demo_log_keeps_early_stops_and_ridge_lines():
    from service.demo import _every_fifth

    assert _every_fifth("h: stopping early after epoch 11: no better validation mean Pearson")
    assert _every_fifth("h: ridge penalties 10, 100 by leave-one-out on 144 training clips")
    assert _every_fifth("h: epoch 5/30 loss 0.1 val pearson 0.5")
    assert not _every_fifth("h: epoch 7/30 loss 0.1 val pearson 0.5")
