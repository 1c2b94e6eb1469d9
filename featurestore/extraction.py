"""The extraction driver: find missing clips, plan parts, run one dask task per part.

Data flow: manifest records -> missing clips (not in a complete part) -> parts of
similar-length clips -> ``run_part`` on dask workers (a ``LocalCluster`` by default,
or an existing scheduler) -> each task writes its own part and its marker last.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from featurestore.backbone import identify_backbone, local_ref
from featurestore.cluster import (
    dask_client,
    forget_finished_spans,
    has_gpu_resource,
    worker_count,
)
from featurestore.cpu_dtype import dtype_reason
from featurestore.devices import require_device
from featurestore.errors import ClusterLost, StoreError
from featurestore.location import StoreLocation
from featurestore.lock import StoreLock
from featurestore.options import (
    CPU_PART_SECONDS,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    GPU_PART_SECONDS,
    MIN_PART_SECONDS,
    ExtractOptions,
    FeatureChoice,
    RunHooks,
)
from featurestore.part_task import PartJob, PartResult, run_part
from featurestore.records import ClipFailure
from featurestore.run_watch import RunWatcher
from featurestore.slurm import failure_of
from featurestore.spec import build_spec, fingerprint
from featurestore.store import (
    FeatureStore,
    StoreWriter,
    check_set_name,
    part_name,
    read_root,
)
from manifests.records import ClipRecord, planning_seconds


@dataclass
class ExtractSummary:
    """What a run did; ``failed`` lists every clip that could not be stored, with why."""

    store: str
    fingerprint: str
    feature_set: str | None = None
    compute_dtype: str = DEFAULT_DTYPE  # the backbone's (in the fingerprint)
    already_stored: int = 0
    extracted: int = 0
    frames: int = 0
    # frames the backbone ran, padding of batched clips included: 1 - frames /
    # frames_computed is the share of the work spent on padding (0 on a CPU, unbatched)
    frames_computed: int = 0
    audio_s: float = 0.0
    parts_written: list[str] = field(default_factory=list)
    incomplete_removed: list[str] = field(default_factory=list)
    changed_sources: list[str] = field(default_factory=list)  # same file, new content
    other_sources: list[str] = field(default_factory=list)  # same id, another file
    refreshed: int = 0
    failed: list[ClipFailure] = field(default_factory=list)
    wall_s: float = 0.0
    stopped: bool = False  # ``should_stop`` answered True: parts not started were skipped
    reused_audio_s: float = 0.0  # audio of the clips already stored
    # while the run works (0 once it ends): the parts still running, as of their last round
    running_clips: int = 0
    running_failed: int = 0
    running_audio_s: float = 0.0

    def to_dict(self) -> dict:
        """The JSON form (``emi extract --json``)."""
        running = ("running_clips", "running_failed", "running_audio_s")
        kept = {k: v for k, v in self.__dict__.items() if k not in running}
        return {**kept, "failed": [f.to_dict() for f in self.failed]}


def plan_parts(records: list[ClipRecord], *, part_seconds: float) -> list[list[ClipRecord]]:
    """Split clips into parts of about ``part_seconds`` of audio, similar lengths together.

    Longest clips first, so the longest parts start first and finish with the rest. The
    parts are of nearly equal audio (``ceil(total / part_seconds)`` of them): no small
    trailing part whose fixed costs would idle a device.
    """
    ordered = sorted(records, key=lambda r: (-planning_seconds(r.duration_s), r.clip_id))
    total = sum(planning_seconds(r.duration_s) for r in ordered)
    count = max(1, math.ceil(total / part_seconds)) if part_seconds > 0 else 1
    target = total / count
    parts: list[list[ClipRecord]] = [[] for _ in range(count)]
    done = 0.0
    for record in ordered:
        duration = planning_seconds(record.duration_s)
        # A clip belongs to the part in which its middle falls.
        parts[min(count - 1, int((done + duration / 2) / target))].append(record)
        done += duration
    return [part for part in parts if part]


def _clip_job_dict(r: ClipRecord) -> dict:
    return {
        "clip_id": r.clip_id,
        "path": r.path,
        "sha256": r.sha256,
        "duration_s": r.duration_s,
    }


def extract(
    records: list[ClipRecord],
    store: str,
    options: ExtractOptions | None = None,
    hooks: RunHooks | None = None,
) -> ExtractSummary:
    """Extract every clip of ``records`` not yet in ``store``.

    Args:
        records: the manifest (clip ids unique).
        store: local path or fsspec URL of the Zarr store (created if missing).
        options: run settings (default: ``ExtractOptions()``, the CLI's defaults).
        hooks: a client to run on, and the calls that follow and stop the run.

    Returns:
        A summary; ``summary.failed`` lists clips that could not be stored.

    Raises:
        StoreError: the store exists with another fingerprint, or ``store`` is a path
            that is not an emi store (nothing there is changed).
        StoreDamage: the store's root metadata is damaged.
        StoreLocked: another driver is writing the store.
        BackboneError: the backbone cannot be found or read.
        DeviceError: ``device="cuda"`` on a machine without one (local cluster).
    """
    started = time.perf_counter()
    options = options or ExtractOptions()
    hooks = hooks or RunHooks()
    compute, writing = options.compute, options.writing
    if compute.local:
        require_device(compute.device)  # local workers see this machine's devices
    if options.features.feature_set is not None:
        check_set_name(options.features.feature_set)
    location = StoreLocation.of(store, writing.storage_options)
    index = read_root(location)  # refuse what is not an emi store before writing there
    features, identity, spec, held = _choose_features(options.features, index)
    if not options.quiet:
        print(_dtype_line(options, features.compute_dtype, held), file=sys.stderr, flush=True)
    if features.expect_fingerprint and fingerprint(spec) != features.expect_fingerprint:
        raise StoreError(
            f"backbone {features.model!r} with these settings makes features with fingerprint "
            f"{fingerprint(spec)[:12]}, but {features.expect_fingerprint[:12]} is needed (the "
            "head was trained on those). Nothing was extracted; use the head's backbone "
            "(its config.json 'store.spec.backbone')."
        )
    options = replace(options, features=features)
    try:
        lock = StoreLock(
            location,
            purpose="extract",
            wait_s=writing.wait_for_lock_s,
            on_wait=lambda message: print(message, file=sys.stderr, flush=True),
            give_up=hooks.should_stop,
        )
        with lock:
            writer = StoreWriter.open(
                location,
                spec,
                lock,
                feature_set=features.feature_set,
                new_set_name=features.new_set_name,
            )
            summary = ExtractSummary(
                store=store,
                fingerprint=fingerprint(spec),
                feature_set=writer.feature_set,
                compute_dtype=spec.compute_dtype,
            )
            summary.incomplete_removed = writer.remove_uncommitted_parts()
            ExtractionRun(options, hooks, identity, writer, lock, summary).run(records)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        raise StoreError(
            f"{store}: could not write ({err.strerror or err}); every part committed "
            "before stays stored. Free space (or fix the permissions) and run the same "
            "command again: it resumes."
        ) from err
    summary.parts_written.sort()
    summary.wall_s = time.perf_counter() - started
    return summary


def _choose_features(features: FeatureChoice, index):
    """The run's features where the store decides what was left open: (the choice
    made whole, the backbone's identity, the spec, the set whose settings are the
    defaults or None).

    The set this run adds to, where it exists, gives the defaults: named, that set;
    else the set made with the backbone this run uses (so updating a further set needs
    no feature set named), else the default set's backbone."""
    # the specs of the sets whose settings may be defaults (a set whose spec was edited
    # is refused by the writer, naming it)
    specs = {n: r.feature_spec for n, r in index.sets.items() if r.intact} if index else {}
    held = specs.get(features.feature_set or index.default_set) if specs else None
    base = held or (specs.get(index.default_set) if specs else None)
    default = base.backbone.ref if base else DEFAULT_MODEL
    features = replace(features, model=local_ref(features.model or default))
    identity = identify_backbone(features.model, revision=features.revision)
    if features.feature_set is None and specs:
        same = [s for s in specs.values() if s.backbone.weights_sha256 == identity.weights_sha256]
        held = held if any(held is s for s in same) else (same[0] if same else None)
    layers = features.layers
    if layers is None:  # the set's layers, for a new set the last layer only
        layers = held.layers if held else "last"
    # the set's compute dtype, for a new set float32
    compute_dtype = features.compute_dtype or (held.compute_dtype if held else DEFAULT_DTYPE)
    spec = build_spec(
        identity,
        max_seconds=features.max_seconds,
        window_seconds=features.window_seconds,
        compute_dtype=compute_dtype,
        layers=layers,
    )
    return replace(features, layers=spec.layers, compute_dtype=compute_dtype), identity, spec, held


