"""Several layers per store (``emi extract --layers``): each stored layer equals the
matching ``hidden_states[k]`` of the plain transformers forward."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import zarr

from featurestore.errors import LayerError, StoreDamage
from featurestore.report import verify_store
from featurestore.spec import fingerprint
from featurestore.store import FeatureStore
from tests.conftest import read_16k_mono, run_cli
from tests.reference import ReferenceForward, assert_matches


@pytest.fixture(scope="module")
def all_layers_store(mixed_corpus, tiny_backbone, tmp_path_factory):
    store = tmp_path_factory.mktemp("layers") / "all.zarr"
    run_cli(
        "extract", mixed_corpus, store, "--model", tiny_backbone, "--layers", "all",
        "--batch-seconds", "3", "--quiet",
    )  # fmt: skip
    return store


def _clip_files(corpus):
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        yield path.relative_to(corpus).with_suffix("").as_posix(), path


def test_every_stored_layer_equals_the_reference_hidden_states(
    all_layers_store, mixed_corpus, tiny_backbone
):
    store = FeatureStore.open(all_layers_store)
    assert store.layers == (0, 1, 2)  # tiny: 2 transformer layers, 0 = the first's input
    reference = ReferenceForward(tiny_backbone)
    for clip_id, path in _clip_files(mixed_corpus):
        ref = reference(read_16k_mono(path))
        assert_matches(store, clip_id, ref)  # the last layer and the VAD outputs as before
        for k, expected in enumerate(ref["layers"]):
            stored = store.hidden(clip_id, layer=k).astype(np.float32)
            assert stored.shape == expected.shape, (clip_id, k)
            np.testing.assert_allclose(stored, expected, rtol=2**-10, atol=1e-4)
            np.testing.assert_allclose(
                store.hidden_mean(clip_id, layer=k), expected.mean(0), atol=1e-4
            )
        # a stable-layer-norm model's last hidden state has the final layer norm, which
        # its hidden_states[2] has not: two arrays
        assert np.abs(store.hidden(clip_id) - store.hidden(clip_id, layer=2)).max() > 0.1
    assert verify_store(store) == []


def test_each_layer_is_an_array_of_its_own(all_layers_store):
    """A head reading one layer reads only that layer's chunks: damage to another
    layer's chunks does not reach it (and is noticed where that layer is read)."""
    store = FeatureStore.open(all_layers_store)
    clip_id = store.clip_ids[0]
    part = zarr.open_group(str(all_layers_store / "parts" / store.part_of(clip_id)), mode="r")
    assert {"hidden", "hidden_l00", "hidden_l01", "hidden_mean_l00", "hidden_mean_l01"} <= set(
        part.array_keys()
    )
    assert part["hidden_l01"].metadata.dimension_names == ("frame", "hidden_unit")


def test_damage_in_one_layer_spares_the_others(all_layers_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(all_layers_store, copy)
    store = FeatureStore.open(copy)
    clip_id = store.clip_ids[0]
    chunks = copy / "parts" / store.part_of(clip_id) / "hidden_l00" / "c"
    for chunk in chunks.rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"damaged")
    store = FeatureStore.open(copy)
    assert store.hidden(clip_id, layer=1).shape[0] == store.frames(clip_id)
    with pytest.raises(StoreDamage, match="hidden_l00"):
        store.hidden(clip_id, layer=0)
    assert any("hidden_l00" in p.message for p in verify_store(store))


def test_layers_are_in_the_fingerprint_and_last_keeps_the_old_one(all_layers_store, layer_store):
    last, every = FeatureStore.open(layer_store), FeatureStore.open(all_layers_store)
    assert last.fingerprint != every.fingerprint
    assert every.spec.to_dict()["layers"] == [0, 1, 2]
    spec = json.loads((layer_store / "zarr.json").read_text())["attributes"]["emi"]["spec"]
    assert "layers" not in spec  # a last-layer store's spec is as before layers existed
    assert fingerprint(spec) == last.fingerprint
    assert last.layers == ()
    with pytest.raises(LayerError, match="stored layers: none besides the last hidden"):
        last.hidden(last.clip_ids[0], layer=1)
    with pytest.raises(LayerError, match=r"stored layers: 0, 1, 2"):
        every.hidden(every.clip_ids[0], layer=3)


