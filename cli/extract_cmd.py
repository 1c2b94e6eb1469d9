"""``emi extract``: parse, call the library, print."""

from __future__ import annotations

import json
import sys

import click

from cli.cluster_options import cluster_options
from cli.shared_options import device_option, scheduler_option, workers_option
from featurestore.errors import EXIT_CLIPS_FAILED
from featurestore.options import (
    COMPUTE_DTYPES,
    DEFAULT_MODEL,
    ExtractOptions,
    SlurmOptions,
)
from manifests.records import count_of

FEATURES = ExtractOptions().features


@click.command()
@click.argument("source")
@click.argument("store")
@click.option(
    "--model",
    default=None,
    help=f"Checkpoint folder or hub id. Default: the store's backbone, for a new "
    f"store {DEFAULT_MODEL}.",
)
@click.option("--revision", default=None, help="Hub revision of --model.")
@device_option("auto: cuda on workers that have a GPU, else cpu.")
@click.option(
    "--dtype",
    "--compute-dtype",
    "compute_dtype",
    type=click.Choice(COMPUTE_DTYPES),
    default=None,
    help="The backbone's compute dtype (part of the features' fingerprint). Default: the "
    "feature set's, for a new set float32. bfloat16 is faster only on CPUs that have it "
    "(AMX, AVX-512 BF16, Arm BF16); the first line printed says which this is.",
)
@workers_option(
    "Worker processes of the local dask cluster (ignored with --scheduler or --cluster slurm)."
)
@scheduler_option("Address of a running dask scheduler (also DASK_SCHEDULER_ADDRESS).")
@cluster_options(on_demand=False)
@click.option(
    "--batch-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Padded audio seconds per forward. Default: 0 on CPU (one clip at a "
    "time, fastest there), 120 on GPU.",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(min=0),
    default=None,
    help="Threads per worker that decode the next clips while the device works "
    "(0: decode, forward and write in turn). Default: EMI_DECODE_THREADS, else on GPU "
    "workers their CPU share (EMI_TORCH_THREADS or the CPUs they see), on CPU 0.",
)
@click.option(
    "--layers",
    default=None,
    help="Transformer layers to store: last, all, or numbers such as 0,6,12 (0: the "
    "feature projection's output; the last layer is always stored). Part of the "
    "fingerprint. Default: the store's layers, for a new store last.",
)
@click.option(
    "--feature-set",
    default=None,
    help="Feature set of STORE to extract into; a new name adds a set (another backbone "
    "or settings) without touching the others. Default: the set made with this backbone, "
    "else the store's default set; for a new store the backbone's name.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0.025),
    default=None,
    help="Keep only each clip's first seconds (the paper used 12).",
)
@click.option(
    "--window-seconds",
    type=click.FloatRange(min=0),
    default=FEATURES.window_seconds,
    show_default=True,
    help="Encode longer clips in windows of this length (bounded memory); "
    "0 encodes every clip whole.",
)
@click.option(
    "--part-seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="Audio seconds per part (one task, one store group). Default: 600 on CPU "
    "workers, 3600 on GPU workers.",
)
@click.option(
    "--labels",
    "label_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="When SOURCE is a folder: label CSVs to merge into its manifest.",
)
@click.option(
    "--refresh-changed",
    is_flag=True,
    help="Recompute stored clips whose file (the same path) changed since (the new "
    "features replace the old ones; the old bytes stay in their part).",
)
@click.option(
    "--replace-other-sources",
    is_flag=True,
    help="Also replace a stored clip by a file of the same clip id from another path "
    "with other content (without it such a file fails, naming both files).",
)
@click.option(
    "--dashboard",
    is_flag=True,
    help="Serve the local dask cluster's dashboard on 127.0.0.1:8787 (off by default; "
    "nothing listens beyond loopback either way).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar and no per-clip failure lines.")
def extract(
    source: str,
    store: str,
    model: str | None,
    revision: str | None,
    device: str,
    compute_dtype: str | None,
    workers: int,
    scheduler: str | None,
    slurm: SlurmOptions | None,
    batch_seconds: float | None,
    decode_threads: int | None,
    layers: str | None,
    feature_set: str | None,
    max_seconds: float | None,
    window_seconds: float,
    part_seconds: float | None,
    label_files: tuple[str, ...],
    refresh_changed: bool,
    replace_other_sources: bool,
    dashboard: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Extract features for SOURCE (a manifest .csv/.jsonl, or an audio folder: local or a
    URL such as s3://bucket/audio) into STORE (a path or a URL).

    Only clips missing from STORE are computed: re-running resumes, a longer manifest
    appends. Exit status 3 when some clips failed (each listed with its reason).
    """
    from featurestore.extraction import extract as run_extract
    from manifests import load_source

    records = load_source(source, label_files=label_files)
    options = ExtractOptions.of(
        model=model,
        revision=revision,
        device=device,
        compute_dtype=compute_dtype,
        workers=workers,
        scheduler=scheduler,
        slurm=slurm,
        batch_seconds=batch_seconds,
        decode_threads=decode_threads,
        layers=layers,
        feature_set=feature_set,
        max_seconds=max_seconds,
        window_seconds=window_seconds or None,
        part_seconds=part_seconds,
        refresh_changed=refresh_changed,
        replace_other_sources=replace_other_sources,
        dashboard=dashboard,
        quiet=quiet,
    )
    summary = run_extract(records, store, options)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        speed = summary.audio_s / summary.wall_s if summary.wall_s else 0.0
        click.echo(
            f"{summary.extracted} clips extracted ({summary.audio_s / 3600:.3f} h of audio, "
            f"{summary.frames} frames, {speed:.1f} audio s/s), {summary.already_stored} "
            f"already stored, {len(summary.failed)} failed -> {store} "
            f"(feature set {summary.feature_set})"
        )
        if summary.incomplete_removed:
            click.echo(
                f"removed {len(summary.incomplete_removed)} uncommitted parts left by an "
                f"earlier run: {', '.join(summary.incomplete_removed)}"
            )
        if summary.refreshed:
            click.echo(f"refreshed {summary.refreshed} clips whose file changed")
        elif summary.changed_sources:
            changed = count_of(len(summary.changed_sources), "stored clip")
            click.echo(
                f"warning: the files of {changed} changed "
                f"since they were stored (same path, other content) and were not "
                f"recomputed; run again with --refresh-changed to recompute them: "
                f"{', '.join(summary.changed_sources[:10])}",
                err=True,
            )
        if summary.failed and not quiet:
            click.echo("failed clips:", err=True)
            for f in summary.failed:
                click.echo(f"  {f['clip_id']}: {f['reason']} ({f['path']})", err=True)
    if summary.failed:
        sys.exit(EXIT_CLIPS_FAILED)
