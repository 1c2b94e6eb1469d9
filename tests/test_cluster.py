"""Extraction on an existing dask cluster: real scheduler and worker processes."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import zarr

from featurestore.extraction import extract
from featurestore.options import ExtractOptions
from featurestore.store import FeatureStore
from manifests import build_manifest
from tests.cluster import dask_cluster
from tests.conftest import run_cli
from tests.reference import assert_same_features
from tests.synth import write_clip


def writers(store: Path) -> set[str]:
    root = zarr.open_group(str(store), mode="r")
    return {g.attrs["emi_part"]["written_by"] for _, g in root["parts"].groups()}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """A scheduler and two plain worker processes, for the tests that only run work on
    them (the worker-kill and GPU tests start their own)."""
    with dask_cluster(tmp_path_factory.mktemp("cluster"), [{}, {}]) as (address, workers):
        yield address, workers


@pytest.mark.slow
def test_existing_scheduler_gives_the_same_store(
    layer_store, mixed_corpus, tiny_backbone, tmp_path, monkeypatch, two_workers
):
    address, workers = two_workers
    run_cli(
        "extract",
        mixed_corpus,
        tmp_path / "a.zarr",
        "--model",
        tiny_backbone,
        "--scheduler",
        address,
        "--part-seconds",
        "2",
        "--quiet",
    )
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    run_cli(
        "extract",
        mixed_corpus,
        tmp_path / "b.zarr",
        "--model",
        tiny_backbone,
        "--part-seconds",
        "2",
        "--quiet",
    )
    pids = {str(w.pid) for w in workers}
    for name in ("a.zarr", "b.zarr"):
        store = FeatureStore.open(tmp_path / name)
        assert_same_features(FeatureStore.open(layer_store), store)
        used = {w.split(":")[1] for w in writers(tmp_path / name)}
        assert used <= pids and len(used) == 2  # both workers wrote parts, the driver none
        assert run_cli("store", "verify", tmp_path / name).exit_code == 0


@pytest.mark.slow
def test_parts_go_to_workers_that_declare_a_gpu(mixed_corpus, tiny_backbone, tmp_path):
    with dask_cluster(
        tmp_path / "cluster", [{"resources": "GPU=1", "name": "gpu"}, {"name": "plain"}]
    ) as (address, workers):
        run_cli(
            "extract",
            mixed_corpus,
            tmp_path / "s.zarr",
            "--model",
            tiny_backbone,
            "--scheduler",
            address,
            "--part-seconds",
            "2",
            "--quiet",
        )
        gpu_pid = str(workers[0].pid)
    used = {w.split(":")[1] for w in writers(tmp_path / "s.zarr")}
    assert used == {gpu_pid}
    assert len(FeatureStore.open(tmp_path / "s.zarr").complete_parts) > 2


@pytest.mark.slow
def test_worker_killed_mid_part_loses_and_duplicates_nothing(small_backbone, tmp_path):
    for i in range(24):
        write_clip(tmp_path / "audio" / f"{i:05d}.wav", 2.0 + (i % 4) * 0.5, seed=i)
    clean = tmp_path / "clean.zarr"
    run_cli("extract", tmp_path / "audio", clean, "--model", small_backbone, "--quiet")
    from distributed import Client

    store = tmp_path / "s.zarr"
    with dask_cluster(tmp_path / "cluster", [{}, {}]) as (address, workers):
        # the driver on a thread here: the work is the workers'
        options = ExtractOptions.of(
            model=str(small_backbone), scheduler=address, part_seconds=2, quiet=True
        )
        outcome: dict = {}

        def drive() -> None:
            try:
                outcome["summary"] = extract(
                    build_manifest(tmp_path / "audio"), str(store), options
                )
            except BaseException as err:  # the test reports it
                outcome["error"] = err

        driver = threading.Thread(target=drive)
        driver.start()
        killed = None
        with Client(address) as client:
            deadline = time.monotonic() + 120
            while killed is None and time.monotonic() < deadline and driver.is_alive():
                complete = [
                    p
                    for p in store.glob("parts/*/zarr.json")
                    if '"complete": true' in p.read_text(errors="ignore")
                ]
                busy = {addr: tasks for addr, tasks in client.processing().items() if tasks}
                if complete and busy:
                    name = client.scheduler_info()["workers"][next(iter(busy))]["name"]
                    pid = workers[int(str(name)[1:])].pid  # workers are named w0, w1
                    os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of its part
                    killed = pid
                time.sleep(0.02)
        driver.join(300)
    assert killed is not None, "no worker was killed mid-run"
    assert not driver.is_alive() and "error" not in outcome, outcome
    assert not outcome["summary"].failed, outcome
    a, b = FeatureStore.open(store), FeatureStore.open(clean)
    assert len(a.clip_ids) == len(set(a.clip_ids)) == 24
    assert_same_features(a, b)
    assert run_cli("store", "verify", store).exit_code == 0


@pytest.mark.slow
def test_grid_spreads_over_the_cluster(tiny_backbone, tmp_path, two_workers):
    import json

    from manifests.synthetic import write_corpus

    splits = write_corpus(tmp_path / "corpus", clips=24, seed=3, min_seconds=1.0, max_seconds=2.0)
    store = tmp_path / "feats.zarr"
    run_cli("extract", tmp_path / "corpus" / "audio", store, "--model", tiny_backbone, "--quiet")
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps({"defaults": {"preset": "compact", "epochs": 2}, "grid": {"seed": [1, 2, 3, 4]}})
    )
    address, workers = two_workers
    result = run_cli(
        "train",
        store,
        "--labels",
        splits["train"],
        "--val-labels",
        splits["valid"],
        "--out",
        tmp_path / "heads",
        "--grid",
        grid,
        "--scheduler",
        address,
        "--quiet",
    )
    pids = {str(w.pid) for w in workers}
    trained_by = set()
    for seed in (1, 2, 3, 4):
        config = json.loads((tmp_path / "heads" / f"seed{seed}" / "config.json").read_text())
        assert config["training"]["seed"] == seed
        trained_by.add(config["training"]["trained_by"].split(":")[1])
        assert f"seed{seed}" in result.output
    assert trained_by <= pids and len(trained_by) == 2


def test_the_scheduler_forgets_finished_runs_spans():
    """Each batch of work after an idle spell opens a span on the scheduler, which dask
    never drops: a long-lived scheduler grew by every extraction run. After a run, emi
    has it forget finished spans but the newest SPANS_KEPT (the dashboard's history)."""
    from featurestore.cluster import SPANS_KEPT, dask_client, forget_finished_spans

    def spans_held(dask_scheduler=None) -> int:
        return len(dask_scheduler.extensions["spans"].spans)

    with dask_client(workers=1, scheduler=None, quiet=True) as client:
        for k in range(SPANS_KEPT + 15):  # one finished span each: work, then idle
            assert client.submit(pow, k, 2, pure=False).result() == k * k
            deadline = time.monotonic() + 10
            while client.run_on_scheduler(spans_held) < k + 1:  # the span is there
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert client.run_on_scheduler(spans_held) >= SPANS_KEPT + 15
        forget_finished_spans(client)
        assert client.run_on_scheduler(spans_held) == SPANS_KEPT
        assert client.submit(pow, 3, 3, pure=False).result() == 27  # work goes on
