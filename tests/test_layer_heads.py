"""Heads that choose a stored layer or learn a weighting over them (SUPERB style)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from featurestore.backbone import identify_backbone
from featurestore.encode import ClipFeatures
from featurestore.location import StoreLocation
from featurestore.spec import build_spec, layer_key
from featurestore.store import FeatureStore, StoredClip, StoreWriter
from featurestore.store.imported import commit_features
from manifests import read_labels
from models.compare import compare_heads
from models.metrics import pearson
from models.sequences import SequenceData
from models.training import HeadPlan, TrainSettings, train_heads
from tests.conftest import run_cli
from tests.test_models import TARGETS, write_labels

SIGNAL_LAYER = 1  # the only layer that carries the targets


def make_layer_store(location: Path, backbone: Path, *, clips: int = 240, seed: int = 0):
    """A store with layers 0, 1, 2 (tiny backbone: 2 transformer layers) and the last
    hidden state; only layer 1 carries the targets (target 0 in its mean, target 1 in
    its last frames), the others are noise. Returns the targets per clip."""
    identity = identify_backbone(str(backbone))
    spec = build_spec(identity, max_seconds=None, window_seconds=30.0, layers="all")
    assert spec.layers == (0, 1, 2)
    writer = StoreWriter.open(StoreLocation.of(location), spec, lock=None)
    rng = np.random.default_rng(seed)
    dim = spec.hidden_size
    targets, batch, stored = {}, [], []
    for i in range(clips):
        frames = int(rng.integers(30, 90))
        share, tail = rng.uniform(0.1, 0.9), rng.uniform(0, 1)
        states = {}
        for layer in (None, 0, 1, 2):
            # per-clip offsets (like speaker or channel) outside the signal's dimensions
            values = rng.normal(0, 1, size=(frames, dim))
            values[:, 2:] += rng.normal(0, 1.0, size=dim - 2)
            if layer == SIGNAL_LAYER:
                values[:, 0] += 1.0 * np.where(rng.uniform(size=frames) < share, 1.0, -1.0)
                values[-10:, 1] += 2.0 * tail
                values[:-10, 1] -= 2.0 * tail * 10 / (frames - 10)
            states[layer] = values.astype(np.float16)
        vad = rng.normal(0, 1, size=(frames, 3)).astype(np.float32)
        clip_id = f"{i:05d}"
        targets[clip_id] = np.array([share, tail], dtype=np.float32)
        stored.append(StoredClip(clip_id, f"/synthetic/{clip_id}.wav", "0" * 64, frames / 50))
        layers = {}
        for k in (0, 1, 2):
            layers[layer_key("hidden", k)] = states[k]
            layers[layer_key("hidden_mean", k)] = states[k].astype(np.float32).mean(0)
        batch.append(
            ClipFeatures(
                states[None], vad, states[None].astype(np.float32).mean(0), vad.mean(0),
                np.zeros(3, np.float32), layers=layers,
            )
        )  # fmt: skip
        if len(batch) == 50 or i == clips - 1:
            commit_features(writer, stored, batch)
            batch, stored = [], []
    return targets


@pytest.fixture(scope="module")
def layered(tmp_path_factory, tiny_backbone):
    folder = tmp_path_factory.mktemp("layered")
    targets = make_layer_store(folder / "feats.zarr", tiny_backbone)
    ids = sorted(targets)
    return {
        "store": folder / "feats.zarr",
        "train": write_labels(folder / "train.csv", targets, ids[:180]),
        "valid": write_labels(folder / "valid.csv", targets, ids[180:]),
        "targets": targets,
    }


FAST = TrainSettings(epochs=25, lr=1e-2, batch_size=32, seed=1)


@pytest.mark.slow
def test_the_layer_choice_decides_what_a_head_learns(layered, tmp_path, monkeypatch):
    reads = []
    original = SequenceData._read_parts
    monkeypatch.setattr(
        SequenceData,
        "_read_parts",
        lambda self, parts: reads.append(parts) or original(self, parts),
    )
    store = FeatureStore.open(layered["store"])
    sizes = {"lstm_hidden": 32, "mlp_hidden": 32}
    plans = [
        HeadPlan(name=name, preset="compact", sizes=sizes, settings=FAST, layer=layer)
        for name, layer in (("last", None), ("layer1", 1), ("layer0", 0), ("weighted", "weighted"))
    ]
    trained = train_heads(
        store, read_labels(layered["train"]), read_labels(layered["valid"]), plans, tmp_path
    )
    assert len(reads) == 1  # every head from one read of the store (all layers at once)
    score = {t.name: t.best_val_pearson for t in trained}
    assert score["layer1"] > 0.5 and score["weighted"] > 0.5  # measured 0.61, 0.63
    assert score["last"] < 0.3 and score["layer0"] < 0.3  # measured 0.08, 0.10
    weights = json.loads((tmp_path / "weighted" / "metrics.json").read_text())["layer_weights"]
    assert set(weights) == {"0", "1", "2"} and sum(weights.values()) == pytest.approx(1, abs=1e-5)
    # started equal (1/3 each); learned to favour the layer with the signal (0.61)
    assert weights["1"] == max(weights.values()) and weights["1"] > 0.5
    config = json.loads((tmp_path / "weighted" / "config.json").read_text())
    assert config["head"]["layers"] == [0, 1, 2]
    assert json.loads((tmp_path / "layer1" / "config.json").read_text())["head"]["layers"] == [1]
    rows = {r.name: r for r in compare_heads([tmp_path])}
    assert rows["weighted"].layer == "weighted(0-2)" and rows["layer1"].layer == "1"
    assert rows["last"].layer == "last"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "layer" in summary["varying"]


@pytest.mark.parametrize(
    "preset,options",
    [
        ("mean-linear", ("--layer", "1")),
        ("mean-linear", ("--layers", "weighted")),  # closed form: the layers side by side
        ("compact", ("--layers", "weighted", "--lstm-hidden", "8", "--mlp-hidden", "8")),
    ],
)
def test_layer_heads_reload_and_predict_their_validation_score(layered, tmp_path, preset, options):
    head = tmp_path / "head"
    run_cli(
        "train", layered["store"], "--labels", layered["train"], "--val-labels",
        layered["valid"], "--out", head, "--preset", preset, "--epochs", "25",
        "--lr", "1e-2", "--quiet", *options,
    )  # fmt: skip
    metrics = json.loads((head / "metrics.json").read_text())
    run_cli("predict", layered["store"], "--head", head, "-o", tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    valid = set(read_labels(layered["valid"]).rows)
    pred = np.array([[float(r[t]) for t in TARGETS] for r in rows if r["clip_id"] in valid])
    true = np.array([layered["targets"][r["clip_id"]] for r in rows if r["clip_id"] in valid])
    best = metrics["epochs"][metrics["best_epoch"] - 1]["val"]["pearson"]
    # (target 1 is near constant for a head that reads means: its r is ill-conditioned)
    assert pearson(pred, true)[0] == pytest.approx(best[TARGETS[0]], abs=1e-3)
    assert best[TARGETS[0]] > 0.6  # the mean of layer 1 carries target 0
    config = json.loads((head / "config.json").read_text())
    if preset == "compact":
        assert (head / "learning_curves.png").stat().st_size > 0
        assert set(metrics["layer_weights"]) == {"0", "1", "2"}
    else:
        assert (head / "ridge_penalty.png").stat().st_size > 0 and "layer_weights" not in metrics
        if "weighted" in options:
            assert config["head"]["mix"] == "concat" and config["head"]["layers"] == [0, 1, 2]


def test_layer_choices_that_do_not_fit_the_store_are_refused(layered, layer_store, tmp_path):
    common = ["--labels", layered["train"], "--val-labels", layered["valid"], "--quiet"]
    bad = run_cli("train", layered["store"], *common, "--out", tmp_path / "a", "--layer", "5",
                  expect=2)  # fmt: skip
    assert "layer 5 is not stored (stored layers: 0, 1, 2)" in bad.output
    bad = run_cli("train", layered["store"], *common, "--out", tmp_path / "b", "--layer", "x",
                  expect=2)  # fmt: skip
    assert "'last' or a layer number" in bad.output
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"grid": {"layer": [1], "layers": ["weighted"]}}))
    bad = run_cli("train", layered["store"], *common, "--out", tmp_path / "c", "--grid", grid,
                  expect=2)  # fmt: skip
    assert "not both" in bad.output
    assert not any((tmp_path / n).exists() for n in "abc")
