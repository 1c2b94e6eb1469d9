"""Inputs checked at the door: each bad input is a clear error (exit 2, no traceback)
or simply works."""

import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from featurestore.hdf5 import hdf5_name
from featurestore.store import FeatureStore
from manifests import build_manifest, load_manifest, save_manifest
from tests.conftest import labelled_store, run_cli, train_cli
from tests.synth import write_clip


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_backbone):
    return labelled_store(
        tmp_path_factory.mktemp("labelled"), tiny_backbone, clips=12, seed=3, max_seconds=1.5
    )


def _train(labelled, out, *extra, expect=2):
    return train_cli(labelled, out, *extra, expect=expect)


GRIDS = {
    "../escaped": ({"heads": [{"name": "../escaped"}]}, "not a plain head name"),
    "absolute name": ({"heads": [{"name": "/tmp/elsewhere"}]}, "not a plain head name"),
    "epochs 0": ({"heads": [{"epochs": 0}]}, "epochs: 0 is not an integer >= 1"),
    "batch_size 0": ({"heads": [{"batch_size": 0}]}, "batch_size"),
    "lr -1": ({"heads": [{"lr": -1}]}, "lr"),
    "epochs as text": ({"heads": [{"epochs": "2"}]}, "epochs: '2'"),
    "lstm_hidden 0": ({"heads": [{"lstm_hidden": 0}]}, "lstm_hidden"),
    "max_seconds -5": ({"heads": [{"max_seconds": -5}]}, "max_seconds"),
    "not an object": ([1, 2], "JSON object"),
    "heads not a list": ({"heads": {"name": "a"}}, "'heads' must be"),
}


@pytest.mark.parametrize("case", list(GRIDS))
def test_bad_grid_names_and_values_exit_2(case, labelled, tmp_path):
    grid, message = GRIDS[case]
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    result = _train(labelled, tmp_path / "heads", "--grid", tmp_path / "grid.json")
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "heads").exists() and not (tmp_path / "escaped").exists()


def test_grid_targets_as_text_is_one_target(labelled, tmp_path):
    (tmp_path / "grid.json").write_text(json.dumps({"heads": [{"name": "j", "targets": "Joy"}]}))
    _train(
        labelled,
        tmp_path / "heads",
        "--grid",
        tmp_path / "grid.json",
        "--preset",
        "mean-linear",
        expect=0,
    )
    assert json.loads((tmp_path / "heads/j/config.json").read_text())["targets"] == ["Joy"]


