"""``emi evaluate``: parse, call the library, print."""

from __future__ import annotations

import json

import click

from cli.shared_options import device_option
from manifests.records import count_of


@click.command()
@click.argument("store")
@click.option(
    "--head",
    "head_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Head folder; repeatable (two or more: paired differences too).",
)
@click.option(
    "--labels",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labels of the clips to score, challenge CSV format (Filename,<targets>).",
)
@click.option(
    "--resamples",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples over clips (0: no intervals).",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    help="Coverage of the intervals.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--skip-missing", is_flag=True, help="Score the labelled clips that are stored.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the metrics CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@device_option()
def evaluate(
    store: str,
    head_paths: tuple[str, ...],
    labels: str,
    resamples: int,
    confidence: float,
    seed: int,
    skip_missing: bool,
    csv_path: str | None,
    as_json: bool,
    device: str,
) -> None:
    """Score heads on the labelled clips of STORE: the challenge score (mean Pearson of
    predictions clamped to [0, 1]) and per-target Pearson, CCC and MSE, each with a
    bootstrap confidence interval over clips; with several heads, paired differences."""
    from models.evaluation import evaluate_heads

    result = evaluate_heads(
        store,
        head_paths,
        labels,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
        skip_missing=skip_missing,
        device=device,
        output_csv=csv_path,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for line in format_evaluation(result):
        click.echo(line)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if csv_path:
        click.echo(f"\nmetrics -> {csv_path}")


def _ci(interval) -> str:
    return f"{interval.value:6.3f} [{interval.low:6.3f}, {interval.high:6.3f}]"


def format_evaluation(result) -> list[str]:
    """The human-readable report of an :class:`models.evaluation.Evaluation`."""
    percent = f"{result.confidence * 100:g}%"
    lines = [
        f"{result.clips} clip{'s' if result.clips != 1 else ''}; {percent} intervals from "
        f"{result.resamples} bootstrap resamples over clips (seed {result.seed})",
        "",
        f"{'head':20s} {'challenge score (mean Pearson)':>31s} {'mean CCC':>25s} {'mean MSE':>25s}",
    ]
    ranked = sorted(result.heads, key=lambda h: -h.score.value)
    for h in ranked:
        lines.append(
            f"{h.head:20s} {_ci(h.means['pearson']):>31s} {_ci(h.means['ccc']):>25s} "
            f"{_ci(h.means['mse']):>25s}"
        )
    lines += [
        "",
        "Pearson per target:",
        f"  {'target':16s}" + "".join(f"{h.head:>27s}" for h in ranked),
    ]
    for t in result.targets:
        cells = "".join(
            f"{_ci(h.per_target['pearson'][t]):>27s}"
            if t in h.per_target["pearson"]
            else f"{'-':>27s}"
            for h in ranked
        )
        lines.append(f"  {t:16s}{cells}")
    if result.differences:
        lines += ["", "paired differences in challenge score (same resampled clips for both):"]
        for d in result.differences:
            i = d["difference"]
            verdict = (
                "the interval excludes 0"
                if i["low"] > 0 or i["high"] < 0
                else "the interval includes 0"
            )
            lines.append(
                f"  {d['a']} - {d['b']}: {i['value']:+.3f} [{i['low']:+.3f}, {i['high']:+.3f}]; "
                f"{d['a']} better in {d['share_a_better'] * 100:.1f}% of resamples; {verdict}"
            )
    if result.skipped:
        lines.append(
            f"\n{count_of(len(result.skipped), 'labelled clip')} "
            f"{'is' if len(result.skipped) == 1 else 'are'} not in the store (skipped)"
        )
    return lines
