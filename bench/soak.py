"""The job service under hours-like load: does its memory stay flat?

Starts ``emi serve`` (a random backbone, a ridge head in its registry) and runs
``--clients`` concurrent clients for ``--minutes``. Each client loops: submit a score
job of a folder (``--folders`` folders of ``--clips-per-job`` clips, cycled: bounded
disk, every job after the first pass reuses stored features), poll it to its end, fetch
its predictions, read ``/metrics``; every ``--new-every``-th job instead scores a folder
of new audio (so extraction keeps running, and the score store keeps growing slowly).
The service's resident memory is sampled every 5 s; the report gives it after the
warm-up (the first ``--warmup`` minutes) and at the end, and the growth per job from a
straight-line fit over the samples after warm-up.

Usage::

    python bench/soak.py --minutes 30            # the documented figure
    python bench/soak.py --minutes 3 --clients 4  # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from bench.service_throughput import _folders, _service, fresh_work  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emi-soak"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=None,
                        help="minutes left out of the fit (default: --minutes / 6)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--folders", type=int, default=16)
    parser.add_argument("--clips-per-job", type=int, default=2)
    parser.add_argument("--new-every", type=int, default=25,
                        help="every Nth job scores new audio (0: never)")  # fmt: skip
    args = parser.parse_args(argv)
    warmup_s = 60 * (args.warmup if args.warmup is not None else args.minutes / 6)
    work = fresh_work(args.work, "made-by-soak")
    served = _service(work, "tiny")
    folders = _folders(work / "root" / "cycle", args.folders, args.clips_per_job, seed=300)
    fresh = FreshAudio(work / "root" / "fresh", args.clips_per_job)
    served.start()
    try:
        samples, jobs = _soak(served, folders, fresh, args)
    finally:
        served.stop()
    _report(samples, jobs, warmup_s, args)
    with open(work / "memory.csv", "w") as out:  # for a plot: seconds, MB, jobs done
        out.write("seconds,rss_mb,jobs\n")
        out.writelines(f"{t:.1f},{rss / 1e6:.1f},{n}\n" for t, rss, n in samples)
    print(f"samples: {work / 'memory.csv'}")


class FreshAudio:
    """Folders of audio no job has seen, made as they are asked for (and removed once
    scored: disk stays bounded)."""

    def __init__(self, root: Path, clips: int) -> None:
        self.root, self.clips, self.count = root, clips, 0
        self.lock = threading.Lock()

    def next(self) -> Path:
        from manifests.synthetic import write_corpus

        with self.lock:
            self.count += 1
            k = self.count
        write_corpus(self.root / f"n{k}", clips=self.clips, seed=10_000 + k,
                     min_seconds=1.0, max_seconds=3.0)  # fmt: skip
        return self.root / f"n{k}" / "audio"


def _soak(served, folders: list[Path], fresh: FreshAudio, args) -> tuple[list, list]:
    """Clients until the deadline; (samples of (seconds, rss bytes, jobs done), job
    end times)."""
    process = psutil.Process(served.process.pid)
    started = time.monotonic()
    deadline = started + 60 * args.minutes
    ended: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client_loop(k: int) -> None:
        own = served.client()
        n = 0
        while time.monotonic() < deadline and not errors:
            n += 1
            new = args.new_every and (n * args.clients + k) % args.new_every == 0
            folder = fresh.next() if new else folders[(n * args.clients + k) % len(folders)]
            job = own.submit({"kind": "score", "source": str(folder), "heads": ["ml"]})
            done = own.wait(job["id"], poll_s=0.1, timeout_s=600)
            if done["state"] != "succeeded":
                errors.append(f"{job['id']}: {done['state']} {done.get('error')}")
                return
            own.predictions_csv(job["id"])
            own.http.get("/metrics")
            if new:
                shutil.rmtree(folder.parent, ignore_errors=True)
            with lock:
                ended.append(time.monotonic() - started)

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True)
               for k in range(args.clients)]  # fmt: skip
    for t in threads:
        t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        with lock:
            count = len(ended)
        samples.append((time.monotonic() - started, process.memory_info().rss, count))
        time.sleep(5)
    if errors:
        raise SystemExit(f"a job did not succeed: {errors[0]}")
    return samples, ended


def _report(samples: list, ended: list, warmup_s: float, args) -> None:
    import numpy as np

    after = [(t, rss, n) for t, rss, n in samples if t >= warmup_s]
    if len(after) < 3:
        raise SystemExit("too few samples after the warm-up: run longer")
    jobs = np.array([n for _, _, n in after], dtype=float)
    rss = np.array([r for _, r, _ in after], dtype=float)
    per_job = np.polyfit(jobs, rss, 1)[0] if jobs[-1] > jobs[0] else 0.0
    print(f"{args.clients} clients for {args.minutes:g} min, {os.cpu_count()} CPUs: "
          f"{len(ended)} score jobs ({len(ended) / args.minutes:.0f}/min)")  # fmt: skip
    print(f"resident memory: {samples[0][1] / 1e6:.0f} MB at start, "
          f"{after[0][1] / 1e6:.0f} MB after the {warmup_s / 60:g}-min warm-up "
          f"({after[0][2]} jobs), {after[-1][1] / 1e6:.0f} MB at the end ({after[-1][2]} jobs); "
          f"peak {max(r for _, r, _ in samples) / 1e6:.0f} MB")  # fmt: skip
    print(f"growth after warm-up: {per_job / 1e3:.1f} KB per job (least-squares slope over "
          f"{len(after)} samples)")  # fmt: skip


if __name__ == "__main__":
    main()
