"""One writer per store: the lease lock, its takeover rules, and two real drivers
started at once on one store."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.errors import StoreLocked
from featurestore.location import StoreLocation
from featurestore.lock import StoreLock
from featurestore.store import FeatureStore
from tests.conftest import run_cli
from tests.synth import write_clip

REPO = Path(__file__).resolve().parents[1]


def _plant_holder(location: StoreLocation, *, host: str, pid: int, age_s: float) -> None:
    """A lock generation as another driver would have written it ``age_s`` ago."""
    beat = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)
    record = {
        "host": host,
        "pid": pid,
        "run_id": "0badc0de",
        "purpose": "extract",
        "since": beat.isoformat(timespec="seconds"),
        "heartbeat_at": beat.isoformat(timespec="seconds"),
        "lease_s": 60.0,
    }
    node = {"zarr_format": 3, "node_type": "group", "attributes": {"emi_lock": record}}
    assert location.create("emi_lock/g00000007/zarr.json", json.dumps(node).encode())


def test_a_fresh_lock_of_another_host_is_refused_naming_it(tmp_path):
    location = StoreLocation.of(tmp_path / "s.zarr")
    _plant_holder(location, host="gpu-node-7", pid=4242, age_s=5)
    with pytest.raises(StoreLocked) as err:
        StoreLock(location).acquire()
    assert "gpu-node-7" in str(err.value) and "4242" in str(err.value)


def test_an_expired_lock_is_taken_over(tmp_path):
    location = StoreLocation.of(tmp_path / "s.zarr")
    _plant_holder(location, host="gpu-node-7", pid=4242, age_s=600)
    with StoreLock(location) as lock:
        assert lock.generation == 8
        assert location.entries("emi_lock") == ["g00000008", "zarr.json"]  # old one gone
        lock.ensure_held()
    assert location.entries("emi_lock") == ["g00000008", "zarr.json"]  # kept, released
    with StoreLock(location) as again:  # a released lock is free at once
        assert again.generation == 9  # numbers only grow


def test_a_stalled_holder_notices_a_takeover_even_after_the_new_holder_left(tmp_path):
    location = StoreLocation.of(tmp_path / "s.zarr")
    stalled = StoreLock(location).acquire()
    stalled._stop.set()  # its heartbeat stops, as in a long pause
    _plant_holder(location, host="other", pid=1, age_s=600)  # g7, expired
    location.delete(f"emi_lock/g{stalled.generation:08d}", recursive=True)
    with StoreLock(location):  # takes g8 over the expired g7, then releases it
        pass
    with pytest.raises(StoreLocked, match="lost the writer lock"):
        stalled.ensure_held()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_text)
    location = StoreLocation.of(tmp_path / "s.zarr")
    _plant_holder(location, host=socket.gethostname(), pid=int(dead.stdout), age_s=1)
    with StoreLock(location) as lock:
        assert lock.generation == 8


_text = {"capture_output": True, "text": True, "check": True}


def test_a_holder_that_lost_its_lock_stops_before_committing(tmp_path):
    location = StoreLocation.of(tmp_path / "s.zarr")
    lock = StoreLock(location).acquire()
    try:
        # Another driver took the store over (as after this one stalled past its lease).
        node = {"zarr_format": 3, "node_type": "group", "attributes": {"emi_lock": {"host": "b"}}}
        location.create(f"emi_lock/g{lock.generation + 1:08d}/zarr.json", json.dumps(node).encode())
        with pytest.raises(StoreLocked, match="lost the writer lock"):
            lock.ensure_held()
    finally:
        lock.release()
    assert location.entries("emi_lock") == ["g00000002", "zarr.json"]  # the newer one stays


def test_a_second_extract_on_a_locked_store_exits_2(mixed_corpus, tiny_backbone, tmp_path):
    store = tmp_path / "s.zarr"
    location = StoreLocation.of(store)
    with StoreLock(location):
        result = run_cli(
            "extract", mixed_corpus, store, "--model", tiny_backbone, "--quiet", expect=2
        )
    assert "being written by another" in result.output and str(os.getpid()) in result.output
    assert not (store / "zarr.json").exists()  # nothing was written besides the lock


def _driver(folder: Path, store: str, backbone: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "extract",
            str(folder),
            store,
            "--model",
            str(backbone),
            "--part-seconds",
            "1",
            "--json",
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def two_drivers_at_once(tmp_path: Path, store: str, backbone: Path) -> None:
    """Start two drivers (``emi extract`` processes) on one store at the same moment;
    neither may report success for clips that are not stored, and no clip may be lost."""
    folders = {}
    for name, first in (("a", 0), ("b", 100)):
        for i in range(6):
            write_clip(tmp_path / name / f"{first + i:05d}.wav", 0.6 + 0.1 * i, seed=first + i)
        folders[name] = sorted(f"{first + i:05d}" for i in range(6))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {n: _driver(tmp_path / n, store, backbone, env) for n in folders}
    outcome = {n: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for n, p in procs.items()}
    stored = set(FeatureStore.open(store).clip_ids)
    winners = 0
    for name, (code, out, err) in outcome.items():
        assert code in (0, 2), (name, code, err)
        if code == 0:
            winners += 1
            assert json.loads(out)["failed"] == []
            assert set(folders[name]) <= stored, name
        else:
            assert "being written by another" in err, err
    assert winners >= 1
    assert run_cli("store", "verify", store).exit_code == 0
    # The driver that was refused gets its clips in by running again (here, in-process).
    for name, (code, _, _) in outcome.items():
        if code == 2:
            run_cli("extract", tmp_path / name, store, "--model", backbone, "--quiet")
    assert set(FeatureStore.open(store).clip_ids) == set(folders["a"]) | set(folders["b"])


@pytest.mark.slow
def test_two_drivers_started_at_once_never_lose_clips(tiny_backbone, tmp_path):
    two_drivers_at_once(tmp_path, str(tmp_path / "shared.zarr"), tiny_backbone)
