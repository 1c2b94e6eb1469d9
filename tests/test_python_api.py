"""The docs' Python API page, executed as written; and each public name importable
from its package."""

import re
from pathlib import Path

import pytest

import featurestore
import models
from tests.docs_blocks import page_blocks

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_python_api_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = page_blocks("docs/python-api.md", "python")
    assert len(blocks) >= 3
    for run in (1, 2):  # as a reader runs them, and runs them again in the same folder
        namespace: dict = {}
        for block in blocks:
            code = compile(block.text, f"{block.page}:{block.line} (run {run})", "exec")
            exec(code, namespace)  # noqa: S102
        assert (tmp_path / "work" / "predictions.csv").is_file()
        assert namespace["head"].folder == Path("work/heads/compact")
    assert namespace["summary"].extracted == 0 and namespace["summary"].already_stored == 30


def test_every_exported_name_resolves():
    for package in (featurestore, models):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)


def test_the_docs_store_layout_lists_the_schema():
    from featurestore.spec import FeatureSpec
    from featurestore.store import schema

    spec = FeatureSpec.from_dict(
        {"backbone": {}, "hidden_size": 8, "max_seconds": None, "window_seconds": None}
    )
    arrays = schema(FeatureSpec(**{**spec.__dict__, "layers": (6,)}))  # one stored layer

    [block] = [b.text for b in page_blocks("docs/store.md", "") if b.text.startswith("feats.zarr/")]
    listed = {
        name: [d.strip() for d in dims.split(",") if d.strip()]
        for name, dims in re.findall(r"^\s+(\w+)\s+\(([\w, ]+)\)", block, flags=re.M)
    }
    axis = {"clip": "clip", "offsets": "clip_offset", "frame": "frame"}
    for a in arrays:
        assert listed.get(a.name) == [axis[a.axis], *([a.width] if a.width else [])], a.name
    assert set(listed) == {a.name for a in arrays}


def test_records_round_trip_through_json(layer_store, tmp_path):
    import json

    from featurestore import FeatureStore
    from featurestore.records import ClipFailure
    from featurestore.spec import FeatureSpec

    store = FeatureStore.open(layer_store)
    spec = FeatureSpec.from_dict(json.loads(json.dumps(store.spec.to_dict())))
    assert spec == store.spec and spec.fingerprint == store.fingerprint
    assert spec.backbone.feat_extract_norm == store.spec["backbone"]["feat_extract_norm"]
    failure = ClipFailure("a", "/x.wav", "empty file", at="2026-01-01T00:00:00+00:00")
    assert ClipFailure.from_dict(json.loads(json.dumps(failure.to_dict()))) == failure
    info = store.clip_info(store.clip_ids[0])
    assert info["frames"] == info.frames == store.frames(info.clip_id)
    table = store.table()
    assert table["clip_id"] == store.clip_ids
    assert table["frames"] == [store.frames(c) for c in store.clip_ids]
    assert table["source_path"][0] == info.source_path


def test_a_head_card_round_trips(layer_store, tmp_path):
    import json

    from featurestore import FeatureStore
    from models.head_files import HeadCard, StoreRef
    from models.heads import preset_config

    store = FeatureStore.open(layer_store)
    card = HeadCard(
        name="h",
        preset="compact",
        head=preset_config("compact", input_dim=35, num_targets=2),
        parameters=123,
        targets=("Joy", "Amusement"),
        training={"epochs": 2, "device": "cpu"},
        store=StoreRef(store.fingerprint, store.location, store.spec),
        best_epoch=2,
        best_val_pearson_mean=0.5,
    )
    again = HeadCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again["store"]["spec"]["hidden_size"] == 32


def test_store_dataset_serves_what_the_trainer_reads(layer_store, tmp_path):
    import numpy as np
    import torch

    from featurestore import FeatureStore
    from models import StoreDataset
    from models.sequences import SequenceData

    store = FeatureStore.open(layer_store)
    ids = sorted(store.clip_ids)
    labels = tmp_path / "labels.csv"
    labels.write_text("Filename,Joy\n" + "".join(f"{c},{i / 10}\n" for i, c in enumerate(ids)))
    for budget in (1 << 30, 0):  # cached in memory, and read clip by clip from the store
        data = StoreDataset(store, labels=labels, budget_bytes=budget)
        assert len(data) == len(ids)
        item = data[ids.index("00002")]
        expected = np.concatenate(
            [store.hidden("00002").astype(np.float32), store.frame_vad("00002")], axis=1
        )
        np.testing.assert_allclose(item["frames"].numpy(), expected, rtol=0, atol=1e-3)
        assert float(item["target"][0]) == pytest.approx(ids.index("00002") / 10)
        batch = data.collate([data[i] for i in range(4)])
        reference = next(SequenceData(store, ids[:4]).batches(4, clip_ids=ids[:4]))
        order = [reference.clip_ids.index(c) for c in batch.clip_ids]
        torch.testing.assert_close(batch.lengths, reference.lengths[order])
        torch.testing.assert_close(batch.mean, reference.mean[order], atol=1e-3, rtol=0)
    cropped = StoreDataset(store, max_frames=10)[0]
    assert len(cropped["frames"]) <= 10
    torch.testing.assert_close(cropped["mean"], cropped["frames"].mean(0))


@pytest.mark.slow
def test_export_repair_and_demo_from_python(layer_store, tmp_path):
    import shutil

    import h5py

    from featurestore import FeatureStore, export_hdf5, repair_store
    from service import run_demo

    copy = tmp_path / "copy.zarr"
    shutil.copytree(layer_store, copy)
    assert export_hdf5(FeatureStore.open(copy), tmp_path / "f.h5") == len(FeatureStore.open(copy))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert len(f["clips"]) == len(FeatureStore.open(copy))
    report = repair_store(str(copy))
    assert report.dropped_parts == [] and report.problems == []
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", clips=20, size="tiny", epochs=1, echo=lines.append)
    assert set(result.scores) == {"compact", "mean-linear"}
    assert any("held-out test Pearson" in line for line in lines)


def test_the_cli_starts_without_torch():
    import subprocess
    import sys

    probe = "import sys, cli.main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


def test_read_clips_streams_what_single_reads_return(layer_store):
    import numpy as np

    from featurestore import FeatureStore

    store = FeatureStore.open(layer_store)
    wanted = store.clip_ids[:3]
    seen = {}
    for clip_id, hidden, frame_vad in store.read_clips(wanted, max_frames=20):
        np.testing.assert_array_equal(hidden, store.hidden(clip_id)[:20])
        np.testing.assert_array_equal(frame_vad, store.frame_vad(clip_id)[:20])
        seen[clip_id] = len(hidden)
    assert sorted(seen) == sorted(wanted)
