"""The service as deployed beside its dependencies: a real dask scheduler and workers on
loopback (stopped, restarted on the same address, replaced) and a real S3 server behind
a proxy that can hang; devices by role (a CPU service for GPU workers).

``EMI_RECOVERY_AWAY_S`` sets how long the scheduler stays away (default 20 s: past the
10 s a service's client tries to reconnect, so a new client must be made) and
``EMI_RECOVERY_STORE_AWAY_S`` how long the object store hangs (default 12 s: past the
10 s after which a check that gave no answer makes the service not ready); the
documented figures come from this file run with both at 60 (``-s`` prints them).
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from manifests.synthetic import write_corpus
from service.cluster_link import CONNECT_TIMEOUT_S
from service.health import STALE_S
from tests.cluster import start_scheduler, start_worker, stop
from tests.conftest import run_cli
from tests.served import Hosted, Served, free_port

AWAY_S = float(os.environ.get("EMI_RECOVERY_AWAY_S", str(CONNECT_TIMEOUT_S + 10)))
READY_WITHIN_S = 30.0
PROBE_BUDGET_S = 1.0  # a kubelet's default probe timeout


def readyz(served: Served) -> tuple[int, dict, float]:
    """One probe: status, body and how long it took."""
    started = time.monotonic()
    answer = httpx.get(f"{served.url}/readyz", timeout=5)
    return answer.status_code, answer.json(), time.monotonic() - started


def wait_ready(served: Served, within_s: float) -> float:
    """Seconds until /readyz answers 200 (each probe within the kubelet's second)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        status, body, took = readyz(served)
        assert took < PROBE_BUDGET_S, (took, body)
        if status == 200:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not ready {within_s} s after: {readyz(served)}\n{served.text()}")


def wait_not_ready(served: Served, within_s: float = 30.0) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        status, body, took = readyz(served)
        assert took < PROBE_BUDGET_S, (took, body)
        if status == 503:
            return body
        time.sleep(0.25)
    raise AssertionError(f"still ready {within_s} s after the dependency left")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_backbone):
    """A source root with a short corpus and a longer one, and a registry with one
    ridge head trained on the short one."""
    folder = tmp_path_factory.mktemp("recovery")
    root = folder / "root"
    splits = write_corpus(root / "short", clips=8, seed=41, min_seconds=1.0, max_seconds=2.0)
    write_corpus(root / "long", clips=24, seed=42, min_seconds=1.5, max_seconds=3.0)
    run_cli("extract", root / "short" / "audio", folder / "seed.zarr", "--model", tiny_backbone,
            "--quiet")  # fmt: skip
    heads = folder / "heads"
    run_cli(
        "train", folder / "seed.zarr", "--labels", splits["train"], "--val-labels",
        splits["valid"], "--out", heads / "ml", "--preset", "mean-linear", "--quiet",
    )  # fmt: skip
    return {"folder": folder, "root": root, "heads": heads}


def _served(lab: dict, name: str, *options: str, stores: str | None = None) -> Served:
    (lab["folder"] / name).mkdir()
    served = Hosted(lab["folder"] / name, [lab["root"]], *options, stores=stores)
    served.heads = lab["heads"]
    return served


def _score(served: Served, source: str, timeout_s: float = 240) -> dict:
    client = served.client()
    job = client.submit({"kind": "score", "source": str(source), "heads": ["ml"]})
    done = client.wait(job["id"], poll_s=0.2, timeout_s=timeout_s)
    assert done["state"] == "succeeded", (done, served.text())
    return done


