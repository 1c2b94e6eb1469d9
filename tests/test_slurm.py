"""emi on a real one-node SLURM cluster (tests/slurm.py): extraction and the service's
jobs through sbatch jobs, as docs/slurm.md has a lab run them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import zarr

from featurestore.store import FeatureStore
from manifests.synthetic import write_corpus
from tests import slurm as local_slurm
from tests.conftest import run_cli
from tests.docs_blocks import REPO, page_blocks
from tests.reference import assert_same_features
from tests.served import free_port
from tests.synth import write_clip

PAGE = "docs/slurm.md"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The local cluster, up for this module. Skipped, saying why, only where SLURM
    cannot be installed; under CI (EMI_REQUIRE_SLURM=1) that fails instead."""
    folder = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    try:
        cluster = local_slurm.up(folder)
    except local_slurm.SlurmUnavailable as err:
        if os.environ.get("EMI_REQUIRE_SLURM"):
            pytest.fail(f"EMI_REQUIRE_SLURM is set and SLURM cannot run here: {err}")
        pytest.skip(f"no SLURM cluster on this machine: {err}")
    print(f"\nlocal SLURM cluster up in {time.monotonic() - started:.2f} s")
    try:
        yield cluster
    finally:
        local_slurm.down(folder)


def test_the_local_cluster_uses_only_a_folder_it_made(tmp_path):
    """up and down on a folder of someone else's: refused, its files left as they were
    (no SLURM needed: refused before anything starts)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "slurmd.pid").write_text(str(os.getpid()))  # never signalled
    for action in (local_slurm.up, local_slurm.down):
        with pytest.raises(local_slurm.SlurmUnavailable, match="not a local SLURM cluster's"):
            action(theirs)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt", "slurmd.pid"]
    assert (theirs / "notes.txt").read_text() == "mine"
    done = subprocess.run([sys.executable, "-m", "tests.slurm", "down", "--dir", str(theirs)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "error: " in done.stderr


def test_cluster_options_that_would_add_lines_to_the_job_script_are_refused(tmp_path):
    """--cluster-* values go into #SBATCH lines: a space or a line break is refused,
    naming the option, before anything is read or submitted."""
    bad = [("--cluster-queue", "debug\nrm -rf ~"), ("--cluster-account", "a b"),
           ("--cluster-memory", "4GB;x"), ("--cluster-walltime", "2 hours")]  # fmt: skip
    for option, value in bad:
        done = run_cli("extract", tmp_path / "audio", tmp_path / "s.zarr", "--cluster", "slurm",
                       option, value, expect=2)  # fmt: skip
        assert f"Invalid value for '{option}'" in done.output, done.output
    assert not (tmp_path / "s.zarr").exists()


def lab_env(cluster, home: Path, **more: str) -> dict[str, str]:
    """A login node's shell: emi on the PATH, SLURM's configuration, a home of its own;
    the dask scheduler on 127.0.0.1 (the only setting a lab would not make)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **cluster.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "EMI_CACHE": str(home / ".cache" / "emi"),
        "HF_HUB_OFFLINE": "1",
        "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS__HOST": "127.0.0.1",
        "DASK_JOBQUEUE__SLURM__MEMORY": "2GB",  # the example's 16GB: fine, but smaller
        **more,
    }


