"""Extraction on a SLURM cluster: GPU dask workers as SLURM jobs (dask-jobqueue).

Run on a login node, in the project's environment (``pip install dask-jobqueue``)::

    python deploy/slurm/cluster.py /shared/audio s3://emi-features/feats.zarr \\
        --model /shared/models/backbone --jobs 4 --image /shared/images/emi-gpu.sif

Each SLURM job runs one ``emi worker`` on one GPU (``--gres=gpu:1``): a dask worker that
checks its GPU before it joins (a job landing on a node without one ends at once with
one line in its log) and declares the ``GPU`` resource emi's extraction asks for. With
``--image`` the worker runs inside emi's image under Apptainer (``apptainer pull
emi-gpu.sif docker://registry.example.org/emi:0.1.0-gpu``: the same software as the
Kubernetes deployment); without it, in this Python environment, which must then be on
storage every node sees. The driver then runs ``emi extract --scheduler`` against the
workers; closing the cluster cancels the jobs. ``--print-script`` prints the job script
SLURM would run and starts nothing.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

WORKER_COMMAND = "cli.main worker"  # `python -m cli.main worker`: emi worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="audio folder or manifest, visible to every node")
    parser.add_argument("store", help="store path on shared storage, or s3://...")
    parser.add_argument("--model", required=True, help="checkpoint folder on shared storage")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs = GPU workers")
    parser.add_argument("--partition", default="gpu")
    parser.add_argument("--account", default=None)
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--cores", type=int, default=8, help="CPUs per job (decode, torch)")
    parser.add_argument("--memory", default="32GB", help="memory per job")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"],
                        help="the workers' device (cpu: CPU-only partitions)")  # fmt: skip
    parser.add_argument("--image", default=None,
                        help="an Apptainer image of emi (.sif); default: this Python")  # fmt: skip
    parser.add_argument("--bind", action="append", default=[],
                        help="folders the image sees (apptainer --bind), repeatable")  # fmt: skip
    parser.add_argument("--scheduler-host", default=None,
                        help="the address the nodes reach this login node at")  # fmt: skip
    parser.add_argument("--print-script", action="store_true",
                        help="print the SLURM job script and start nothing")  # fmt: skip
    return parser.parse_args(argv)


def worker_python(args: argparse.Namespace) -> str:
    """The Python a job runs the worker with: inside the image, or this one."""
    if args.image is None:
        return shlex.quote(sys.executable)
    binds = "".join(f" --bind {shlex.quote(b)}" for b in args.bind)
    gpu = " --nv" if args.device != "cpu" else ""
    return f"apptainer exec{gpu}{binds} {shlex.quote(args.image)} python"


def make_cluster(args: argparse.Namespace):
    """The SLURMCluster of ``args`` (its scheduler starts here; no job is submitted
    before ``scale``)."""
    from dask_jobqueue import SLURMCluster

    gpu = args.device != "cpu"
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=1,  # one thread: one part at a time on the GPU
        job_cpu=args.cores,  # the job's CPUs decode ahead of it (EMI_DECODE_THREADS)
        processes=1,  # one worker process per job, and one job per GPU
        memory=args.memory,
        walltime=args.walltime,
        job_name="emi-worker",
        python=worker_python(args),
        worker_command=WORKER_COMMAND,
        job_extra_directives=["--gres=gpu:1"] if gpu else [],
        # emi worker: the device checked before joining; GPU=1 is what extraction's
        # parts ask for
        worker_extra_args=["--device", args.device, *(["--resources", "GPU=1"] if gpu else [])],
        job_script_prologue=[
            f"export EMI_TORCH_THREADS={args.cores}",
            f"export EMI_DECODE_THREADS={args.cores}",
            "export HF_HUB_OFFLINE=1",
        ],
        scheduler_options={"host": args.scheduler_host} if args.scheduler_host else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = make_cluster(args)
    try:
        if args.print_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        command = ["emi", "extract", args.source, args.store, "--model", args.model,
                   "--scheduler", cluster.scheduler_address, "--device", args.device]  # fmt: skip
        return subprocess.run(command, check=False).returncode
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
