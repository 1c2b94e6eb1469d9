"""``emi store info | verify | export``."""

from __future__ import annotations

import json
import sys

import click
from tqdm import tqdm

from featurestore.hdf5 import export_hdf5
from featurestore.report import repair_store, store_info, verify_store
from featurestore.store import FeatureStore


@click.group()
def store() -> None:
    """Inspect, check and export a feature store."""


def _seconds(label: str, value: float | None, none: str) -> str:
    return none if value is None else f"{label} {value:g} s"


@store.command("info")
@click.argument("location")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(location: str, as_json: bool) -> None:
    """Clips, frames, hours of audio, size on disk, spec and failed clips of LOCATION."""
    data = store_info(FeatureStore.open(location))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    spec = data["spec"]
    backbone = spec["backbone"]
    lines = [
        f"store        {data['store']}",
        f"fingerprint  {data['fingerprint']}",
        f"clips        {data['clips']} in {data['parts']} parts"
        + (
            f" ({len(data['uncommitted_parts'])} uncommitted part folders)"
            if data["uncommitted_parts"]
            else ""
        ),
        f"frames       {data['frames']} ({data['hours_extracted']:.3f} h at "
        f"{spec['frame_rate_hz']} Hz)",
        f"audio        {data['hours_audio']:.3f} h",
        f"size         {data['size_bytes'] / 2**20:.1f} MiB",
        f"backbone     {backbone['ref']}"
        + (f" @ {backbone['revision']}" if backbone.get("revision") else "")
        + f" (weights sha256 {backbone['weights_sha256'][:12]}, "
        f"{backbone['feat_extract_norm']} norm)",
        f"hidden       {spec['hidden_size']} x {spec['dtypes']['hidden']}, layer {spec['layer']}",
        "layers       "
        + (
            f"hidden_states {', '.join(map(str, spec['layers']))} besides the last hidden state"
            if spec.get("layers")
            else "the last hidden state only"
        ),
        f"crop/window  {_seconds('crop to', spec['max_seconds'], 'no crop')}, "
        f"{_seconds('windows of', spec['window_seconds'], 'no windows')}, "
        f"compute {spec['compute_dtype']}",
        f"failed       {len(data['failed'])} clips",
    ]
    lines += [f"  {f['clip_id']}: {f['reason']}" for f in data["failed"]]
    click.echo("\n".join(lines))


@store.command("verify")
@click.argument("location")
def verify(location: str) -> None:
    """Read every committed part and check it against its checksums, shapes, offsets,
    ids and means; exit 1 naming each damaged part and array."""
    opened = FeatureStore.open(location)
    problems = verify_store(opened)
    if problems:
        click.echo(f"{location}: {len(problems)} problems", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        click.echo(
            "run `emi store repair` to drop the damaged parts; the next `emi extract` "
            "recomputes their clips",
            err=True,
        )
        sys.exit(1)
    click.echo(f"{location}: ok ({len(opened)} clips in {len(opened.complete_parts)} parts)")


@store.command("repair")
@click.argument("location")
def repair(location: str) -> None:
    """Drop damaged parts (their clips count as missing, so the next `emi extract`
    recomputes them) and delete part folders no run committed."""
    report = repair_store(location)
    for p in report.problems:
        click.echo(f"  {p}", err=True)
    click.echo(
        f"{location}: dropped {len(report.dropped_parts)} damaged parts "
        f"({len(report.dropped_clips)} clips to re-extract), removed "
        f"{len(report.removed_uncommitted)} uncommitted part folders"
    )
    if report.dropped_clips:
        click.echo(f"re-extract with `emi extract SOURCE {location}`")


@store.command("export")
@click.argument("location")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(location: str, output: str, quiet: bool) -> None:
    """Export every clip of LOCATION to an HDF5 file OUTPUT (a group per clip)."""
    opened = FeatureStore.open(location)
    show = not quiet and sys.stderr.isatty()
    try:
        count = export_hdf5(
            opened,
            output,
            progress=lambda it: tqdm(
                it, total=len(opened.complete_parts), unit="part", disable=not show
            ),
        )
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="OUTPUT") from err
    click.echo(f"{count} clips -> {output}")
