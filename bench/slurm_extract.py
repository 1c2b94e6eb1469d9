"""Extraction through SLURM worker jobs against a local run, side by side in one run.

Brings up the one-node SLURM cluster of the tests (``tests/slurm.py``: root, Debian's
slurm-wlm and munge) and times, on the same synthetic corpus and random backbone:

- ``emi extract --cluster slurm --cluster-jobs N`` (jobs submitted with sbatch, their
  workers started, the store written, the jobs cancelled), and
- ``emi extract --workers N`` (a LocalCluster of N processes on this machine),

each as a fresh process into a new store, ``--repeats`` times alternating; prints both
wall times and their ratio, and the time to bring the SLURM cluster up. On one machine
the SLURM run pays its jobs' start (sbatch, the scheduler's cycle, a worker process
importing torch) on top of the same work: the ratio is that overhead, not a speed-up.

Usage::

    python bench/slurm_extract.py --work /tmp/emi-slurm-bench --minutes 4 --jobs 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service_throughput import fresh_work  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from tests import slurm as local_slurm  # noqa: E402
from tests.synth import write_clip  # noqa: E402


def _corpus(folder: Path, minutes: float) -> int:
    clips, total = 0, 0.0
    while total < minutes * 60:
        seconds = 3.0 + (clips % 5)
        write_clip(folder / f"c{clips:04d}.wav", seconds, seed=clips, f0_hz=100 + clips % 50)
        clips, total = clips + 1, total + seconds
    return clips


def _timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emi-slurm-bench"))
    parser.add_argument("--minutes", type=float, default=4.0, help="audio in the corpus")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs = local workers")
    parser.add_argument("--size", default="tiny", help="random backbone size")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    work = fresh_work(args.work, "made-by-slurm-bench")
    clips = _corpus(work / "audio", args.minutes)
    backbone = write_random_backbone(work / "backbone", size=args.size, seed=0)
    started = time.perf_counter()
    cluster = local_slurm.up(work / "slurm")
    up_s = time.perf_counter() - started
    env = {**cluster.env, "HF_HUB_OFFLINE": "1", "EMI_CACHE": str(work / "cache"),
           "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS__HOST": "127.0.0.1",
           "DASK_JOBQUEUE__SLURM__CORES": "1", "DASK_JOBQUEUE__SLURM__MEMORY": "4GB"}  # fmt: skip
    emi = [sys.executable, "-m", "cli.main", "extract", str(work / "audio")]
    common = ["--model", str(backbone), "--quiet"]
    times: dict[str, list[float]] = {"slurm": [], "local": []}
    try:
        for k in range(args.repeats):
            for kind, options in (("slurm", ["--cluster", "slurm", "--cluster-jobs"]),
                                  ("local", ["--workers"])):  # fmt: skip
                store = work / f"{kind}-{k}.zarr"
                command = [*emi, str(store), *common, *options, str(args.jobs)]
                times[kind].append(_timed(command, env))
                shutil.rmtree(store)
    finally:
        local_slurm.down(work / "slurm")
    slurm_s, local_s = (statistics.median(times[k]) for k in ("slurm", "local"))
    print(f"local SLURM cluster up in {up_s:.2f} s")
    print(f"corpus: {clips} clips, {args.minutes:.1f} min of audio; backbone {args.size}; "
          f"{args.jobs} workers; median of {args.repeats}")  # fmt: skip
    print(f"emi extract --cluster slurm --cluster-jobs {args.jobs}: {slurm_s:.1f} s "
          f"({', '.join(f'{t:.1f}' for t in times['slurm'])})")  # fmt: skip
    print(f"emi extract --workers {args.jobs} (local):        {local_s:.1f} s "
          f"({', '.join(f'{t:.1f}' for t in times['local'])})")  # fmt: skip
    print(f"ratio slurm / local: {slurm_s / local_s:.2f}")


if __name__ == "__main__":
    main()