@pytest.mark.slow
def test_the_scheduler_away_and_back_and_workers_replaced(lab):
    """A scheduler killed mid-job stays away AWAY_S and comes back on the same address
    with a new worker: /readyz answers within a second throughout, says not ready while
    it is away and ready within 30 s of its return; the running job waits in the queue
    (never stuck running) and then succeeds with every clip; a new job succeeds. Then
    the worker alone is replaced: not ready without workers, ready again with the new
    one, and jobs succeed."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = start_scheduler(port)
    worker = start_worker(address, "first")
    served = _served(lab, "away", "--scheduler", address, "--part-seconds", "4")
    try:
        with served:
            served.start()
            client = served.client()
            job = client.submit({"kind": "score", "source": str(lab["root"] / "long" / "audio"),
                                 "heads": ["ml"]})  # fmt: skip
            deadline = time.monotonic() + 120
            while client.job(job["id"])["progress"].get("clips_done", 0) == 0:
                assert time.monotonic() < deadline, served.text()
                time.sleep(0.1)
            stop(scheduler)
            stop(worker)
            left = time.monotonic()
            body = wait_not_ready(served)
            assert body["checks"]["cluster"] == "unreachable", body
            while time.monotonic() - left < AWAY_S:  # probes answer at once all along
                status, body, took = readyz(served)
                assert status == 503 and took < PROBE_BUDGET_S, (status, body, took)
                time.sleep(1.0)
            waiting = client.job(job["id"])
            assert waiting["state"] == "queued", waiting
            assert waiting["progress"]["stage"] == "waiting for the dask cluster"
            scheduler = start_scheduler(port)
            worker = start_worker(address, "second")
            back = wait_ready(served, READY_WITHIN_S)
            done = client.wait(job["id"], poll_s=0.2, timeout_s=240)
            assert done["state"] == "succeeded", (done, served.text())
            assert done["result"]["predicted"] == 24 and done["runs"] == 2, done
            assert _score(served, lab["root"] / "short" / "audio")["result"]["predicted"] == 8

            stop(worker)  # the worker alone replaced
            body = wait_not_ready(served)
            assert body["checks"]["cluster"] == "0 workers", body
            worker = start_worker(address, "third")
            replaced = wait_ready(served, READY_WITHIN_S)
            _score(served, lab["root"] / "short" / "audio")
            assert "Traceback" not in served.text()
            assert served.stop() == 0
    finally:
        stop(worker)
        stop(scheduler)
    print(f"ready {back:.1f} s after the scheduler's return, {replaced:.1f} s after a new worker")


@pytest.mark.slow
def test_a_cpu_service_for_gpu_workers_scores(lab, tmp_path):
    """The deployment's service: --scheduler and --device cuda (the workers' device) on a
    machine without a GPU. It starts, and a score job whose features its workers stored
    succeeds: the heads predict on this machine's CPU (the job failed in 0.3 s with
    "torch sees no CUDA GPU" when --device was the service's own)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = start_scheduler(port)
    worker = start_worker(address, "cpu")
    stores = tmp_path / "stores"
    audio = lab["root"] / "short" / "audio"
    run_cli("extract", audio, stores / "kept.zarr", "--model",
            str(_backbone_of(lab["heads"] / "ml")), "--quiet")  # fmt: skip
    served = _served(lab, "cuda", "--scheduler", address, "--device", "cuda",
                     stores=str(stores))  # fmt: skip
    try:
        with served:
            served.start()
            client = served.client()
            job = client.submit({"kind": "score", "source": str(audio), "heads": ["ml"],
                                 "store": "kept"})  # fmt: skip
            done = client.wait(job["id"], poll_s=0.2, timeout_s=120)
            assert done["state"] == "succeeded", (done, served.text())
            assert done["result"]["predicted"] == 8 and done["result"]["extracted"] == 0
            assert served.stop() == 0
    finally:
        stop(worker)
        stop(scheduler)


def test_a_gpu_worker_without_a_gpu_refuses_at_start():
    """``emi worker --device cuda`` here (no GPU): one line, exit status 2, and no dask
    worker started (it would join and fail every task)."""
    import subprocess
    import sys

    from tests.served import REPO

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "tcp://127.0.0.1:9", "--device", "cuda"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: --device cuda: torch sees no CUDA GPU on this machine (torch "
        f"{_torch_version()}); use the device cpu or auto"
    ]


def _torch_version() -> str:
    import torch

    return torch.__version__


def _backbone_of(head) -> str:
    import json

    config = json.loads((head / "config.json").read_text())
    return config["store"]["spec"]["backbone"]["ref"]


STORE_AWAY_S = float(os.environ.get("EMI_RECOVERY_STORE_AWAY_S", str(STALE_S + 2)))


@pytest.mark.slow
def test_the_object_store_hanging_and_back(lab, monkeypatch):
    """The stores in a bucket (a real S3 server on loopback) behind a partition: for
    STORE_AWAY_S every connection hangs. /readyz answers within a second all along and
    says not ready (the stores' check has given no answer); once the partition heals it
    is ready within 30 s and a score job keeping its features in the bucket succeeds."""
    from tests.proxy import HangingProxy
    from tests.s3 import s3_server

    with s3_server("recovery") as bucket:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        proxy = HangingProxy(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the service reaches it so
        served = _served(lab, "bucket", stores=f"{bucket}/stores")
        try:
            with served:
                served.start()
                _score(served, lab["root"] / "short" / "audio")
                proxy.hang()
                hung = time.monotonic()
                body = wait_not_ready(served, within_s=30)
                assert body["checks"]["stores"].startswith("no answer for"), body
                while time.monotonic() - hung < STORE_AWAY_S:
                    status, body, took = readyz(served)
                    assert status == 503 and took < PROBE_BUDGET_S, (status, body, took)
                    time.sleep(1.0)
                proxy.resume()
                back = wait_ready(served, READY_WITHIN_S)
                done = _score(served, lab["root"] / "short" / "audio")
                assert done["result"]["reused"] == 8, done  # read back from the bucket
                assert served.stop() == 0
        finally:
            proxy.close()
    print(f"ready {back:.1f} s after the object store came back")
