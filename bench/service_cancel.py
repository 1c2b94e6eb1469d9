"""How soon a cancelled job ends, on loopback, measured in one run.

Starts ``emi serve`` (a random backbone, a ridge head in its registry, the default
parts: a job of this size is one part), then ``--cancels`` times: submits a score job
over a folder of new audio (``--clips`` clips of the demo corpus' lengths), waits until
it has extracted for ``--after`` seconds, cancels it, and times the cancel request to
the job's ``cancelled`` state (polled every 20 ms). One job over such a folder is also
run whole: before a part could stop between batches, a cancel waited for that.

Usage::

    python bench/service_cancel.py --work /tmp/emi-cancel-bench
    python bench/service_cancel.py --size tiny --clips 12 --cancels 2   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service_throughput import percentile  # noqa: E402
from featurestore.extraction import extract  # noqa: E402
from featurestore.options import ExtractOptions  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from manifests import build_manifest  # noqa: E402
from manifests.synthetic import write_corpus  # noqa: E402
from models.trainer import train  # noqa: E402
from tests.served import Served  # noqa: E402

MARK = "made-by-cancel-bench"


def _fresh(work: Path) -> None:
    if work.exists():
        if not (work / MARK).exists():
            raise SystemExit(f"--work {work}: not made by this benchmark; give a new folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARK).touch()


def _extracting_for(client, job_id: str, seconds: float) -> None:
    """Wait until ``job_id`` has been extracting for ``seconds``."""
    while client.job(job_id)["progress"].get("stage") != "extracting":
        time.sleep(0.02)
    time.sleep(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emi-cancel-bench"))
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--clips", type=int, default=60, help="clips per job's folder")
    parser.add_argument("--cancels", type=int, default=10)
    parser.add_argument("--after", type=float, default=1.0, help="seconds extracting first")
    args = parser.parse_args(argv)
    work = args.work
    _fresh(work)
    root = work / "root"
    ckpt = write_random_backbone(work / "ckpt", size=args.size, seed=0)
    splits = write_corpus(root / "train", clips=30, seed=1, min_seconds=1.0, max_seconds=3.0)
    extract(build_manifest(root / "train" / "audio"), str(work / "t.zarr"),
            ExtractOptions.of(model=str(ckpt), quiet=True))  # fmt: skip
    served = Served(work / "serve", [root])
    served.folder.mkdir()
    train(str(work / "t.zarr"), splits["train"], splits["valid"], served.heads / "ml",
          preset="mean-linear")  # fmt: skip
    folders = []
    for k in range(args.cancels + 1):  # demo-corpus lengths (2.5-6 s), new audio each
        write_corpus(root / f"f{k}", clips=args.clips, seed=100 + k)
        folders.append(root / f"f{k}" / "audio")
    served.start()
    waits, done_at_cancel, finished_first = [], [], 0
    try:
        client = served.client()
        started = time.perf_counter()
        whole = client.submit({"kind": "score", "source": str(folders[0]), "heads": ["ml"]})
        whole = client.wait(whole["id"], poll_s=0.02)
        whole_s = time.perf_counter() - started
        assert whole["state"] == "succeeded", whole
        for folder in folders[1:]:
            job = client.submit({"kind": "score", "source": str(folder), "heads": ["ml"]})
            _extracting_for(client, job["id"], args.after)
            asked = time.perf_counter()
            client.cancel(job["id"])
            while (state := client.job(job["id"]))["state"] not in ("cancelled", "succeeded"):
                time.sleep(0.02)
            if state["state"] == "succeeded":  # the job ended before the cancel reached it
                finished_first += 1
                continue
            waits.append(time.perf_counter() - asked)
            done_at_cancel.append(state["result"]["predicted"] if state["result"] else 0)
    finally:
        served.stop()
    print(f"backbone {args.size}; {os.cpu_count()} CPUs; service defaults (1 in-process worker)")
    print(f"a whole score job of {args.clips} clips: {whole_s:.1f} s (one part)")
    if finished_first:
        print(f"{finished_first} jobs ended before their cancel reached them (give more --clips)")
    if waits:
        print(f"cancel -> cancelled over {len(waits)} cancels after {args.after:g} s of "
              f"extraction: p50 {statistics.median(waits):.2f} s, max {max(waits):.2f} s "
              f"(p90 {percentile(waits, 90):.2f} s); partial predictions kept: "
              f"{min(done_at_cancel)}-{max(done_at_cancel)} clips")  # fmt: skip


if __name__ == "__main__":
    main()
