"""The job service under load, on loopback, measured side by side in one run.

Starts ``emi serve`` (a random backbone, a ridge head in its registry), then:

- **throughput**: ``--clients`` concurrent clients each submit ``--jobs-per-client``
  small score jobs (``--clips-per-job`` clips of new audio each, so every job extracts)
  and poll each to its end; prints jobs per minute and the p50/p99 latency of the
  status calls (``GET /v1/jobs/{id}``) made while the service works;
- **warm service vs a fresh process**: one small score job's wall time (submit to
  predictions fetched) through the warm service against ``emi score`` as a fresh
  process on the same kind of folder (new audio, its own empty cache): the service's
  backbone, torch and dask are already loaded.

Usage::

    python bench/service_throughput.py --work /tmp/emi-service-bench
    python bench/service_throughput.py --clients 8 --jobs-per-client 5 --size small
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featurestore.extraction import extract  # noqa: E402
from featurestore.options import ExtractOptions  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from manifests import build_manifest  # noqa: E402
from manifests.synthetic import write_corpus  # noqa: E402
from models.trainer import train  # noqa: E402
from tests.served import Served  # noqa: E402


def _emi(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                   stdout=subprocess.DEVNULL)  # fmt: skip


def _folders(root: Path, count: int, clips: int, seed: int) -> list[Path]:
    """``count`` folders of ``clips`` new clips each (distinct audio: each job extracts)."""
    out = []
    for k in range(count):
        write_corpus(root / f"f{k}", clips=clips, seed=seed + k, min_seconds=1.0, max_seconds=3.0)
        out.append(root / f"f{k}" / "audio")
    return out


def fresh_work(work: Path, marker: str) -> Path:
    """``work`` emptied for a new run: made here, or removed and made again where the
    ``marker`` file says an earlier run of the same benchmark made it (a folder of
    anyone else's is refused, untouched)."""
    if work.exists():
        if not (work / marker).exists():
            raise SystemExit(f"--work {work}: not made by this benchmark; give a new folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / marker).touch()
    return work


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emi-service-bench"))
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs-per-client", type=int, default=4)
    parser.add_argument("--clips-per-job", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="warm-vs-fresh pairs")
    args = parser.parse_args(argv)
    work = fresh_work(args.work, "made-by-service-bench")
    served = _service(work, args.size)
    root = work / "root"
    total_jobs = args.clients * args.jobs_per_client
    folders = _folders(root / "load", total_jobs, args.clips_per_job, seed=100)
    pairs = _folders(root / "pairs", 2 * args.repeats, args.clips_per_job, seed=900)
    served.start()
    try:
        client = served.client()
        # warm-up: the first job loads the backbone into the service's worker
        warm = client.submit({"kind": "score", "source": str(pairs[0]), "heads": ["ml"]})
        client.wait(warm["id"], poll_s=0.05)
        wall, latencies = _under_load(served, folders, args.clients, args.jobs_per_client)
        service_s, fresh_s = _warm_against_fresh(served, client, pairs, args.repeats, work)
    finally:
        served.stop()
    clips = total_jobs * args.clips_per_job
    print(f"backbone {args.size}; {os.cpu_count()} CPUs; service --jobs 2, 1 in-process worker")
    print(f"throughput: {total_jobs} score jobs of {args.clips_per_job} new clips from "
          f"{args.clients} concurrent clients in {wall:.1f} s: "
          f"{total_jobs / wall * 60:.0f} jobs/min ({clips / wall:.1f} clips/s)")  # fmt: skip
    print(f"status latency while loaded ({len(latencies)} calls): "
          f"p50 {percentile(latencies, 50) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.1f} ms")  # fmt: skip
    s, f = statistics.median(service_s), statistics.median(fresh_s)
    print(
        f"one {args.clips_per_job}-clip score job, median of {args.repeats}: warm service "
        f"{s:.2f} s, emi score as a fresh process {f:.2f} s: the service {f / s:.1f}x faster"
    )


def _service(work: Path, size: str) -> Served:
    """``emi serve`` (not started) over a registry with one ridge head on ``size``."""
    root = work / "root"
    ckpt = write_random_backbone(work / "ckpt", size=size, seed=0)
    splits = write_corpus(root / "train", clips=40, seed=1, min_seconds=1.0, max_seconds=3.0)
    extract(build_manifest(root / "train" / "audio"), str(work / "t.zarr"),
            ExtractOptions.of(model=str(ckpt), quiet=True))  # fmt: skip
    served = Served(work / "serve", [root], "--jobs", "2")
    served.folder.mkdir()
    train(str(work / "t.zarr"), splits["train"], splits["valid"], served.heads / "ml",
          preset="mean-linear")  # fmt: skip
    return served


def _under_load(served: Served, folders: list[Path], clients: int, per_client: int):
    """``clients`` threads each submitting ``per_client`` score jobs and polling each to
    its end; (wall seconds, the status calls' latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run_client(k: int) -> None:
        own = served.client()
        for j in range(per_client):
            folder = folders[k * per_client + j]
            job = own.submit({"kind": "score", "source": str(folder), "heads": ["ml"]})
            while True:
                started = time.perf_counter()
                state = own.job(job["id"])["state"]
                with lock:
                    latencies.append(time.perf_counter() - started)
                if state in ("succeeded", "failed", "cancelled"):
                    assert state == "succeeded", state
                    break
                time.sleep(0.05)

    started = time.perf_counter()
    threads = [threading.Thread(target=run_client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies


def _warm_against_fresh(served: Served, client, pairs: list[Path], repeats: int, work: Path):
    """One small job through the warm service against ``emi score`` as a fresh process,
    ``repeats`` times side by side; (service seconds, fresh seconds)."""
    service_s, fresh_s = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        job = client.submit({"kind": "score", "source": str(pairs[2 * r]), "heads": ["ml"]})
        client.wait(job["id"], poll_s=0.02)
        client.predictions_csv(job["id"])
        service_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _emi("score", pairs[2 * r + 1], "--head", served.heads / "ml", "-o",
             work / f"fresh{r}.csv", "--quiet",
             env={"EMI_CACHE": str(work / f"cache{r}")})  # fmt: skip
        fresh_s.append(time.perf_counter() - t0)
    return service_s, fresh_s


if __name__ == "__main__":
    main()