def test_layer_options_on_the_command_line(mixed_corpus, tiny_backbone, all_layers_store, tmp_path):
    bad = run_cli(
        "extract", mixed_corpus, tmp_path / "x.zarr", "--model", tiny_backbone,
        "--layers", "1,7", expect=2,
    )  # fmt: skip
    assert "layer 7 does not exist" in bad.output and "layers 0 (the input" in bad.output
    assert not (tmp_path / "x.zarr").exists()
    bad = run_cli(
        "extract", mixed_corpus, tmp_path / "x.zarr", "--model", tiny_backbone,
        "--layers", "middle", expect=2,
    )  # fmt: skip
    assert "'last', 'all' or layer numbers" in bad.output
    # a chosen subset; a rerun without --layers resumes it
    subset = tmp_path / "subset.zarr"
    run_cli("extract", mixed_corpus, subset, "--model", tiny_backbone, "--layers", "1", "--quiet")
    assert FeatureStore.open(subset).layers == (1,)
    again = run_cli("extract", mixed_corpus, subset, "--model", tiny_backbone, "--json")
    assert json.loads(again.stdout)["extracted"] == 0
    # another layer choice is another fingerprint: refused, nothing changed
    before = (subset / "zarr.json").read_bytes()
    mixed = run_cli(
        "extract", mixed_corpus, subset, "--model", tiny_backbone, "--layers", "all", expect=2
    )
    assert "layers" in mixed.output and "fingerprint" in mixed.output
    assert (subset / "zarr.json").read_bytes() == before


def test_hdf5_export_holds_every_layer(all_layers_store, tmp_path):
    out = tmp_path / "feats.h5"
    run_cli("store", "export", all_layers_store, out)
    store = FeatureStore.open(all_layers_store)
    clip_id = store.clip_ids[0]
    with h5py.File(out, "r") as f:
        group = f["clips"][clip_id.replace("/", "%2F")]
        np.testing.assert_array_equal(group["hidden_l01"][()], store.hidden(clip_id, layer=1))
        np.testing.assert_array_equal(
            group["hidden_mean_l00"][()], store.hidden_mean(clip_id, layer=0)
        )


def test_score_extracts_the_layers_a_weighted_head_reads(tiny_backbone, tmp_path):
    from tests.conftest import labelled_store, train_cli

    made = labelled_store(
        tmp_path, tiny_backbone, clips=16, seed=3, presets=(),
        extract_options=("--layers", "0,2"),
    )  # fmt: skip
    info = run_cli("store", "info", made["store"]).output
    assert "hidden_states 0, 2 besides the last hidden state" in info
    head = tmp_path / "weighted"
    train_cli(made, head, "--preset", "compact", "--layers", "weighted")
    run_cli("predict", made["store"], "--head", head, "-o", tmp_path / "stored.csv")
    score_store = tmp_path / "score.zarr"
    run_cli("score", made["audio"], "--head", head, "--store", score_store,
            "-o", tmp_path / "scored.csv", "--quiet")  # fmt: skip
    assert FeatureStore.open(score_store).layers == (0, 2)  # extracted what the head reads
    read = {
        name: {r["clip_id"]: r for r in csv.DictReader((tmp_path / name).open())}
        for name in ("stored.csv", "scored.csv")
    }
    assert read["stored.csv"].keys() == read["scored.csv"].keys()
    for clip_id, row in read["scored.csv"].items():
        for target, value in row.items():
            if target != "clip_id":
                assert abs(float(value) - float(read["stored.csv"][clip_id][target])) < 1e-5
