"""Head quality on a corpus of synthesized speech, every recipe side by side in one run.

The corpus (``manifests.spoken``): espeak-ng sentences, targets a known function of
pitch, rate and pauses plus noise, validation voices never heard in training. It is
extracted once with a random wav2vec 2.0 backbone (``--size``) and ``--layers all``;
then, from that store alone:

- **ridge (anchor)**: scikit-learn's ``StandardScaler`` + ``RidgeCV`` on the stored
  ``hidden_mean`` + ``vad_mean`` of each layer choice (all layers side by side for
  ``weighted``), computed here without emi's training code;
- **heads**: every ``--presets`` x layer choice (``last``, each stored layer,
  ``weighted``) x ``--standardize`` (on, off), trained by ``emi train --grid`` in one
  data load, each at its preset's recipe.

Prints validation mean Pearson per head (and its difference from the anchor on the same
features), the best epoch and epochs run, and training seconds. A later run with the
same ``--work`` reuses corpus and store, and adds its heads to ``results.json`` there:
the table shows every head measured on that store (``--only-this-run``: this run's).

Usage::

    python bench/heads_quality.py --work /tmp/emi-heads-bench --clips 300 --size small
    python bench/heads_quality.py --presets fusion,compact --layers last,weighted
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featurestore.extraction import extract  # noqa: E402
from featurestore.options import ExtractOptions  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from featurestore.store import FeatureStore  # noqa: E402
from manifests import build_manifest, read_labels  # noqa: E402
from manifests.spoken import write_spoken_corpus  # noqa: E402
from models.options import PRESETS  # noqa: E402
from models.trainer import train  # noqa: E402


def prepare(work: Path, clips: int, size: str, seed: int) -> tuple[Path, dict[str, Path]]:
    """The corpus and its store in ``work`` (made once; a later run reuses them):
    the store's path and the split label files."""
    done = work / "prepared.json"
    settings = {"clips": clips, "size": size, "seed": seed}
    splits = {s: work / f"{s}_split.csv" for s in ("train", "valid", "test")}
    if done.is_file() and json.loads(done.read_text()) == settings:
        return work / "feats.zarr", splits
    made_here = ("audio", "feats.zarr", "heads", "results.json")
    if not done.is_file() and any((work / m).exists() for m in made_here):
        raise SystemExit(
            f"{work} holds {', '.join(m for m in made_here if (work / m).exists())} but was not "
            "made by this benchmark (no prepared.json); give --work a new or empty folder"
        )
    for made in made_here:  # this benchmark's corpus of other settings
        target = work / made
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    started = time.perf_counter()
    splits = write_spoken_corpus(work, clips=clips, seed=seed)
    backbone = write_random_backbone(work / f"backbone-{size}", size=size, seed=seed)
    records = build_manifest(work / "audio", label_files=list(splits.values()))
    summary = extract(
        records, str(work / "feats.zarr"), ExtractOptions.of(model=str(backbone), layers="all")
    )
    if summary.failed:
        raise SystemExit(f"{len(summary.failed)} clips failed to extract: {summary.failed[:3]}")
    print(
        f"corpus: {summary.extracted} clips ({summary.audio_s / 3600:.2f} h) synthesized and "
        f"extracted in {time.perf_counter() - started:.0f} s"
    )
    done.write_text(json.dumps(settings))
    return work / "feats.zarr", splits


