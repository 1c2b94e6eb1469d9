"""Dask workers as SLURM jobs: a dask-jobqueue ``SLURMCluster`` that emi watches.

The cluster is built from the ``jobqueue.slurm`` section of the dask configuration
(``~/.config/dask/jobqueue.yaml``: partition, cores, memory, walltime, job directives,
the Python or container that runs the worker, the scheduler's interface), with what
:class:`~featurestore.options.SlurmOptions` sets on top. Each job runs one
``emi worker`` (its device checked before it joins) with one task thread.

dask-jobqueue submits and cancels the jobs but never looks at them again. A
:class:`JobWatch` does, every couple of seconds (``squeue``):

- a job that ended (``scancel``, its time limit, its node lost) is forgotten and, where
  the cluster keeps a fixed number of jobs, replaced; dask runs the lost worker's task
  again elsewhere, and parts already committed stay committed;
- a job SLURM will never start (its walltime above the partition's limit, an account
  not allowed, ...) or jobs whose worker keeps failing to start (the job's log says
  why) end the run with one line, not a hang.

Torch-free; ``dask_jobqueue`` is imported when a cluster is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from featurestore.errors import SlurmError
from featurestore.options import SlurmOptions, user_cache_dir

log = logging.getLogger("emi.slurm")

WORKER_COMMAND = "cli.main worker"  # `python -m cli.main worker ...`: emi worker
JOB_NAME = "emi-worker"
DEFAULT_CORES = 1
DEFAULT_MEMORY = "4GB"
WATCH_S = 2.0  # how often squeue is asked
START_FAILURES = 3  # jobs ending before their worker joined, in a row, end the run
SUBMIT_GRACE_S = 60.0  # a job dask-jobqueue could not submit is given up after this
# A queued part's expected length before any has run: the on-demand cluster starts one
# worker per queued part (up to its maximum) rather than one for all of them.
PART_DURATION = "60s"

# Pending reasons SLURM gives a job it will never start as submitted (waiting does not
# help), with what to change.
NEVER_STARTS = {
    "PartitionTimeLimit": "the walltime is above the partition's time limit: give a "
    "shorter --cluster-walltime (or jobqueue.slurm.walltime) or another --cluster-queue",
    "PartitionNodeLimit": "the job asks for more nodes than the partition allows",
    "PartitionConfig": "the job asks for more CPUs or memory than the partition's nodes "
    "have: lower --cluster-cores/--cluster-memory",
    "BadConstraints": "no node has what the job asks for (CPUs, memory, GPUs, "
    "features): lower --cluster-cores/--cluster-memory or check the job directives",
    "AccountNotAllowed": "the account may not use this partition: give --cluster-account",
    "InvalidAccount": "the account does not exist: give --cluster-account",
    "InvalidQOS": "the QOS does not exist or is not allowed",
    "QOSMaxWallDurationPerJobLimit": "the walltime is above the QOS's limit",
    "DependencyNeverSatisfied": "the job depends on a job that failed",
}
ENDED = {
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "COMPLETING",
}


def make_cluster(options: SlurmOptions, *, device: str, dashboard: bool = False):
    """A ``SLURMCluster`` of emi workers (its scheduler starts here; no job is submitted
    before it is scaled). ``cluster.emi_logs`` is the folder of the jobs' logs.

    Raises:
        SlurmError: dask-jobqueue is not installed.
    """
    try:
        import dask
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SlurmError("--cluster slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    config = dask.config.get("jobqueue.slurm", default={}) or {}
    gpu = device.startswith("cuda")
    directives = list(config.get("job-extra-directives") or [])
    if gpu and not any("gres" in d or "gpus" in d or "-G " in d for d in directives):
        directives.append("--gres=gpu:1")  # one GPU per job: one worker per GPU
    worker_args = ["--device", "cuda" if gpu else device, *config.get("worker-extra-args", [])]
    cores = options.cores or config.get("cores") or DEFAULT_CORES
    scheduler_options = {
        **(config.get("scheduler-options") or {}),
        "dashboard_address": "127.0.0.1:8787" if dashboard else "127.0.0.1:0",
    }
    settings = {} if dashboard else {"distributed.scheduler.http.routes": []}
    settings["distributed.scheduler.default-task-durations"] = {"emi-extract": PART_DURATION}
    logs = log_directory(options, config)
    with dask.config.set(settings):
        cluster = SLURMCluster(
            queue=options.queue or config.get("queue"),
            account=options.account or config.get("account"),
            walltime=options.walltime or config.get("walltime"),
            cores=1,  # one task thread: one part at a time (on a GPU, one per GPU)
            processes=1,
            job_cpu=cores,  # the job's CPUs: torch and decoding use them
            memory=options.memory or config.get("memory") or DEFAULT_MEMORY,
            job_name=JOB_NAME,
            worker_command=WORKER_COMMAND,
            worker_extra_args=worker_args,
            job_extra_directives=directives,
            job_script_prologue=[
                *(config.get("job-script-prologue") or []),
                f"export EMI_TORCH_THREADS=${{EMI_TORCH_THREADS:-{cores}}}",
                "export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}",
            ],
            log_directory=str(logs),
            scheduler_options=scheduler_options,
        )
    cluster.emi_logs = logs
    return cluster


def log_directory(options: SlurmOptions, config: dict) -> Path:
    folder = Path(
        options.log_directory or config.get("log-directory") or user_cache_dir() / "slurm-logs"
    ).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_submits(cluster) -> None:
    """``sbatch --test-only`` of the cluster's job script: a partition, account or
    request SLURM refuses is one line here, before any job is queued.

    Raises:
        SlurmError: sbatch refused the job (its own words), or is not installed.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as script:
        script.write(cluster.job_script())
    try:
        done = subprocess.run(
            ["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise SlurmError(
            "--cluster slurm: sbatch is not on the PATH (run emi where SLURM's commands "
            "are: a login node)"
        ) from None
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        words = [
            line.removeprefix("sbatch: error: ")
            for line in done.stderr.splitlines()
            if line.strip() and "Batch job submission failed" not in line
        ]
        raise SlurmError(
            f"sbatch refuses emi's worker job: {'; '.join(words) or done.stderr.strip()} "
            "(check --cluster-queue, --cluster-account and jobqueue.slurm in the dask "
            "configuration)"
        )


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``job id -> (state, reason)`` of those of ``job_ids`` SLURM still lists."""
    if not job_ids:
        return {}
    user = os.environ.get("USER") or _user()
    done = subprocess.run(
        ["squeue", "-h", "-u", user, "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise OSError(f"squeue failed: {done.stderr.strip()}")
    wanted = set(job_ids)
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if job_id in wanted:
            states[job_id] = (state, reason)
    return states


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def last_log_line(folder: Path, job_id: str) -> str:
    """The job's last meaningful stderr line (``emi worker``'s refusal, a missing
    Python), or '' where the log is not there (yet)."""
    path = folder / f"{JOB_NAME}-{job_id}.err"
    try:
        lines = path.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(("Error:", "error:")) or "Error" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else ""


class JobWatch:
    """Looks at the cluster's jobs every ``watch_s`` (see the module's docstring).

    With ``jobs`` the cluster keeps that many jobs (ended jobs are replaced);
    otherwise ended jobs are only forgotten (the adaptive scaler starts
    others when there is work). ``on_fatal`` is called once, from the watch's thread,
    with the :class:`SlurmError` that ends the run."""

    def __init__(
        self, cluster, *, jobs: int | None, logs: Path, watch_s: float = WATCH_S, on_fatal=None
    ) -> None:
        self.cluster = cluster
        self.jobs = jobs
        self.logs = logs
        self.watch_s = watch_s
        self.on_fatal = on_fatal
        self.error: SlurmError | None = None
        self.words = "no job yet"  # what the jobs are doing, for progress and /readyz
        self._joined: set[str] = set()  # worker names that joined once
        self._failed_starts = 0
        self._unsubmitted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emi-slurm-watch", daemon=True)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.watch_s) and self.error is None:
            try:
                self.look()
            except SlurmError as err:
                self.error = err
                if self.on_fatal is not None:
                    self.on_fatal(err)
            except Exception:  # squeue hiccups: look again next time
                log.exception("the SLURM jobs could not be looked at")

    def look(self) -> None:
        """One look: forget ended jobs (replacing them where the count is fixed).

        Raises:
            SlurmError: a job SLURM will never start, or workers that keep failing to
                start.
        """
        cluster = self.cluster
        self._joined |= {w.get("name") for w in cluster.scheduler_info.get("workers", {}).values()}
        jobs = {name: job.job_id for name, job in list(cluster.workers.items())}
        states = queue_states([j for j in jobs.values() if j])
        ended, pending = [], []
        for name, job_id in jobs.items():
            if job_id is None:  # dask-jobqueue's sbatch failed or has not answered yet
                since = self._unsubmitted.setdefault(name, time.monotonic())
                if time.monotonic() - since > SUBMIT_GRACE_S:
                    raise SlurmError(
                        f"sbatch did not submit worker job {name} within "
                        f"{SUBMIT_GRACE_S:.0f} s (see the log above)"
                    )
                continue
            state, reason = states.get(job_id, ("", ""))
            if job_id not in states or state in ENDED:  # gone from the queue: ended
                ended.append((name, job_id))
            elif state == "PENDING":
                pending.append((job_id, reason))
                if reason in NEVER_STARTS:
                    self._cancel(job_id)
                    raise SlurmError(
                        f"SLURM will never start worker job {job_id} "
                        f"({reason}): {NEVER_STARTS[reason]}"
                    )
        self._forget(ended)
        running = len(jobs) - len(ended) - len(pending)
        reasons = sorted({r for _, r in pending})
        self.words = f"{running} job{'s' * (running != 1)} running, {len(pending)} pending" + (
            f" ({', '.join(reasons)})" if reasons else ""
        )

    def _forget(self, ended: list[tuple[str, str]]) -> None:
        if not ended:
            return
        for name, job_id in ended:
            if self._started(name):
                log.warning(
                    "SLURM worker job %s ended; %s",
                    job_id,
                    "replacing it" if self.jobs else "forgotten",
                )
                self._failed_starts = 0
                continue
            self._failed_starts += 1
            why = last_log_line(self.logs, job_id)
            if self._failed_starts >= START_FAILURES:
                raise SlurmError(
                    f"{self._failed_starts} SLURM worker jobs in a row ended before their "
                    f"worker joined; the last, job {job_id}, says: "
                    f"{why or 'nothing'} (its log: {self.logs}/{JOB_NAME}-{job_id}.err)"
                )
            log.warning("SLURM worker job %s ended before its worker joined: %s", job_id, why)
        names = [name for name, _ in ended]
        self.cluster.sync(_forget_jobs, self.cluster, names, self.jobs)

    def _started(self, name: str) -> bool:
        return any(n == name or str(n).startswith(f"{name}-") for n in self._joined)

    def _cancel(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


async def _forget_jobs(cluster, names: list[str], jobs: int | None) -> None:
    """On the cluster's loop: drop ended jobs from its plan, then (a fixed count) ask
    for the jobs again, which submits replacements."""
    for name in names:
        cluster.worker_spec.pop(name, None)
        cluster.workers.pop(name, None)
    if jobs:
        cluster.scale(jobs=jobs)


def wait_for_first_worker(client, watch: JobWatch, *, quiet: bool, every_s: float = 30.0) -> None:
    """Block until one worker joined (a run plans its parts for the workers it has),
    saying every ``every_s`` what SLURM does with the jobs meanwhile.

    Raises:
        SlurmError: the watch found the jobs cannot start.
    """
    said = time.monotonic()
    while not client.scheduler_info().get("workers"):
        if watch.error is not None:
            raise watch.error
        if not quiet and time.monotonic() - said > every_s:
            print(f"waiting for SLURM to start emi's workers: {watch.words}", file=sys.stderr)
            said = time.monotonic()
        time.sleep(0.5)


# client -> why its SLURM cluster ended the run (kept while the client lives: the run's
# thread may ask after the service dropped the cluster)
_FAILURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def failure_of(client) -> SlurmError | None:
    """Why ``client``'s SLURM jobs ended the run (its futures were cancelled for it), or
    None."""
    return _FAILURES.get(client)


@contextlib.contextmanager
def slurm_client(
    options: SlurmOptions,
    *,
    device: str,
    quiet: bool,
    dashboard: bool = False,
    wait_for_worker: bool = True,
):
    """A client of a SLURM cluster of emi workers, its jobs released at the end.

    ``options.jobs`` jobs are kept running (ended ones replaced); without ``jobs``, up
    to ``options.max_jobs`` start on demand and are released after ``options.idle_s``
    idle. ``wait_for_worker``: return once one worker joined.

    Raises:
        SlurmError: sbatch refuses the job, SLURM will never start it, or its workers
            keep failing to start (also while the client is in use: its futures are
            cancelled and :func:`failure_of` says why).
    """
    from distributed import Client

    cluster = make_cluster(options, device=device, dashboard=dashboard)
    cluster.emi_planned_workers = options.planned_jobs  # runs plan their parts for these
    client = None
    try:
        check_submits(cluster)
        client = Client(cluster, set_as_default=False)
        if options.jobs:
            cluster.scale(jobs=options.jobs)
        else:
            interval = 1.0
            cluster.adapt(
                minimum_jobs=0,
                maximum_jobs=options.max_jobs or 1,
                interval=f"{interval}s",
                wait_count=max(1, round(options.idle_s / interval)),
            )

        def fatal(err: SlurmError) -> None:
            _FAILURES[client] = err
            _cancel_all(client)

        with JobWatch(cluster, jobs=options.jobs, logs=cluster.emi_logs, on_fatal=fatal) as watch:
            cluster.emi_watch = watch  # the service shows what the jobs do
            if wait_for_worker:
                wait_for_first_worker(client, watch, quiet=quiet)
            yield client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        cluster.close()


def _cancel_all(client) -> None:
    """Cancel every future ``client`` holds (the run waiting on them ends)."""
    from distributed import Future

    with contextlib.suppress(Exception):
        client.cancel([Future(key, client) for key in list(client.futures)], force=True)