def test_broken_backbone_files_are_named(tiny_backbone, labelled, tmp_path):
    config = tmp_path / "bad-config"
    shutil.copytree(tiny_backbone, config)
    (config / "config.json").write_text('{"hidden_size": 32,')
    result = run_cli("extract", labelled["audio"], tmp_path / "a.zarr", "--model", config, expect=2)
    assert "config.json" in result.output and "unreadable config" in result.output
    weights = tmp_path / "bad-weights"
    shutil.copytree(tiny_backbone, weights)
    data = (weights / "model.safetensors").read_bytes()
    (weights / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = run_cli(
        "extract", labelled["audio"], tmp_path / "b.zarr", "--model", weights, expect=2
    )
    assert "model.safetensors" in result.output and "unreadable weights" in result.output
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_truncated_and_nan_heads_are_refused(labelled, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(labelled["head"], truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-10])
    result = run_cli(
        "predict", labelled["store"], "--head", truncated, "-o", tmp_path / "p.csv", expect=2
    )
    assert "model.safetensors" in result.output
    nan = tmp_path / "nan"
    shutil.copytree(labelled["head"], nan)
    state = load_file(str(nan / "model.safetensors"))
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    save_file(state, str(nan / "model.safetensors"))
    config = json.loads((nan / "config.json").read_text())
    import hashlib

    config["weights_sha256"] = hashlib.sha256((nan / "model.safetensors").read_bytes()).hexdigest()
    from models.card_rules import card_digest

    config["card_sha256"] = card_digest(config)  # a card made to match the new weights
    (nan / "config.json").write_text(json.dumps(config))
    result = run_cli(
        "predict", labelled["store"], "--head", nan, "-o", tmp_path / "p.csv", expect=2
    )
    assert "NaN" in result.output and not (tmp_path / "p.csv").exists()


def test_label_files_not_utf8_or_with_repeated_columns(labelled, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Filename,Joy\n00001,0.5\ncaf\xe9,0.2\n".encode("latin-1"))
    result = _train(labelled, tmp_path / "h", "--labels", latin)
    assert "not UTF-8" in result.output
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("Filename,Joy,Joy\n00001,0.5,0.5\n")
    result = _train(labelled, tmp_path / "h", "--labels", repeated)
    assert "repeated" in result.output and "Joy" in result.output


def test_bad_jsonl_manifests_are_named(labelled, tmp_path):
    rows = [r.to_dict() for r in build_manifest(labelled["audio"])[:2]]
    for case, change in (
        ("labels-list", {"labels": [0.1, 0.2]}),
        ("null-id", {"clip_id": None}),
    ):
        path = tmp_path / f"{case}.jsonl"
        path.write_text("\n".join(json.dumps({**r, **change}) for r in rows) + "\n")
        result = run_cli("extract", path, tmp_path / f"{case}.zarr", expect=2)
        assert "line 1" in result.output and str(path) in result.output
        assert not (tmp_path / f"{case}.zarr").exists()


def test_manifest_csv_with_a_byte_order_mark_loads(labelled, tmp_path):
    save_manifest(build_manifest(labelled["audio"]), tmp_path / "m.csv")
    text = (tmp_path / "m.csv").read_text()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [r.clip_id for r in load_manifest(tmp_path / "bom.csv")] == [
        r.clip_id for r in load_manifest(tmp_path / "m.csv")
    ]


def test_export_to_a_missing_folder_is_a_usage_error(labelled, tmp_path):
    result = run_cli("store", "export", labelled["store"], tmp_path / "no" / "f.h5", expect=2)
    assert "no such folder" in result.output and not (tmp_path / "no").exists()


def test_cuda_on_a_machine_without_one_is_one_usage_error(labelled, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    for args in (
        ("predict", labelled["store"], "--head", labelled["head"], "-o", tmp_path / "p.csv"),
        ("extract", labelled["audio"], tmp_path / "s.zarr"),
    ):
        result = run_cli(*args, "--device", "cuda", expect=2)
        assert "no CUDA GPU" in result.output
    result = _train(labelled, tmp_path / "h", "--device", "cuda")
    assert "no CUDA GPU" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started


def test_any_clip_id_round_trips_through_hdf5(tiny_backbone, tmp_path):
    audio = tmp_path / "audio"
    names = [".", "..", "a b", "ünï", "x%2Fy", "~tilde", "sub/inner"]
    for i, name in enumerate(names):
        written = write_clip(audio / f"clip{i}.wav", 0.5, seed=i)
        (audio / f"{name}.wav").parent.mkdir(parents=True, exist_ok=True)
        written.rename(audio / f"{name}.wav")
    store = tmp_path / "s.zarr"
    run_cli("extract", audio, store, "--model", tiny_backbone, "--quiet")
    run_cli("store", "export", store, tmp_path / "f.h5")
    opened = FeatureStore.open(store)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        groups = sorted(f["clips"])
        assert sorted(unquote(g) for g in groups) == sorted(opened.clip_ids)
        for clip_id in opened.clip_ids:
            group = f["clips"][hdf5_name(clip_id)]
            assert group.attrs["clip_id"] == clip_id
            np.testing.assert_array_equal(group["hidden"][()], opened.hidden(clip_id))


def test_a_relative_model_path_is_recorded_absolute(tiny_backbone, labelled, tmp_path, monkeypatch):
    shutil.copytree(tiny_backbone, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    run_cli("extract", labelled["audio"], tmp_path / "s.zarr", "--model", "ckpt", "--quiet")
    ref = FeatureStore.open(tmp_path / "s.zarr").spec["backbone"]["ref"]
    assert Path(ref).is_absolute() and Path(ref) == (tmp_path / "ckpt").resolve()
    monkeypatch.chdir(Path(ref).anchor)  # from elsewhere, the store's default model works
    write_clip(tmp_path / "more" / "new.wav", 0.6, seed=50)
    run_cli("extract", tmp_path / "more", tmp_path / "s.zarr", "--quiet")
