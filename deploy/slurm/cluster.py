"""Extraction on a SLURM cluster: GPU dask workers as SLURM jobs (dask-jobqueue).

Run on a login node, inside the project's environment::

    pip install dask-jobqueue
    python deploy/slurm/cluster.py /shared/audio s3://emi-features/feats.zarr \\
        --model /shared/models/wav2vec2-large-robust-12-ft-emotion-msp-dim --jobs 4

Each SLURM job runs one dask worker on one GPU (``--gres=gpu:1``) declaring the ``GPU``
resource; the driver then runs ``emi extract --scheduler`` against that cluster.
"""

from __future__ import annotations

import argparse
import subprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="audio folder or manifest, visible to every node")
    parser.add_argument("store", help="store path on shared storage, or s3://...")
    parser.add_argument("--model", required=True, help="checkpoint folder on shared storage")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs = GPU workers")
    parser.add_argument("--partition", default="gpu")
    parser.add_argument("--walltime", default="04:00:00")
    args = parser.parse_args()

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        queue=args.partition,
        cores=8,
        processes=1,  # one worker process per job, and one job per GPU
        memory="32GB",
        walltime=args.walltime,
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", "GPU=1", "--nthreads", "1"],
        job_script_prologue=[
            "export EMI_TORCH_THREADS=8",
            "export EMI_DECODE_THREADS=8",
            "export HF_HUB_OFFLINE=1",
        ],
    )
    cluster.scale(jobs=args.jobs)
    try:
        subprocess.run(
            [
                "emi",
                "extract",
                args.source,
                args.store,
                "--model",
                args.model,
                "--scheduler",
                cluster.scheduler_address,
                "--device",
                "cuda",
            ],
            check=False,
        )
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
