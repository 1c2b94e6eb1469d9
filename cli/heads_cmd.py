"""``emi heads``: look at trained heads (parse, call the library, print)."""

from __future__ import annotations

import json

import click


@click.group()
def heads() -> None:
    """Trained heads: compare them."""


@heads.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--png",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw each head's validation Pearson (mean and per target) to this PNG.",
)
def compare(folders: tuple[str, ...], as_json: bool, png: str | None) -> None:
    """Compare the heads in FOLDERS (head folders, or folders holding them, e.g. a grid's
    --out): name, features, layer, preset, best epoch, validation Pearson (mean and per
    target), CCC, parameters and training time, best first (the challenge score: mean
    Pearson); the best head's folder is named last, or, where the heads were validated
    on different clips, why their scores are not comparable."""
    from models.compare import compare_heads, comparison_figure, comparison_table, recommendation

    rows = compare_heads(folders)
    if png:
        comparison_figure(rows, png)
    if as_json:
        chosen = recommendation(rows)
        report = {
            "best": rows[0].folder,
            "recommended": chosen.head,
            "comparable": chosen.comparable,
            "reason": chosen.reason,
            "heads": [r.to_dict() for r in rows],
        }
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(comparison_table(rows))
