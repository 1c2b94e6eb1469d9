"""Runs the job table's jobs: a few threads take queued jobs oldest first and run them
on the service's one dask client (a LocalCluster whose workers keep the backbone loaded
between jobs, or an existing scheduler).

Jobs that write one store take turns through the store's writer lock (they wait, never
fail for it); jobs that read run beside them. A job's progress goes to the table as its
parts report each round and commit, and after every epoch; a cancel (or the service
stopping) is honoured within seconds: parts not started are skipped, running parts stop
after their current round and commit what they finished, training stops after its
epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.cluster_link import ClusterGone, ClusterLink
from service.config import ServiceConfig
from service.errors import JobStopped, RequestError
from service.jobs import MAX_FAILURES_KEPT, Job, JobTable

log = logging.getLogger("emi.service")
LOCK_WAIT_S = 24 * 3600.0  # a job waits this long for another writer of its store
IDLE_POLL_S = 0.5
MAX_CURVE_POINTS = 2000  # a train job's learning curve points kept in its progress
MAX_RUNS = 10  # a job the cluster's losses sent back to the queue runs at most this often


class JobRunner:
    """The job threads and the dask client they share."""

    def __init__(self, config: ServiceConfig, table: JobTable, metrics, on_final) -> None:
        self.config = config
        self.table = table
        self.metrics = metrics
        self.on_final = on_final  # called with each job that ends (callbacks)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.link = ClusterLink(workers=config.workers, scheduler=config.scheduler,
                                slurm=config.slurm, device=config.device)  # fmt: skip
        self.restore_reserve: Callable[[], bool] | None = None  # the state disk's reserve
        self._unrecorded: list[tuple[Job, str, dict]] = []  # ends the table refused
        self._unrecorded_lock = threading.Lock()

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        for job_id in self.table.cancelled_while_away():
            log.info("job %s: cancelled while the service was stopped", job_id)
            self.ended(self.table.get(job_id), "cancelled")
        for job_id in self.table.requeue_running():
            log.info("job %s: running when the service stopped; queued again to resume", job_id)
        self.link.start()
        for k in range(self.config.concurrent_jobs):
            thread = threading.Thread(target=self._loop, name=f"emi-job-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def client(self):
        """The dask client (waits for one; :class:`ClusterGone` if none comes)."""
        return self.link.client()

    def cluster_status(self) -> tuple[bool, str]:
        """Whether the cluster is ready for jobs, in words (from the link's last look)."""
        status = self.link.status
        return status.ready, status.words

    def threads_alive(self) -> bool:
        """Whether every job thread is running (False once one died, or stopping)."""
        return (
            bool(self._threads)
            and not self._stopping.is_set()
            and all(t.is_alive() for t in self._threads)
        )

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Take no more jobs; running jobs stop after their current round or epoch (what
        they finished is committed) and go back to the queue, to resume at the next
        start."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        self.link.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._record_ends()
            if self.restore_reserve is not None:  # once the state disk has room again
                with contextlib.suppress(OSError):
                    self.restore_reserve()
            if not self.link.status.connected:  # jobs wait in the queue for the cluster
                self._stopping.wait(IDLE_POLL_S)
                continue
            try:
                job = self.table.claim_next()
            except Exception:  # the table itself failed (disk, lock): try again shortly
                log.exception("the job table could not be read; trying again")
                self._stopping.wait(IDLE_POLL_S * 4)
                continue
            if job is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # the service's own fault: the job fails, the thread lives
                log.exception("job %s: the service failed running it", job.id)
                with contextlib.suppress(Exception):
                    detail = "the service failed running this job (its log says why); resubmit"
                    self.table.finish(job.id, "failed", error={"error": "internal error",
                                                               "detail": detail})  # fmt: skip

    def _run(self, job: Job) -> None:
        log.info("job %s %s: queued -> running (run %d)", job.id, job.kind, job.runs)
        self.metrics.started(job)
        started = time.monotonic()
        work = {"score": self._score, "extract": self._extract, "train": self._train}[job.kind]
        client = self.link.current()
        try:
            outcome = work(job)
        except JobStopped:
            outcome = None
        except Exception as err:
            if self._cluster_lost(job, err, client):
                return
            if not self._should_stop(job)():
                self._failed(job, err)
                self.metrics.duration(job.kind, "failed", time.monotonic() - started)
                return
            outcome = None  # stopped while waiting (e.g. for a store's writer lock)
        if outcome is None:  # stopped at a boundary
            if self.table.cancel_requested(job.id):
                self._end(job, "cancelled")
                self.metrics.duration(job.kind, "cancelled", time.monotonic() - started)
            else:  # the service is stopping: resume at the next start
                self.table.update(job.id, state="queued")
                log.info("job %s: the service is stopping; queued to resume", job.id)
            return
        self.metrics.duration(job.kind, "succeeded", time.monotonic() - started)
        self._end(job, "succeeded", result=outcome)

    def _cluster_lost(self, job: Job, err: Exception, client) -> bool:
        """Where ``job`` failed because the dask cluster went away (its client lost the
        scheduler, or none came back in time): back to the queue, to resume once the
        cluster is back (what it committed is kept), up to :data:`MAX_RUNS` runs; then
        it fails saying so. False: another failure."""
        from featurestore.errors import ClusterLost

        lost = isinstance(err, ClusterGone | ClusterLost) or (
            job.kind != "train" and client is not None and self.link.lost(client)
        )  # a train job runs here: its failure is its own whatever the cluster does
        if not lost or self._should_stop(job)():
            return False
        if job.runs >= MAX_RUNS:
            self._end(job, "failed", error={
                "error": "ClusterGone",
                "detail": f"the dask cluster went away during each of this job's {job.runs} "
                          "runs; resubmit once the cluster is steady",
            })  # fmt: skip
            return True
        self._progress(job, stage="waiting for the dask cluster")
        self.table.update(job.id, state="queued")
        log.warning("job %s: the dask cluster went away (%s); queued to resume once it is "
                    "back", job.id, type(err).__name__)  # fmt: skip
        return True

    def _failed(self, job: Job, err: Exception) -> None:
        """End ``job`` failed with ``err``'s words (a traceback in the log only for
        errors that are not the user's to fix)."""
        from featurestore.errors import StoreError
        from manifests import ManifestError
        from models.errors import HeadError

        if isinstance(err, RequestError):  # a source, head or store that is not there (now)
            error = {"error": err.error, "detail": err.detail}
        else:
            if not isinstance(err, StoreError | ManifestError | HeadError | ValueError | OSError):
                log.error("job %s failed", job.id, exc_info=err)
            detail = str(err).strip() or repr(err)
            if isinstance(err, OSError) and err.errno in (28, 122):  # ENOSPC, EDQUOT
                err, detail = DiskFull(), f"{err.strerror}: {_disk_full_advice()}"
            from service.sources import public_paths_in

            detail = self.config.public_text(public_paths_in(self.config, detail))
            error = {"error": type(err).__name__, "detail": detail}
        self._end(job, "failed", error=error)

    def _end(self, job: Job, state: str, **fields) -> None:
        current = self.table.get(job.id)
        progress = dict(current.progress if current else {})
        progress["stage"] = state
        try:
            self.table.finish(job.id, state, progress=progress, **fields)
        except Exception:  # the table cannot be written (a full disk past the reserve)
            log.exception("job %s: its end (%s) could not be recorded; trying again", job.id,
                          state)  # fmt: skip
            with self._unrecorded_lock:
                self._unrecorded.append((job, state, {"progress": progress, **fields}))
            return
        log.info("job %s %s: running -> %s", job.id, job.kind, state)
        self.ended(self.table.get(job.id), state)

    def _record_ends(self) -> None:
        """Record the ends the table refused earlier (it may have room now)."""
        with self._unrecorded_lock:
            waiting, self._unrecorded = self._unrecorded, []
        for job, state, fields in waiting:
            try:
                self.table.finish(job.id, state, **fields)
            except Exception:
                with self._unrecorded_lock:
                    self._unrecorded.append((job, state, fields))
                continue
            log.info("job %s %s: running -> %s (recorded late)", job.id, job.kind, state)
            self.ended(self.table.get(job.id), state)

    def ended(self, job: Job | None, state: str) -> None:
        """What follows a job's end: its registry claim dropped, metrics, its callback."""
        if job is None:
            return
        if job.kind == "train":
            from service.registry import release_head

            release_head(self.config, job.request["name"], job.id)
        self.metrics.ended(job.kind, state)
        if job.request.get("callback_url") and not job.callback:
            callback = {"url": job.request["callback_url"], "status": "pending", "attempts": 0}
            self.table.update(job.id, callback=callback)
            job = self.table.get(job.id)
        if job is not None:
            self.on_final(job)

    def _should_stop(self, job: Job):
        return lambda: self._stopping.is_set() or self.table.cancel_requested(job.id)

    def _check_stop(self, job: Job) -> None:
        if self._should_stop(job)():
            raise JobStopped()

    def _progress(self, job: Job, **values) -> dict:
        current = self.table.get(job.id)
        progress = {**(current.progress if current else {}), **values}
        self.table.update(job.id, progress=progress)
        return progress

    def _failures(self, job: Job, failures: list) -> None:
        from service.sources import public_path, public_paths_in

        rows = [
            {
                "clip_id": f.clip_id,
                "path": public_path(self.config, f.path),
                "reason": self.config.public_text(public_paths_in(self.config, f.reason)),
            }
            for f in failures[:MAX_FAILURES_KEPT]
        ]
        self.table.update(job.id, failures=rows)

    def _part_progress(self, job: Job, total: int, refused: int):
        """The extraction's progress hook (after each committed part, and as running
        parts report their rounds): clips done, reused, failed, and the audio seconds
        of the clips done, the reused ones included."""
        seen = {"audio_s": 0.0}

        def on_part(summary) -> None:
            failed = len(summary.failed) + refused + summary.running_failed
            self.metrics.clips(summary.audio_s - seen["audio_s"])
            seen["audio_s"] = summary.audio_s
            done = summary.extracted + summary.already_stored + summary.running_clips + failed
            self._progress(
                job,
                stage="extracting",
                clips_total=total,
                clips_done=done,
                clips_reused=summary.already_stored,
                clips_failed=failed,
                audio_seconds=round(
                    summary.audio_s + summary.running_audio_s + summary.reused_audio_s, 3
                ),
            )

        return on_part

    def _run_options(self, job: Job, total: int, refused: int) -> dict:
        options = {
            "client": self.client(),
            "slurm": self.config.slurm,  # where the workers are (their threads)
            "on_part": self._part_progress(job, total, refused),
            "should_stop": self._should_stop(job),
            "resolved_paths": True,  # listed by manifest_below_roots: real paths
        }
        if self.config.part_seconds:
            options["part_seconds"] = self.config.part_seconds
        return options

    # -- the kinds -----------------------------------------------------------------

    def _manifest(self, job: Job, source: str):
        from service.sources import manifest_below_roots, resolve_source

        folder = resolve_source(self.config, source)
        self._progress(job, stage="listing")
        records, refused = manifest_below_roots(folder, self.config)
        self._progress(
            job,
            stage="extracting",
            clips_total=len(records) + len(refused),
            clips_done=0,
            clips_reused=0,
            clips_failed=len(refused),
            audio_seconds=0.0,
        )
        if job.kind != "score":  # a stopped score job still predicts what is stored
            self._check_stop(job)
        return records, refused

    def _score(self, job: Job) -> dict | None:
        from service.registry import head_folder
        from service.score import score_folder

        request = job.request
        heads = [head_folder(self.config, name) for name in request["heads"]]
        records, refused = self._manifest(job, request["source"])
        total = len(records) + len(refused)
        store = request.get("store")
        location = self.config.store_location(store) if store else None
        run = self._run_options(job, total, len(refused))  # score_folder sets its lock wait
        result = score_folder(
            records,
            heads,
            store=location,
            workers=self.config.workers,
            device=self.config.device,
            head_device=self.config.own_device,
            quiet=True,
            cache_store_for=self.config.score_store_for,
            run=run,
            on_partial=lambda partial: self._keep_predictions(job, partial, total, partial=True),
            on_predicting=lambda: self._progress(job, stage="predicting"),
        )
        failures = [*refused, *result.failed]
        self._failures(job, failures)
        _fail_on_a_full_disk(failures, result.extracted + result.reused)
        if result.stopped:  # the clips finished before the stop, as partial predictions
            self._keep_predictions(job, result.predictions, total, partial=True)
            return None
        self.metrics.outcomes(result.extracted, result.reused, len(failures))
        self._progress(
            job,
            stage="predicted",
            clips_total=total,
            clips_done=total,
            clips_reused=result.reused,
            clips_failed=len(failures),
            audio_seconds=_audio_seconds(records, failures),
        )
        kept = self._keep_predictions(job, result.predictions, total, partial=False)
        return {
            **kept,
            "extracted": result.extracted,
            "reused": result.reused,
            "failed": len(failures),
            "store": Path(result.store).name.removesuffix(".zarr"),
            "heads": [h for h in request["heads"]],
        }

    def _keep_predictions(self, job: Job, predictions, total: int, *, partial: bool) -> dict:
        """Write a score job's predictions under its results folder; partial ones (a job
        cancelled or failed: the clips finished before it ended) are recorded as the
        job's result at once, marked ``partial``."""
        folder = self.config.state / "results" / job.id
        folder.mkdir(parents=True, exist_ok=True)
        predictions.write_csv(folder / "predictions.csv")
        rows = predictions.rows()
        _write_json(folder / "predictions.json", {"predictions": rows, "partial": partial})
        kept = {
            "clips": total,
            "predicted": len(rows),
            "partial": partial,
            "predictions_csv": f"/v1/jobs/{job.id}/predictions.csv",
            "predictions_json": f"/v1/jobs/{job.id}/predictions.json",
        }
        if partial:
            self.table.update(job.id, result=kept)
        return kept

    def _extract(self, job: Job) -> dict | None:
        from featurestore.extraction import extract
        from featurestore.options import ExtractOptions
        from service.registry import store_exists

        request = job.request
        location = self.config.store_location(request["store"])
        records, refused = self._manifest(job, request["source"])
        total = len(records) + len(refused)
        new = not store_exists(location)
        layers = request.get("layers")
        options = ExtractOptions(
            model=self.config.model if new else None,
            device=self.config.device,
            workers=self.config.workers,
            scheduler=self.config.scheduler,
            feature_set=request.get("feature_set"),
            layers=layers,
            quiet=True,
            wait_for_lock_s=LOCK_WAIT_S,
            **self._run_options(job, total, len(refused)),
        )
        summary = extract(records, location, options) if records else None
        failures = [*refused, *(summary.failed if summary else [])]
        self._failures(job, failures)
        if summary is not None:
            _fail_on_a_full_disk(failures, summary.extracted + summary.already_stored)
        if summary is not None and summary.stopped:
            return None
        extracted = summary.extracted if summary else 0
        reused = summary.already_stored if summary else 0
        self.metrics.outcomes(extracted, reused, len(failures))
        self._progress(
            job,
            stage="extracted",
            clips_total=total,
            clips_done=total,
            clips_reused=reused,
            clips_failed=len(failures),
            audio_seconds=_audio_seconds(records, failures),
        )
        return {
            "clips": total,
            "extracted": extracted,
            "reused": reused,
            "failed": len(failures),
            "store": request["store"],
            "feature_set": summary.feature_set if summary else None,
            "audio_seconds": round(summary.audio_s, 3) if summary else 0.0,
        }

    def _train(self, job: Job) -> dict | None:
        from featurestore.store import FeatureStore
        from models.options import TrainSettings
        from models.trainer import train
        from service.registry import check_new_head, store_exists
        from service.sources import read_labels_below_roots

        request = job.request
        location = self.config.store_location(request["store"])
        if not store_exists(location):
            raise RequestError(404, "not found", f"store {request['store']!r} not found")
        # read once, through a descriptor opened beneath the root (errors without content)
        labels = read_labels_below_roots(self.config, request["labels"], what="labels")
        val = read_labels_below_roots(self.config, request["val_labels"], what="val_labels")
        out = check_new_head(self.config, request["name"], reserved_by=job.id)
        existed = out.exists()  # only a resumed run's own earlier writes, else not ours
        self._progress(job, stage="loading", epochs_done=0, best_val_pearson=None)
        best = {"value": -math.inf}
        epochs_done = {"n": 0}
        curve: list[dict] = []

        def on_epoch(step: dict) -> None:
            epochs_done["n"] += 1
            if math.isfinite(step["val_pearson_mean"]):
                best["value"] = max(best["value"], step["val_pearson_mean"])
            curve.append(
                {"head": step["head"], "epoch": step["epoch"], "val_pearson_mean":
                 step["val_pearson_mean"] if math.isfinite(step["val_pearson_mean"]) else None}
            )  # fmt: skip
            self._progress(
                job,
                stage="training",
                curve=curve[-MAX_CURVE_POINTS:],
                head=step["head"],
                epoch=step["epoch"],
                epochs=step["epochs"],
                epochs_done=epochs_done["n"],
                best_val_pearson=best["value"] if math.isfinite(best["value"]) else None,
            )
            self._check_stop(job)

        settings = {k: request[k] for k in ("epochs", "seed") if request.get(k) is not None}
        layer = request.get("layer")
        try:
            trained = train(
                FeatureStore.open(location),
                labels,
                val,
                out,
                preset=request.get("preset") or "compact",
                grid=request.get("grid"),
                layer=int(layer) if layer and layer.isdigit() else layer,
                settings=TrainSettings(**settings),
                features=request.get("features"),
                device=self.config.own_device,
                progress=on_epoch,
                # a resumed job rewrites what its earlier run wrote; a first run never
                # writes over a folder it did not make (train refuses it)
                overwrite=job.runs > 1,
            )
        except BaseException:
            half = out.is_dir() and not (out / "config.json").exists()
            if request.get("grid") is None and not existed and half:
                shutil.rmtree(out, ignore_errors=True)  # what this run left half written
            raise
        _tidy_after_training(self.config.heads, request["name"])
        names = [str(t.folder.relative_to(self.config.heads)) for t in trained]  # registry names
        self._progress(job, stage="trained")
        return {
            "heads": names,
            "best": {
                "head": names[max(range(len(trained)), key=lambda i: trained[i].best_val_pearson)],
                "val_pearson_mean": max(t.best_val_pearson for t in trained),
            },
            "store": request["store"],
        }


NO_SPACE = ("No space left on device", "Disk quota exceeded", "database or disk is full")


class DiskFull(OSError):
    """Every clip of a job failed and the disk was full for some: the job fails."""


def _disk_full_advice() -> str:
    return ("the disk of the stores, results or state folder is full; free space (or ask "
            "the operator to) and submit the job again")  # fmt: skip


def _fail_on_a_full_disk(failures: list, kept: int) -> None:
    """A job none of whose clips was kept, with clips failed for a full disk, fails
    saying so (never ``succeeded`` with nothing in it).

    Raises:
        DiskFull: that case.
    """
    full = [f for f in failures if any(words in f.reason for words in NO_SPACE)]
    if kept == 0 and full:
        raise DiskFull(
            f"no space left on the disk of the stores or the state folder: {len(full)} of "
            f"{len(failures)} clips failed for it and none was kept. Free space (or ask "
            "the operator to) and submit the job again"
        )


def _audio_seconds(records: list, failures: list) -> float:
    """The audio of a finished job's clips that did not fail (reused ones included)."""
    failed = {f.clip_id for f in failures}
    return round(sum(r.duration_s or 0.0 for r in records if r.clip_id not in failed), 3)


def _tidy_after_training(heads: Path, name: str) -> None:
    """Remove what earlier runs of a train job left half written (a service killed
    while it wrote): ``.NAME.partial-*`` beside the registry name it holds, and inside
    a grid's folder. Its claim on ``name`` means no other writer is there."""
    from manifests.atomic import clean_leftovers

    for gone in clean_leftovers(heads, name=name, min_age_s=0):
        log.info("removed %s, left by an interrupted run of this training", gone.name)
    if (heads / name).is_dir():
        clean_leftovers(heads / name, min_age_s=0)


def _write_json(path: Path, data) -> None:
    import json

    from manifests.atomic import atomic_file

    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, allow_nan=False))
