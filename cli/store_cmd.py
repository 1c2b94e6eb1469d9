"""``emi store info | verify | export``."""

from __future__ import annotations

import json
import sys

import click
from tqdm import tqdm

from featurestore.hdf5 import export_hdf5
from featurestore.report import rebuild_root, repair_store, store_info, verify_all
from featurestore.store import FeatureStore
from manifests.records import count_of


@click.group()
def store() -> None:
    """Inspect, check and export a feature store."""


def _seconds(label: str, value: float | None, none: str) -> str:
    return none if value is None else f"{label} {value:g} s"


SET_OPTION = click.option(
    "--feature-set",
    default=None,
    help="The feature set (emi store info lists them); default: the store's default set.",
)


@store.command("info")
@click.argument("location")
@SET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(location: str, feature_set: str | None, as_json: bool) -> None:
    """The feature sets of LOCATION, and of one set: clips, frames, hours of audio,
    size on disk, spec and failed clips."""
    data = store_info(FeatureStore.open(location, feature_set=feature_set))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    spec = data["spec"]
    backbone = spec["backbone"]
    sets = data["feature_sets"]
    lines = [f"store        {data['store']} ({data['size_bytes'] / 2**20:.1f} MiB)"]
    lines += [f"feature sets {len(sets)}"]
    lines += [
        f"  {'*' if s['feature_set'] == data['feature_set'] else ' '} {s['feature_set']:32s} "
        + (
            f"DAMAGED: {s['damaged']}"
            if "damaged" in s
            else f"{s['fingerprint'][:12]}  {s['hidden_size']}-d, layers "
            f"{','.join(map(str, s['layers'])) or 'last'}{'' if s['vad'] else ', no VAD head'}; "
            f"{s['clips']} clips, {s['hours_audio']:.3f} h, "
            f"{s['set_size_bytes'] / 2**20:.1f} MiB"
        )
        for s in sets
    ]
    lines += [
        f"feature set  {data['feature_set']}",
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
        f"size         {data['set_size_bytes'] / 2**20:.1f} MiB",
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
    problems = verify_all(location)
    if problems:
        click.echo(f"{location}: {count_of(len(problems), 'problem')}", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        click.echo(
            "run `emi store repair` to drop the damaged parts; the next `emi extract` "
            "recomputes their clips",
            err=True,
        )
        sys.exit(1)
    opened = FeatureStore.open(location)
    counts = [opened.with_set(name) for name in opened.feature_sets]
    click.echo(
        f"{location}: ok ("
        + "; ".join(
            f"{len(s)} clips in {len(s.complete_parts)} parts"
            + ("" if len(counts) == 1 else f" of set {s.feature_set}")
            for s in counts
        )
        + ")"
    )


@store.command("repair")
@click.argument("location")
@click.option(
    "--rebuild-root",
    "rebuild",
    is_flag=True,
    help="Rebuild the root's index from the part markers first (a damaged root, or an "
    "edited feature set spec); the old root is kept beside it.",
)
def repair(location: str, rebuild: bool) -> None:
    """Drop damaged parts (their clips count as missing, so the next `emi extract`
    recomputes them) and delete part folders no run committed.

    With --rebuild-root, first rebuild the root's index from the part markers (for a
    root that is damaged or whose set specs were edited); the old root is kept beside
    it."""
    if rebuild:
        rebuilt = rebuild_root(location)
        sets = ", ".join(f"{name} ({count_of(n, 'part')})" for name, n in rebuilt.sets.items())
        click.echo(
            f"{location}: rebuilt the root from the part markers: {sets}, "
            f"{count_of(rebuilt.clips, 'clip')}"
            + (f"; the old root is kept as {rebuilt.backup}" if rebuilt.backup else "")
        )
        for why in rebuilt.skipped:
            click.echo(f"  left out {why}", err=True)
    report = repair_store(location)
    if report.removed_unfinished_root:
        click.echo(
            f"{location}: removed the empty root of a store whose creation never completed "
            "(nothing had been committed); `emi extract` creates the store anew"
        )
        return
    for p in report.problems:
        click.echo(f"  {p}", err=True)
    click.echo(
        f"{location}: dropped {count_of(len(report.dropped_parts), 'damaged part')} "
        f"({count_of(len(report.dropped_clips), 'clip')} to re-extract), removed "
        f"{count_of(len(report.removed_uncommitted), 'uncommitted part folder')}"
        + (
            f" and {count_of(len(report.removed_leftovers), 'temporary file')} of "
            "interrupted writes"
            if report.removed_leftovers
            else ""
        )
    )
    for name, clips in report.dropped_by_set.items():
        click.echo(
            f"re-extract the {count_of(len(clips), 'clip')} of feature set {name} with "
            f"`emi extract SOURCE {location} --feature-set {name}` (and that set's --model)"
        )


@store.command("export")
@click.argument("location")
@click.argument("output", type=click.Path(dir_okay=False))
@SET_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(location: str, output: str, feature_set: str | None, quiet: bool) -> None:
    """Export every clip of one feature set of LOCATION to an HDF5 file OUTPUT (a group
    per clip)."""
    opened = FeatureStore.open(location, feature_set=feature_set)
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