def emi(env: dict, *args, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["emi", *map(str, args)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip


def complete_parts(store: Path) -> dict[str, str]:
    """part name -> its arrays' digests, for the parts written whole (none while the
    store is being made)."""
    try:
        root = zarr.open_group(str(store), mode="r")
        root["parts"]
    except (zarr.errors.GroupNotFoundError, KeyError, FileNotFoundError):
        return {}
    parts = {name: g.attrs.get("emi_part", {}) for name, g in root["parts"].groups()}
    return {name: str(part["digests"]) for name, part in parts.items() if part.get("complete")}


@pytest.mark.slow
def test_a_scancelled_worker_job_is_replaced_and_the_run_keeps_every_clip(
    slurm, tmp_path, small_backbone
):
    """Two worker jobs; one is scancelled once parts are committed: the run finishes on
    its replacement, the parts committed before stay as they were, the features equal a
    local run's, and no job is left. The small backbone keeps the rest of the run longer
    than the watch's look at the jobs (a tiny one's survivor could finish it first)."""
    corpus = tmp_path / "audio"
    for i in range(16):
        write_clip(corpus / f"c{i:02d}.wav", 2.0 + (i % 4) * 0.6, seed=i, f0_hz=110 + 3 * i)
    local = tmp_path / "local.zarr"
    run_cli("extract", corpus, local, "--model", small_backbone, "--part-seconds", "4", "--quiet")
    env = lab_env(slurm, tmp_path / "home", DASK_JOBQUEUE__SLURM__CORES="1")
    store = tmp_path / "slurm.zarr"
    run = subprocess.Popen(
        ["emi", "extract", corpus, store, "--model", small_backbone, "--cluster", "slurm",
         "--cluster-jobs", "2", "--part-seconds", "4"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(complete_parts(store)) < 2 and run.poll() is None:
        assert time.monotonic() < deadline, "no part committed in 120 s"
        time.sleep(0.1)
    before = complete_parts(store)
    running = [j for j in slurm.jobs() if j["name"] == "emi-worker" and j["state"] == "RUNNING"]
    assert running, slurm.jobs()
    slurm.run("scancel", running[0]["id"])
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert f"SLURM worker job {running[0]['id']} ended; replacing it" in err
    assert re.match(r"16 clips extracted .* 0 failed", out), out
    after = complete_parts(store)
    assert {k: after[k] for k in before} == before  # parts written before: kept as they were
    assert_same_features(FeatureStore.open(local), FeatureStore.open(store))
    assert slurm.wait_for_no_jobs(30) == []
    verified = emi(env, "store", "verify", store)
    assert verified.returncode == 0, verified.stderr


@pytest.mark.slow
def test_worker_jobs_that_cannot_start_end_the_run_with_one_line(slurm, tmp_path, tiny_backbone):
    """sbatch refusing the job, SLURM never starting it, and a GPU job's worker refusing
    to start without a GPU: each one line naming the cause and what to change, exit 2,
    no job left behind."""
    corpus = tmp_path / "audio"
    write_clip(corpus / "a.wav", 1.0, seed=1)
    env = lab_env(slurm, tmp_path / "home")
    cases = [
        (("--cluster-queue", "nope"), {}, "sbatch refuses emi's worker job: invalid partition"),
        (("--cluster-queue", local_slurm.SHORT_PARTITION, "--cluster-walltime", "00:10:00"), {},
         "SLURM will never start worker job"),
        (("--device", "cuda"), {},  # a GPU job on a node whose GPU torch cannot use
         "SLURM worker jobs in a row ended before their worker joined"),
    ]  # fmt: skip
    said = []
    for options, more, words in cases:
        started = time.monotonic()
        done = emi({**env, **more}, "extract", corpus, tmp_path / "s.zarr", "--model",
                   tiny_backbone, "--cluster", "slurm", *options, timeout_s=120)  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr
        assert words in errors[0] and "Traceback" not in done.stderr, done.stderr
        assert time.monotonic() - started < 60
        assert slurm.wait_for_no_jobs(30) == []
        said.append(errors[0])
    assert "(PartitionTimeLimit): the walltime is above the partition's time limit" in said[1]
    assert "says: Error: --device cuda: torch sees no CUDA GPU" in said[2]  # emi worker's line
    assert re.search(r"its log: \S+/slurm-logs/emi-worker-\d+\.err", said[2]), said[2]


def _lab(tmp_path: Path, backbone: Path) -> tuple[Path, dict]:
    """$SHARED: audio with labels, the backbone, a heads folder with one trained head."""
    shared = tmp_path / "shared"
    splits = write_corpus(shared / "corpus", clips=16, seed=5, min_seconds=1.0, max_seconds=2.0)
    shutil.move(shared / "corpus" / "audio", shared / "audio")
    shutil.copytree(backbone, shared / "models" / "backbone")
    (shared / "emi-env").symlink_to(Path(sys.executable).parent.parent)  # this venv
    return shared, splits


def _shell(block, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_the_slurm_pages_blocks_run_as_written(slurm, tmp_path, tiny_backbone):
    """docs/slurm.md on a login node of the local cluster: the configuration copied,
    extraction through worker jobs (and its driver as a job itself) equal to a local
    run, and the page's service scoring on worker jobs started on demand, its CSV equal
    to `emi score`'s, the jobs released when idle."""
    config, extract, driver, podman, serve = page_blocks(PAGE, "bash")
    assert "podman run" in podman.text  # run by ./run image --check (deploy/image/check.sh)
    shared, splits = _lab(tmp_path, tiny_backbone)
    env = lab_env(slurm, tmp_path / "home", SHARED=str(shared),
                  PARTITION=local_slurm.PARTITION, DEVICE="cpu")  # fmt: skip
    done = _shell(config, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "home" / ".config" / "dask" / "jobqueue.yaml").is_file()

    earlier = set(slurm.run("scontrol", "-o", "show", "jobs").stdout.splitlines())
    done = _shell(extract, env)
    assert done.returncode == 0, done.stderr
    assert "16 clips extracted" in done.stdout and "emi-worker" not in done.stdout  # squeue
    ended = slurm.run("scontrol", "-o", "show", "jobs").stdout.splitlines()
    ids = {job.split()[0] for job in earlier}  # JobId=N of the jobs before this run
    workers = [job for job in ended if "JobName=emi-worker" in job and job.split()[0] not in ids]
    assert len(workers) == 2, ended  # the jobs had the configuration's settings:
    for job in workers:  # partition (the option), CPUs and walltime (the copied file)
        assert {"Partition=debug", "NumCPUs=4", "TimeLimit=02:00:00"} <= set(job.split()), job
    local = tmp_path / "local.zarr"
    run_cli("extract", shared / "audio", local, "--model", tiny_backbone, "--quiet")
    assert_same_features(FeatureStore.open(local), FeatureStore.open(shared / "features.zarr"))

    for wav in list((shared / "audio").glob("*.wav"))[:3]:  # new clips for the driver job
        shutil.copy(wav, shared / "audio" / f"more-{wav.name}")
    done = _shell(driver, env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[-1]  # "Submitted batch job N"
    assert slurm.wait_for_no_jobs(120) == []  # the driver, then its workers
    log = (shared / f"emi-extract-{job_id}.log").read_text()
    assert "3 clips extracted" in log and "16 already stored" in log, log
    state = slurm.run("scontrol", "show", "job", job_id).stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
    _serve_and_score(serve, env, shared, splits, tmp_path)


def _serve_and_score(serve, env: dict, shared: Path, splits: dict, tmp_path: Path) -> None:
    heads = shared / "heads"
    run_cli("train", shared / "features.zarr", "--labels", splits["train"], "--val-labels",
            splits["valid"], "--out", heads / "ml", "--preset", "mean-linear",
            "--quiet")  # fmt: skip
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    # as written, on a free port and with a shorter --cluster-idle (the last one counts)
    command = f"exec {serve.commands()[0]} --port {port} --cluster-idle 3"
    server = subprocess.Popen(["bash", "-c", command],
                              env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        ready = _wait_ready(url, server, tmp_path / "serve.log")
        assert "0 workers (SLURM, up to 2 jobs on demand" in ready["checks"]["cluster"], ready
        assert [j for j in _workers(env) if j] == []  # nothing runs before a job comes
        from service.client import ServiceClient

        client = ServiceClient(url, timeout=30)
        job = client.submit({"kind": "score", "source": str(shared / "audio"), "heads": ["ml"]})
        done = client.wait(job["id"], poll_s=0.2, timeout_s=240)
        assert done["state"] == "succeeded", done
        cli_csv = tmp_path / "cli.csv"
        scored = emi({**env, "EMI_CACHE": str(tmp_path / "cli-cache")}, "score", shared / "audio",
                     "--head", heads / "ml", "-o", cli_csv, "--quiet")  # fmt: skip
        assert scored.returncode == 0, scored.stderr
        from tests.test_service import _same_predictions

        _same_predictions(client.predictions_csv(job["id"]), cli_csv.read_bytes().decode())
        deadline = time.monotonic() + 60  # released after --cluster-idle 3 s idle
        while _workers(env) and time.monotonic() < deadline:
            time.sleep(1)
        assert _workers(env) == [], "worker jobs not released when idle"
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _workers(env: dict) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--name", "emi-worker", "-o", "%i"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.split()


def _wait_ready(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            answer = httpx.get(f"{url}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"emi serve not ready:\n{log.read_text()}")


@pytest.mark.slow
def test_the_slurm_benchmark_runs(slurm, tmp_path):
    """bench/slurm_extract.py at a toy size (its own cluster beside this module's)."""
    done = subprocess.run(
        [sys.executable, "bench/slurm_extract.py", "--work", str(tmp_path / "b"),
         "--minutes", "0.2", "--repeats", "1", "--jobs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"ratio slurm / local: \d+\.\d\d", done.stdout), done.stdout
