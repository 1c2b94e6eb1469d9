"""The store's documented layout, read without emi; verify; incomplete parts; export."""

import json
import shutil

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr
import zarr

from featurestore.hdf5 import hdf5_name
from featurestore.store import FeatureStore
from tests.conftest import run_cli


def test_plain_zarr_reads_the_documented_layout(layer_store):
    store = FeatureStore.open(layer_store)
    root = zarr.open_group(str(layer_store), mode="r")
    meta = root.attrs["emi"]
    assert meta["fingerprint"] == store.fingerprint and meta["spec"]["hidden_size"] == 32
    seen = {}
    for _, part in root["parts"].groups():
        assert part.attrs["emi_part"]["complete"] is True
        ids, offsets = part["clip_id"][:], part["offsets"][:]
        for row, clip_id in enumerate(ids):
            hidden = part["hidden"][offsets[row] : offsets[row + 1]]
            seen[str(clip_id)] = hidden
            np.testing.assert_array_equal(hidden, store.hidden(str(clip_id)))
            np.testing.assert_array_equal(part["clip_vad"][row], store.clip_vad(str(clip_id)))
    assert sorted(seen) == sorted(store.clip_ids)


def test_dask_and_xarray_read_parts(layer_store):
    # dask's own threads, named: a test before may have left the process's dask default
    # on a distributed client's scheduler (several in-process clusters' worker clients,
    # closed out of order, restore each other's setting)
    with dask.config.set(scheduler="threads"):
        _read_parts_with_dask_and_xarray(layer_store)


def _read_parts_with_dask_and_xarray(layer_store) -> None:
    root = zarr.open_group(str(layer_store), mode="r")
    names = sorted(root["parts"].group_keys())
    hidden = da.concatenate(
        [da.from_zarr(str(layer_store), component=f"parts/{n}/hidden") for n in names]
    )
    total = sum(root["parts"][n].attrs["emi_part"]["frames"] for n in names)
    assert hidden.shape == (total, 32)
    means = da.concatenate(
        [da.from_zarr(str(layer_store), component=f"parts/{n}/hidden_mean") for n in names]
    ).compute()
    store = FeatureStore.open(layer_store)
    np.testing.assert_array_equal(means[0], store.hidden_mean(store.clip_ids[0]))
    ds = xr.open_zarr(str(layer_store), group=f"parts/{names[0]}", consolidated=False)
    assert set(ds.sizes) == {"clip", "clip_offset", "frame", "hidden_unit", "vad_label"}
    assert "hidden" in ds.data_vars and not ds.coords  # no array doubles as a dimension
    clip_id = str(ds["clip_id"].values[0])
    np.testing.assert_array_equal(ds["hidden_mean"].values[0], store.hidden_mean(clip_id))


def test_hdf5_export_matches(layer_store, tmp_path):
    run_cli("store", "export", layer_store, tmp_path / "f.h5")
    store = FeatureStore.open(layer_store)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f.attrs["fingerprint"] == store.fingerprint
        assert json.loads(f.attrs["spec"]) == store.spec
        assert len(f["clips"]) == len(store.clip_ids)
        for clip_id in store.clip_ids:
            group = f["clips"][hdf5_name(clip_id)]
            assert group.attrs["clip_id"] == clip_id
            np.testing.assert_array_equal(group["hidden"][()], store.hidden(clip_id))
            np.testing.assert_array_equal(group["frame_vad"][()], store.frame_vad(clip_id))
            np.testing.assert_array_equal(group["clip_vad"][()], store.clip_vad(clip_id))
            assert group.attrs["frames"] == store.clip_info(clip_id)["frames"]
    assert "speaker_b%2F00004" in [hdf5_name(c) for c in store.clip_ids]


def test_info_reports_counts(layer_store):
    info = json.loads(run_cli("store", "info", layer_store, "--json").output)
    store = FeatureStore.open(layer_store)
    frames = sum(store.clip_info(c)["frames"] for c in store.clip_ids)
    assert (info["clips"], info["frames"], info["failed"]) == (len(store.clip_ids), frames, [])
    assert info["size_bytes"] > frames * 32 * 2 * 0.5
    text = run_cli("store", "info", layer_store).output
    assert f"clips        {len(store.clip_ids)}" in text


def test_verify_catches_corruption(layer_store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(layer_store, copy)
    assert run_cli("store", "verify", copy).exit_code == 0
    name = FeatureStore.open(copy).complete_parts[0]
    offsets = zarr.open_array(str(copy / "parts" / name / "offsets"), mode="r+")
    values = offsets[:]
    values[1] += 1
    offsets[:] = values
    result = run_cli("store", "verify", copy, expect=1)
    assert f"part {name}: array offsets" in result.output and "digest" in result.output


def test_uncommitted_part_is_invisible_then_removed(mixed_corpus, tiny_backbone, tmp_path):
    store = tmp_path / "s.zarr"
    run_cli("extract", mixed_corpus, store, "--model", tiny_backbone, "--quiet")
    complete = FeatureStore.open(store)
    ids = complete.clip_ids
    # A crash after a worker wrote a part but before the driver committed it: a part
    # folder (here a copy of a committed one) that is not in the root's index.
    stray = "p000099-deadbeef"
    shutil.copytree(store / "parts" / complete.complete_parts[0], store / "parts" / stray)
    reopened = FeatureStore.open(store)
    assert reopened.clip_ids == ids and stray not in reopened.complete_parts
    assert run_cli("store", "verify", store).exit_code == 0
    info = json.loads(run_cli("store", "info", store, "--json").output)
    assert info["uncommitted_parts"] == [stray]
    summary = json.loads(run_cli("extract", mixed_corpus, store, "--json", "--quiet").output)
    assert summary["incomplete_removed"] == [stray] and summary["extracted"] == 0
    assert not (store / "parts" / stray).exists()
    assert FeatureStore.open(store).clip_ids == ids


def test_missing_store_is_a_clear_error(tmp_path):
    result = run_cli("store", "info", tmp_path / "none.zarr", expect=2)
    assert "no feature store there" in result.output