def _pearson_mean(pred: np.ndarray, true: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(np.mean([pearsonr(pred[:, j], true[:, j])[0] for j in range(true.shape[1])]))


def ridge_anchor(store: FeatureStore, train_csv: Path, val_csv: Path, layer) -> float:
    """scikit-learn's standardized RidgeCV (a penalty per target, chosen by
    leave-one-out on the training clips) on the stored global means of ``layer``
    (None: the last hidden state; "weighted": every stored layer side by side)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from models.ridge import DEFAULT_ALPHAS

    layers = store.layers if layer == "weighted" else (layer,)

    def features(ids):
        return np.stack(
            [
                np.concatenate([*(store.hidden_mean(c, k) for k in layers), store.vad_mean(c)])
                for c in ids
            ]
        ).astype(np.float64)

    tables = [read_labels(p) for p in (train_csv, val_csv)]
    (x_train, y_train), (x_val, y_val) = (
        (features(list(t.rows)), np.array(list(t.rows.values()))) for t in tables
    )
    scaler = StandardScaler().fit(x_train)
    model = RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True)
    model.fit(scaler.transform(x_train), y_train)
    pred = np.clip(model.predict(scaler.transform(x_val)), 0, 1)
    return _pearson_mean(pred, y_val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emi-heads-bench"))
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--size", default="small", help="random backbone size")
    parser.add_argument("--seed", type=int, default=0, help="corpus and backbone seed")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--layers", default="last,each,weighted", help="layer choices: last, each, weighted"
    )
    parser.add_argument("--standardize", default="on,off", help="on, off or on,off")
    parser.add_argument("--epochs", type=int, default=None, help="default: each preset's")
    parser.add_argument(
        "--lrs", default=None, help="learning rates to try, e.g. 3e-4,1e-3 (default: the preset's)"
    )
    parser.add_argument("--only-this-run", action="store_true")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the Benchmarks page's tables of --work's results",
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((args.work / "results.json").read_text())))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    store_path, splits = prepare(args.work, args.clips, args.size, args.seed)
    train_csv, val_csv = splits["train"], splits["valid"]
    store = FeatureStore.open(store_path)
    choices = []
    for choice in args.layers.split(","):
        choices += list(store.layers) if choice == "each" else [choice]
    print(f"store: {len(store.clip_ids)} clips, hidden {store.hidden_size}, layers {store.layers}")

    anchors = {str(c): ridge_anchor(store, train_csv, val_csv, _layer(c)) for c in choices}
    heads = _grid(args, choices)
    print(f"training {len(heads)} heads (one data load) ...", flush=True)
    trained = train(
        store, train_csv, val_csv, args.work / "heads", grid={"heads": heads}, overwrite=True
    )
    results_file = args.work / "results.json"
    earlier = json.loads(results_file.read_text())["heads"] if results_file.is_file() else []
    rows = [] if args.only_this_run else [r for r in earlier if r["head"] not in names(heads)]
    for entry, t in zip(heads, trained, strict=True):
        choice = entry.get("layers") or entry.get("layer")
        rows.append(
            {
                "head": t.name,
                "preset": entry["preset"],
                "layer": str(choice),
                "standardize": entry["standardize"],
                "val_pearson_mean": t.best_val_pearson,
                "best_epoch": t.best_epoch,
                "epochs_run": len(t.metrics["epochs"]),
                "seconds": round(t.seconds, 1),
                "layer_weights": t.metrics.get("layer_weights"),
            }
        )
    for r in rows:  # this run's and earlier runs' heads: every anchor by this version
        if r["layer"] not in anchors:
            anchors[r["layer"]] = ridge_anchor(store, train_csv, val_csv, _layer(r["layer"]))
        r["ridge_anchor"] = anchors[r["layer"]]
    tested = _report(store, args.work / "heads", splits["test"], rows, anchors)
    kept = rows + [r for r in earlier if args.only_this_run and r["head"] not in names(heads)]
    results_file.write_text(
        json.dumps(
            {"anchors": anchors, "heads": kept, "comparisons": tested["comparisons"]}, indent=1
        )
    )
    print(f"results -> {results_file}")


def _grid(args, choices: list) -> list[dict]:
    """The grid's heads: every preset x layer choice x standardization x learning rate."""
    heads = []
    for preset in args.presets.split(","):
        for choice in choices:
            for scale in args.standardize.split(","):
                for lr in args.lrs.split(",") if args.lrs else [None]:
                    name = f"{preset}-{choice}-std{scale}" + (f"-lr{lr}" if lr else "")
                    name += f"-e{args.epochs}" if args.epochs else ""
                    entry = {"name": name, "preset": preset, "standardize": scale == "on"}
                    entry.update(
                        {"layers": "weighted"} if choice == "weighted" else {"layer": choice}
                    )
                    if lr:
                        entry["lr"] = float(lr)
                    if args.epochs:
                        entry["epochs"] = args.epochs
                    heads.append(entry)
    return heads


def _report(store, heads_folder: Path, test_csv: Path, rows: list[dict], anchors: dict) -> dict:
    """Print the validation table, the test split's scores and comparisons, the layer
    weights; the held-out results (``rows`` gain their test score)."""
    print(f"\n{'head':34s} {'val r':>7s} {'- ridge':>8s} {'best/run':>9s} {'seconds':>8s} "
          f"{'test r':>7s}")  # fmt: skip
    for choice in sorted(anchors, key=lambda c: (len(c), c)):
        print(f"{'ridge anchor, layer ' + choice:34s} {anchors[choice]:7.3f}")
    tested = held_out(store, heads_folder, test_csv, rows)
    for r in rows:
        r["test_pearson_mean"] = tested["scores"][r["head"]]
    for r in sorted(rows, key=lambda r: -r["val_pearson_mean"]):
        diff = r["val_pearson_mean"] - r["ridge_anchor"]
        run = f"{r['best_epoch']}/{r['epochs_run']}"
        print(f"{r['head']:34s} {r['val_pearson_mean']:7.3f} {diff:+8.3f} {run:>9s} "
              f"{r['seconds']:8.1f} {r['test_pearson_mean']:7.3f}")  # fmt: skip
    print(f"\non the test split ({tested['clips']} clips, voices unseen in training and "
          "validation), paired bootstrap, 95% intervals:")  # fmt: skip
    for line in tested["comparisons"]:
        print(f"  {line}")
    for r in rows:
        if r["layer_weights"]:
            shown = ", ".join(f"{k}: {w:.2f}" for k, w in r["layer_weights"].items())
            print(f"layer weights of {r['head']}: {shown}")
    return tested


def held_out(store: FeatureStore, folder: Path, test_csv: Path, rows: list[dict]) -> dict:
    """Every head's mean Pearson on the test split, and paired bootstrap differences
    (1000 resamples of the test clips) for the questions the benchmark asks: each
    weighted head against the single layer of the same preset and scaling that
    validated best; the default and the fusion head against ridge on the same features;
    emi's recipe against the paper's; compact against fusion. Heads are compared at the
    same ``--lrs``/``--epochs`` suffix (none: each preset's recipe)."""
    from models.evaluation import evaluate_heads

    by_name = {r["head"]: r for r in rows}
    result = evaluate_heads(
        store, [folder / n for n in by_name], test_csv, resamples=1000, seed=0, device="cpu"
    )
    scores = {h.head: h.score.value for h in result.heads}
    pairs = []
    for r in rows:
        if r["layer"] == "weighted":
            singles = [
                s for s in rows
                if s["preset"] == r["preset"] and s["standardize"] == r["standardize"]
                and s["layer"] != "weighted" and _suffix(s) == _suffix(r)
            ]  # fmt: skip
            if singles:
                best = max(singles, key=lambda s: s["val_pearson_mean"])
                pairs.append((r["head"], best["head"], "weighted vs the best single layer"))
    for name, other, why in (
        ("compact-last-stdon", "mean-linear-last-stdon", "compact (the default) vs ridge"),
        ("fusion-last-stdon", "mean-linear-last-stdon", "fusion vs ridge"),
        ("compact-last-stdon", "paper-last-stdoff", "the default vs the paper's recipe"),
        ("fusion-last-stdon", "paper-last-stdoff", "emi's recipe vs the paper's, one head"),
        ("compact-last-stdon", "fusion-last-stdon", "compact vs fusion"),
    ):
        for suffix in sorted({_suffix(r) for r in rows}):
            if name + suffix in by_name and other + suffix in by_name:
                pairs.append((name + suffix, other + suffix, why))
    differences = {(d["a"], d["b"]): d for d in result.differences}
    comparisons = []
    for a, b, why in pairs:
        d = differences.get((a, b))
        sign = 1
        if d is None:
            d, sign = differences[(b, a)], -1
        value, low, high = (sign * d["difference"][k] for k in ("value", "low", "high"))
        low, high = min(low, high), max(low, high)
        comparisons.append(
            f"{why}: {a} - {b} = {value:+.3f} [{low:+.3f}, {high:+.3f}]"
            f"{'' if low <= 0 <= high else ' (the interval excludes 0)'}"
        )
    return {"scores": scores, "comparisons": comparisons, "clips": result.clips}


def markdown(results: dict) -> str:
    """The Benchmarks page's tables from ``results.json``: by preset and scaling on the last
    hidden state, then by layer choice."""
    rows = {r["head"]: r for r in results["heads"]}
    anchors = results["anchors"]
    lines = [
        "| head (last hidden state) | recipe | val r | test r | best / run epochs | seconds |",
        "|---|---|---|---|---|---|",
        f"| ridge (scikit-learn, the anchor) | | {anchors['last']:.3f} | | | |",
    ]
    recipes = {"paper": "the paper's", "mean-linear": "closed form"}
    for preset in ("mean-linear", "compact", "fusion", "paper"):
        for scale in ("on", "off"):
            r = rows.get(f"{preset}-last-std{scale}")
            if r is None:
                continue
            recipe = recipes.get(preset, "emi's")
            if (preset == "paper") == (scale == "on") and preset != "mean-linear":
                recipe += f", standardize {scale}"
            lines.append(
                f"| `{preset}`, standardized {scale} | {recipe} | {r['val_pearson_mean']:.3f} | "
                f"{r['test_pearson_mean']:.3f} | {r['best_epoch']} / {r['epochs_run']} | "
                f"{r['seconds']:.0f} |"
            )
    choices = sorted({r["layer"] for r in rows.values()}, key=lambda c: (len(c), c))
    columns = [
        (preset, scale)
        for preset in ("mean-linear", "compact", "fusion", "paper")
        for scale in ("on", "off")
        if sum(f"{preset}-{c}-std{scale}" in rows for c in choices) >= 2
    ]
    lines += [
        "",
        "| layer | ridge anchor | " + " | ".join(f"`{p}` std {s}" for p, s in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for c in choices:
        cells = [
            f"{rows[n]['val_pearson_mean']:.3f}" if (n := f"{p}-{c}-std{s}") in rows else ""
            for p, s in columns
        ]
        lines.append(f"| {c} | {anchors[c]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain_name(row: dict) -> str:
    """A head's name at its preset's recipe (without a --lrs or --epochs suffix)."""
    return f"{row['preset']}-{row['layer']}-std{'on' if row['standardize'] else 'off'}"


def _suffix(row: dict) -> str:
    """A head's --lrs/--epochs suffix ("" at its preset's recipe)."""
    return row["head"][len(_plain_name(row)) :]


def names(heads: list[dict]) -> set[str]:
    return {h["name"] for h in heads}


def _layer(choice: str):
    return None if choice == "last" else choice if choice == "weighted" else int(choice)


if __name__ == "__main__":
    main()
