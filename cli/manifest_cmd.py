"""``emi manifest build``."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from manifests import build_manifest, save_manifest


@click.group()
def manifest() -> None:
    """Build manifests: which clips exist, with durations, hashes and labels."""


@manifest.command("build")
@click.argument("audio_dir", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Manifest to write: .csv or .jsonl.",
)
@click.option(
    "--labels",
    "label_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Label CSV in the challenge format (Filename,<targets>); repeatable. "
    "The file name gives the split: train_split.csv -> train.",
)
@click.option("--only-labelled", is_flag=True, help="Keep only clips found in a label file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(
    audio_dir: str, output: str, label_files: tuple[str, ...], only_labelled: bool, quiet: bool
) -> None:
    """Scan AUDIO_DIR (recursively: wav, flac, ogg, mp3, and video or audio containers:
    mp4, mkv, webm, avi, mov, m4a, aac, opus) into a manifest.

    The clip id is the path below AUDIO_DIR without extension. Files whose header
    cannot be read are kept and flagged (extraction then lists them as failed).
    """
    show = not quiet and sys.stderr.isatty()
    records = build_manifest(
        audio_dir,
        label_files=label_files,
        only_labelled=only_labelled,
        progress=lambda it: tqdm(it, desc="probe", unit="file", disable=not show),
    )
    save_manifest(records, output)
    problems = [r for r in records if r.problem]
    hours = sum(r.duration_s or 0.0 for r in records) / 3600
    labelled = sum(1 for r in records if r.labels)
    click.echo(f"{len(records)} clips ({hours:.2f} h, {labelled} labelled) -> {output}")
    if problems:
        click.echo(f"{len(problems)} files have unreadable headers (kept, flagged):", err=True)
        for r in problems[:20]:
            click.echo(f"  {r.clip_id}: {r.path}: {r.problem}", err=True)
