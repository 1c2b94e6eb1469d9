"""Heads, trainer, predictor and metrics, on stores of synthetic features."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from featurestore.backbone import identify_backbone
from featurestore.encode import ClipFeatures
from featurestore.location import StoreLocation
from featurestore.spec import build_spec
from featurestore.store import FeatureStore, StoredClip, StoreWriter
from featurestore.store.imported import commit_features
from manifests import read_labels
from models.head_files import load_head, save_head
from models.heads import build_head, count_parameters, preset_config
from models.metrics import ccc, evaluate, mse, pearson
from models.sequences import SequenceData
from models.training import HeadPlan, TrainSettings, plans_from_grid, train_heads
from tests.conftest import run_cli

TARGETS = ("Admiration", "Amusement")


# ---------------------------------------------------------------- metrics


def test_pearson_equals_scipy():
    rng = np.random.default_rng(0)
    pred, true = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    true[:, 2] += 2 * pred[:, 2]
    expected = [scipy.stats.pearsonr(pred[:, i], true[:, i]).statistic for i in range(6)]
    np.testing.assert_allclose(pearson(pred, true), expected, atol=1e-12)


def test_ccc_and_mse_equal_numpy_formulas():
    rng = np.random.default_rng(1)
    pred, true = rng.normal(size=(40, 3)), rng.normal(1.0, 2.0, size=(40, 3))
    for i in range(3):
        cov = np.cov(pred[:, i], true[:, i], bias=True)[0, 1]
        expected = (
            2
            * cov
            / (pred[:, i].var() + true[:, i].var() + (pred[:, i].mean() - true[:, i].mean()) ** 2)
        )
        assert ccc(pred, true)[i] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(mse(pred, true), np.mean((pred - true) ** 2, axis=0))


def test_degenerate_metrics_are_defined():
    true = np.linspace(0, 1, 10)
    constant = np.full(10, 0.5)
    assert pearson(constant, true)[0] == 0.0  # constant prediction
    assert pearson(true, constant)[0] == 0.0  # constant target
    assert pearson(true[:1], true[:1])[0] == 0.0  # one clip
    assert ccc(constant, constant)[0] == 1.0  # same constant: perfect agreement
    assert ccc(constant, true)[0] == pytest.approx(0.0)
    scores = evaluate(np.stack([constant, true], 1), np.stack([true, true], 1), ["a", "b"])
    assert scores["pearson"] == {"a": 0.0, "b": pytest.approx(1.0)}
    assert scores["pearson_mean"] == pytest.approx(0.5)


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 12), (5, 5), (1, 1)])
def test_the_lr_schedule_equals_transformers_cosine_with_warmup(warmup, total):
    """emi's own schedule, step for step (and past the end), against transformers'."""
    from transformers import get_cosine_schedule_with_warmup

    from models.training import warmup_cosine

    rates = []
    for make in (warmup_cosine, get_cosine_schedule_with_warmup):
        optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        schedule = make(optimiser, warmup, total)
        seen = []
        for _ in range(total + 3):
            seen.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            schedule.step()
        rates.append(seen)
    assert rates[0] == pytest.approx(rates[1], abs=1e-12)
    assert max(rates[0]) == pytest.approx(0.5)
    if total > warmup:
        assert rates[0][total] == pytest.approx(0.0)


def test_paper_preset_has_the_papers_parameter_count():
    head = build_head(preset_config("paper", input_dim=1027, num_targets=6))
    assert count_parameters(head) == 21_125_396
    lstm = head.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional) == (
        1027,
        1027,
        2,
        False,
    )
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (2054, 2054, 6)


def test_fusion_head_equals_the_packed_sequence_lstm():
    from torch.nn.utils.rnn import pack_padded_sequence

    head = build_head(preset_config("paper", input_dim=6, num_targets=2)).eval()
    frames, lengths = torch.randn(5, 13, 6), torch.tensor([13, 1, 7, 13, 4])
    mean = frames.mean(1)
    with torch.no_grad():
        packed = pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = head.lstm(packed)
        x = torch.tanh(head.fc1(torch.cat([mean, h_n[-1]], 1)))
        torch.testing.assert_close(head(frames, lengths, mean), head.fc2(x))


def test_fusion_head_uses_the_last_real_frame():
    head = build_head(preset_config("compact", input_dim=5, num_targets=2)).eval()
    torch.manual_seed(0)
    seq = torch.randn(1, 7, 5)
    mean = seq.mean(1)
    padded = torch.cat([seq, torch.randn(1, 4, 5) * 100], dim=1)  # garbage after the end
    with torch.no_grad():
        a = head(seq, torch.tensor([7]), mean)
        b = head(padded, torch.tensor([7]), mean)
        c = head(padded, torch.tensor([11]), mean)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_saved_head_reloads_and_predicts_identically(tmp_path):
    config = preset_config("paper", input_dim=11, num_targets=3)
    torch.manual_seed(3)
    model = build_head(config).eval()
    save_head(
        tmp_path / "h",
        model,
        {
            "name": "h",
            "head": config.to_dict(),
            "targets": ["a", "b", "c"],
            "training": {},
            "store": {"fingerprint": "f" * 64},
        },
        {"epochs": []},
    )
    loaded = load_head(tmp_path / "h")
    x, lengths = torch.randn(4, 9, 11), torch.tensor([9, 3, 5, 1])
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, lengths, x.mean(1)), loaded.model(x, lengths, x.mean(1)), rtol=0, atol=0
        )
    assert not list(tmp_path.glob("h/*.pt")) and not list(tmp_path.glob("h/*.pkl"))


# ---------------------------------------------------------------- a synthetic store


def make_store(
    location: Path, backbone: Path, *, clips: int = 240, seed: int = 0, clips_per_part: int = 40
) -> dict[str, np.ndarray]:
    """A store of synthetic features with learnable targets; returns targets per clip.

    Target 0 is the share of frames whose feature 0 is shifted up (visible in the mean);
    target 1 is a shift of feature 1 over the last 10 frames (only the sequence shows it).
    """
    identity = identify_backbone(str(backbone))
    spec = build_spec(identity, max_seconds=None, window_seconds=30.0)
    writer = StoreWriter.open(StoreLocation.of(location), spec, lock=None)
    rng = np.random.default_rng(seed)
    dim = spec["hidden_size"]
    targets, batch, stored = {}, [], []
    for i in range(clips):
        frames = int(rng.integers(30, 120))
        share, tail = rng.uniform(0.1, 0.9), rng.uniform(0, 1)
        # Per-clip nuisance offsets in the other dimensions (like speaker or channel)
        # make the targets a small part of the input's variation, so an untrained or
        # shuffled-label head does not correlate with them by accident.
        hidden = rng.normal(0, 1, size=(frames, dim))
        hidden[:, 2:] += rng.normal(0, 1.0, size=dim - 2)
        hidden[:, 0] += 1.0 * np.where(rng.uniform(size=frames) < share, 1.0, -1.0)
        hidden[-10:, 1] += 2.0 * tail  # visible at the end only: the mean is unchanged
        hidden[:-10, 1] -= 2.0 * tail * 10 / (frames - 10)
        hidden = hidden.astype(np.float32)
        vad = rng.normal(0, 1, size=(frames, 3)).astype(np.float32)
        clip_id = f"{i:05d}"
        targets[clip_id] = np.array([share, tail], dtype=np.float32)
        stored.append(StoredClip(clip_id, f"/synthetic/{clip_id}.wav", "0" * 64, frames / 50))
        batch.append(
            ClipFeatures(
                hidden.astype(np.float16), vad, hidden.mean(0), vad.mean(0), np.zeros(3, np.float32)
            )
        )
        if len(batch) == clips_per_part or i == clips - 1:
            commit_features(writer, stored, batch)
            batch, stored = [], []
    return targets


def write_labels(path: Path, targets: dict[str, np.ndarray], ids: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Filename", *TARGETS])
        for clip_id in ids:
            writer.writerow([clip_id, *(f"{v:.5f}" for v in targets[clip_id])])
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, tiny_backbone):
    folder = tmp_path_factory.mktemp("synthetic")
    targets = make_store(folder / "feats.zarr", tiny_backbone)
    ids = sorted(targets)
    train = write_labels(folder / "train_split.csv", targets, ids[:180])
    val = write_labels(folder / "valid_split.csv", targets, ids[180:])
    rng = np.random.default_rng(5)
    shuffled_values = {
        c: targets[i] for c, i in zip(ids[:180], rng.permutation(ids[:180]), strict=True)
    }
    shuffled = write_labels(folder / "shuffled_split.csv", shuffled_values, ids[:180])
    return {
        "folder": folder,
        "store": folder / "feats.zarr",
        "train": train,
        "val": val,
        "shuffled": shuffled,
        "targets": targets,
    }


FAST = TrainSettings(epochs=25, lr=1e-2, batch_size=32, seed=1)


@pytest.mark.slow
def test_fusion_head_learns_and_shuffled_labels_do_not(synthetic, tmp_path):
    store = FeatureStore.open(synthetic["store"])
    plan = HeadPlan(
        name="fusion", preset="compact", sizes={"lstm_hidden": 32, "mlp_hidden": 32}, settings=FAST
    )
    [real] = train_heads(
        store,
        read_labels(synthetic["train"]),
        read_labels(synthetic["val"]),
        [plan],
        tmp_path / "real",
        single=True,
    )
    [shuffled] = train_heads(
        store,
        read_labels(synthetic["shuffled"]),
        read_labels(synthetic["val"]),
        [plan],
        tmp_path / "shuffled",
        single=True,
    )

    def best(result, target):
        return result.metrics["epochs"][result.best_epoch - 1]["val"]["pearson"][target]

    assert best(real, "Admiration") > 0.75  # the target carried by the features
    assert abs(best(shuffled, "Admiration")) < 0.3
    assert real.best_val_pearson > shuffled.best_val_pearson + 0.3


def test_head_folder_contents_and_reload(synthetic, tmp_path):
    result = run_cli(
        "train",
        synthetic["store"],
        "--labels",
        synthetic["train"],
        "--val-labels",
        synthetic["val"],
        "--out",
        tmp_path / "head",
        "--preset",
        "compact",
        "--epochs",
        "3",
        "--lr",
        "3e-3",
        "--quiet",
    )
    assert "head" in result.output
    folder = tmp_path / "head"
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "metrics.json",
        "learning_curves.png",
    }
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    store = FeatureStore.open(synthetic["store"])
    assert config["store"]["fingerprint"] == store.fingerprint
    assert config["targets"] == list(TARGETS) and config["training"]["lr"] == 3e-3
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert set(metrics["epochs"][0]["val"]["pearson"]) == set(TARGETS)
    # The reloaded head is the best epoch's: it reproduces that epoch's validation score.
    run_cli("predict", synthetic["store"], "--head", folder, "-o", tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == len(store.clip_ids) and list(rows[0]) == ["clip_id", *TARGETS]
    val_ids = set(read_labels(synthetic["val"]).rows)
    pred = np.array([[float(r[t]) for t in TARGETS] for r in rows if r["clip_id"] in val_ids])
    true = np.array([synthetic["targets"][r["clip_id"]] for r in rows if r["clip_id"] in val_ids])
    assert ((pred >= 0) & (pred <= 1)).all()
    best = metrics["epochs"][metrics["best_epoch"] - 1]["val"]["pearson_mean"]
    assert pearson(pred, true).mean() == pytest.approx(best, abs=1e-3)


@pytest.mark.slow
def test_grid_trains_many_heads_over_one_data_load(synthetic, tmp_path, monkeypatch):
    reads = []
    original = SequenceData._read_parts
    monkeypatch.setattr(
        SequenceData,
        "_read_parts",
        lambda self, parts: reads.append(list(parts)) or original(self, parts),
    )
    grid = {
        "defaults": {"epochs": 2, "preset": "compact"},
        "heads": [{"name": "linear", "preset": "mean-linear"}],
        "grid": {"seed": [1, 2], "targets": [["Admiration"]]},
    }
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    result = run_cli(
        "train",
        synthetic["store"],
        "--labels",
        synthetic["train"],
        "--val-labels",
        synthetic["val"],
        "--out",
        tmp_path / "heads",
        "--grid",
        tmp_path / "grid.json",
        "--quiet",
    )
    names = sorted(p.name for p in (tmp_path / "heads").iterdir() if p.is_dir())
    assert names == ["linear", "seed1-targetsAdmiration", "seed2-targetsAdmiration"]
    summary = json.loads((tmp_path / "heads/summary.json").read_text())
    assert sorted(r["name"] for r in summary["heads"]) == names
    assert {"preset", "seed", "targets"} <= set(summary["varying"])
    scores = [r["val_pearson_mean"] for r in summary["heads"]]
    assert scores == sorted(scores, reverse=True)  # best head first
    with (tmp_path / "heads/summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [r["name"] for r in summary["heads"]]
    for row, entry in zip(rows, summary["heads"], strict=True):
        config = json.loads((tmp_path / "heads" / row["name"] / "config.json").read_text())
        assert int(row["best_epoch"]) == config["best_epoch"] == entry["best_epoch"]
        assert int(row["parameters"]) == config["parameters"]
    assert len(reads) == 1  # one load of the features for all three heads
    assert json.loads((tmp_path / "heads/seed2-targetsAdmiration/config.json").read_text())[
        "targets"
    ] == ["Admiration"]
    assert "seed1-targetsAdmiration" in result.output
    run_cli(
        "predict",
        synthetic["store"],
        "--head",
        tmp_path / "heads/linear",
        "--head",
        tmp_path / "heads/seed1-targetsAdmiration",
        "-o",
        tmp_path / "two.csv",
    )
    header = next(csv.reader((tmp_path / "two.csv").open()))
    assert header == [
        "clip_id",
        "linear/Admiration",
        "linear/Amusement",
        "seed1-targetsAdmiration/Admiration",
    ]


def test_grid_file_errors_are_named():
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        plans_from_grid({"heads": [{"colour": 1}]}, defaults=TrainSettings())
    with pytest.raises(ValueError, match="unknown preset"):
        plans_from_grid({"heads": [{"preset": "huge"}]}, defaults=TrainSettings())


def test_streaming_reads_serve_every_clip_once_per_pass(synthetic):
    store = FeatureStore.open(synthetic["store"])
    ids = store.clip_ids
    cached = SequenceData(store, ids)
    streamed = SequenceData(store, ids, budget_bytes=cached.total_bytes // 3)
    assert cached.cached and not streamed.cached
    for data in (cached, streamed):
        for epoch in range(2):
            seen = [
                c for b in data.batches(16, rng=np.random.default_rng(epoch)) for c in b.clip_ids
            ]
            assert sorted(seen) == sorted(ids)
    assert cached.parts_read == len(store.complete_parts)  # read once, kept
    assert streamed.parts_read == 2 * len(store.complete_parts)  # re-read each pass
    a = {
        c: b for batch in cached.batches(8) for c, b in zip(batch.clip_ids, batch.mean, strict=True)
    }
    b = {
        c: m
        for batch in streamed.batches(8)
        for c, m in zip(batch.clip_ids, batch.mean, strict=True)
    }
    assert all(torch.equal(a[c], b[c]) for c in ids)


def test_crop_takes_the_mean_over_cropped_frames(synthetic):
    store = FeatureStore.open(synthetic["store"])
    clip_id = store.clip_ids[0]
    data = SequenceData(store, [clip_id], max_frames=20)
    [batch] = list(data.batches(1, max_frames=20))
    expected = np.concatenate(
        [store.hidden(clip_id)[:20].astype(np.float32), store.frame_vad(clip_id)[:20]], axis=1
    ).mean(0)
    assert int(batch.lengths[0]) == 20
    np.testing.assert_allclose(batch.mean[0].numpy(), expected, atol=1e-3)


def test_label_problems_are_reported(synthetic, tmp_path):
    header = "Filename,Admiration,Amusement\n"
    cases = {
        "missing": (
            header + "00001,0.1,0.2\n99998,0.1,0.2\n99999,0.3,0.4\n",
            "2 of 3 clips are not in store",
        ),
        "none": (header + "99998,0.1,0.2\n", "none of its 1 clips are in store"),
        "nan": (header + "00001,nan,0.2\n", "1 NaN labels: 00001/Admiration"),
        "range": (header + "00001,1.5,0.2\n", "1 labels outside \\[0.0, 1.0\\]"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.csv").write_text(content)
        result = run_cli(
            "train",
            synthetic["store"],
            "--labels",
            tmp_path / f"{name}.csv",
            "--val-labels",
            synthetic["val"],
            "--out",
            tmp_path / name,
            expect=2,
        )
        assert re.search(message, result.output), (name, result.output)
    ok = run_cli(
        "train",
        synthetic["store"],
        "--labels",
        tmp_path / "missing.csv",
        "--val-labels",
        synthetic["val"],
        "--out",
        tmp_path / "skip",
        "--epochs",
        "1",
        "--skip-missing",
        "--quiet",
    )
    assert ok.exit_code == 0


def test_predict_refuses_a_head_from_another_store(synthetic, tiny_group_backbone, tmp_path):
    run_cli(
        "train",
        synthetic["store"],
        "--labels",
        synthetic["train"],
        "--val-labels",
        synthetic["val"],
        "--out",
        tmp_path / "head",
        "--preset",
        "mean-linear",
        "--epochs",
        "1",
        "--quiet",
    )
    make_store(tmp_path / "other.zarr", tiny_group_backbone, clips=10)
    result = run_cli(
        "predict",
        tmp_path / "other.zarr",
        "--head",
        tmp_path / "head",
        "-o",
        tmp_path / "p.csv",
        expect=2,
    )
    head_fp = FeatureStore.open(synthetic["store"]).fingerprint[:12]
    other_fp = FeatureStore.open(tmp_path / "other.zarr").fingerprint[:12]
    assert head_fp in result.output and other_fp in result.output
    assert not (tmp_path / "p.csv").exists()


def test_training_flushes_denormals_and_restores_the_setting():
    from models.training import flush_denormals

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32

    def product() -> float:
        return float(tiny * 1.0)

    assert product() != 0.0
    assert flush_denormals(product) == 0.0  # the LSTM's fading gradients stop costing 20x
    assert product() != 0.0  # the caller's thread (a notebook's torch) is left as it was
    with pytest.raises(ZeroDivisionError):
        flush_denormals(lambda: 1 / 0)  # errors reach the caller