def _dtype_line(options: ExtractOptions, compute_dtype: str, held) -> str:
    """Which compute dtype the run uses and why (:func:`dtype_reason`)."""
    if options.features.compute_dtype is not None:
        why = "--dtype"
    else:
        why = "the feature set's" if held is not None else "the default"
    compute = options.compute
    device = require_device(compute.device) if compute.local else None
    return dtype_reason(compute_dtype, device, why=why)


class ExtractionRun:
    """One run's state under the store's writer lock: its settings and hooks, the
    backbone's identity, the writer, the lock, the summary it fills and (while parts
    run) the watcher of its stop and progress."""

    def __init__(self, options, hooks, identity, writer, lock, summary) -> None:
        self.options = options
        self.hooks = hooks
        self.identity = identity
        self.writer = writer
        self.lock = lock
        self.summary = summary
        self.watcher: RunWatcher | None = None
        self._reporting = threading.Lock()  # on_part: from this thread and the watcher's

    def run(self, records: list[ClipRecord]) -> None:
        """Plan the missing clips into parts, run them, commit each part as it ends."""
        missing = self.missing(records)
        if not missing:
            return
        if self.hooks.stop_asked():
            self.summary.stopped = True
            return
        if self.hooks.client is not None:
            self.run_on(self.hooks.client, missing)
            return
        compute = self.options.compute
        with dask_client(
            workers=compute.workers,
            scheduler=compute.scheduler,
            quiet=self.options.quiet,
            dashboard=compute.dashboard,
            slurm=compute.slurm,
            device=compute.device,
        ) as client:
            self.run_on(client, missing)

    def missing(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """The clips to compute: not stored, or (with ``refresh_changed``) whose file
        changed.

        A clip's identity is its id *and* its source: a stored clip is refreshed only
        from the file it was made from (the same source path) when that file's content
        changed. A file of another source path with the same clip id and other content
        (another folder's ``00003.wav``) never replaces the stored clip unless
        ``replace_other_sources`` asks for it: it is a failure naming both files. The
        same content from another path is the same clip (already stored).
        """
        writer, summary, writing = self.writer, self.summary, self.options.writing
        store = FeatureStore(writer.location, writer.index, writer.feature_set)
        stored_sha = store.sha256_by_clip()
        differing = [
            r for r in records if r.sha256 and stored_sha.get(r.clip_id) not in (None, "", r.sha256)
        ]
        changed, collisions = [], []
        sources = store.source_paths([r.clip_id for r in differing])
        for r in differing:
            stored_from = sources[r.clip_id]
            if stored_from == r.path:
                changed.append(r)
            else:
                collisions.append((r, stored_from))
        summary.changed_sources = [r.clip_id for r in changed]
        summary.other_sources = [r.clip_id for r, _ in collisions]
        refresh = set(summary.changed_sources) if writing.refresh_changed else set()
        if writing.replace_other_sources:
            refresh |= set(summary.other_sources)
        else:
            summary.failed.extend(_collision(r, stored_from) for r, stored_from in collisions)
        blocked = set(summary.other_sources) - refresh
        reused = [
            r for r in records if r.clip_id in stored_sha and r.clip_id not in refresh | blocked
        ]
        summary.already_stored = len(reused)
        summary.reused_audio_s = float(sum(r.duration_s or 0.0 for r in reused))
        summary.refreshed = len(refresh)
        return [r for r in records if r.clip_id not in stored_sha or r.clip_id in refresh]

    def report(self, clips: int = 0, failed: int = 0, audio_s: float = 0.0) -> None:
        """The summary so far to ``on_part``, with the running parts' last rounds."""
        with self._reporting:
            summary = self.summary
            summary.running_clips, summary.running_failed = clips, failed
            summary.running_audio_s = audio_s
            self.hooks.on_part(summary)

    def run_on(self, client, missing: list[ClipRecord]) -> None:
        """Run the parts of ``missing`` on ``client``'s workers."""
        from distributed import as_completed

        on_part = self.hooks.on_part
        self.watcher = watcher = RunWatcher(
            client,
            self.lock.run_id,
            should_stop=self.hooks.should_stop,
            on_progress=self.report if on_part is not None else None,
        )
        show = not self.options.quiet and sys.stderr.isatty()
        bar = tqdm(total=len(missing), unit="clip", disable=not show, desc="extract")
        with watcher, bar:
            futures = self.submit(client, missing)
            for future in as_completed(futures, loop=client.loop):
                job = futures[future]
                watcher.drain()  # the part's last rounds show before its clips count as done
                self.commit(future, job)
                watcher.committed(job.part)
                bar.update(len(job.clips))
                if on_part is not None:
                    self.report(*watcher.running())
        summary = self.summary
        summary.stopped = summary.stopped or watcher.stopped
        forget_finished_spans(client)
        summary.running_clips = summary.running_failed = 0
        summary.running_audio_s = 0.0

    def part_seconds(self, client, missing: list[ClipRecord], gpu: bool) -> float:
        """Audio per part: the setting (else by the workers' device), and at least two
        parts per worker when there is enough audio, so all stay busy."""
        compute = self.options.compute
        part_seconds = compute.part_seconds
        if part_seconds is None:  # a GPU part takes seconds: fewer, longer parts idle it less
            on_gpu = gpu or (compute.local and require_device(compute.device).startswith("cuda"))
            part_seconds = GPU_PART_SECONDS if on_gpu else CPU_PART_SECONDS
        total_s = sum(planning_seconds(r.duration_s) for r in missing)
        per_worker = total_s / (2 * worker_count(client))
        return min(part_seconds, max(MIN_PART_SECONDS, per_worker))

    def submit(self, client, missing: list[ClipRecord]) -> dict:
        """One task per part; returns future -> its part's job."""
        features, compute = self.options.features, self.options.compute
        resources = {"GPU": 1} if has_gpu_resource(client) else None
        parts = plan_parts(
            missing, part_seconds=self.part_seconds(client, missing, resources is not None)
        )
        first = self.writer.next_part_number()
        threads = None
        if compute.local:  # the machine's CPUs shared by the local workers
            threads = max(1, (os.cpu_count() or 1) // max(1, compute.workers))
        futures = {}
        for k, part_records in enumerate(parts):
            job = PartJob(
                store=self.writer.location.url,
                part=part_name(first + k, self.lock.run_id),
                clips=[_clip_job_dict(r) for r in part_records],
                model=features.model,
                revision=self.identity.revision or features.revision,
                device=compute.device,
                compute_dtype=features.compute_dtype,
                fingerprint=self.summary.fingerprint,
                batch_seconds=compute.batch_seconds,
                window_seconds=features.window_seconds,
                max_seconds=features.max_seconds,
                torch_threads=threads,
                storage_options=self.options.writing.storage_options,
                decode_threads=compute.decode_threads,
                layers=tuple(features.layers),
                parts_path=self.writer.parts_path,
                stop_event=self.watcher.stop_event,
                progress_queue=self.watcher.progress_queue,
                resolved_paths=self.options.writing.resolved_paths,
            )
            future = client.submit(
                run_part,
                job,
                key=f"emi-extract-{job.part}-{os.getpid()}-{time.time_ns()}",
                pure=False,
                resources=resources,
            )
            futures[future] = job
        return futures

    def commit(self, future, job: PartJob) -> None:
        """Commit a finished part, or record a failed part's clips as failed."""
        writer, summary = self.writer, self.summary
        try:
            result: PartResult = future.result()
        except CancelledError as err:  # the client lost its scheduler: no clip failed
            failure = failure_of(future.client)  # or its SLURM jobs cannot run
            if failure is not None:
                raise failure from None
            raise ClusterLost(
                f"the dask cluster went away during the run ({err}); the parts committed "
                "before are kept: run again once it is back to resume"
            ) from None
        except Exception as err:  # the whole part failed: record why, per clip
            reason = f"part {job.part} failed: {type(err).__name__}: {err}"
            failures = [ClipFailure(c["clip_id"], c["path"], reason) for c in job.clips]
            writer.location.delete(f"{writer.parts_path}/{job.part}", recursive=True)
            writer.commit(None, None, failures)
            summary.failed.extend(failures)
            return
        if result.skipped:  # the run was stopped before this part started
            summary.stopped = True
            return
        summary.stopped = summary.stopped or result.stopped
        writer.commit(result.part, result.record, result.failures)
        if result.clips:
            summary.parts_written.append(result.part)
        summary.extracted += result.clips
        summary.frames += result.frames
        summary.frames_computed += result.frames_computed
        summary.audio_s += result.audio_s
        summary.failed.extend(result.failures)


def _collision(record: ClipRecord, stored_from: str) -> ClipFailure:
    """A file of a stored clip's id from another source, with other content."""
    return ClipFailure(
        clip_id=record.clip_id,
        path=record.path,
        reason=(
            f"clip id {record.clip_id!r} is already stored from another file, {stored_from} "
            "(other content); this file was not stored and the stored clip was kept. "
            "Give this file another name or folder, extract it into another store, "
            "or pass --replace-other-sources to replace the stored clip"
        ),
    )
