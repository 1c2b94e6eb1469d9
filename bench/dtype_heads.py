"""Heads trained on float32 features, predicting from features of another compute dtype.

A store's fingerprint holds its compute dtype, so ``emi predict`` refuses a head of
float32 features on a bfloat16 store. This measures what that refusal protects: the
demo's audio is extracted again with ``--dtype`` (default bfloat16) by the same
backbone, and every head of the demo predicts the test split from both stores through
the Python API (the store's sequences handed to the head directly). Printed per head:
the mean Pearson r over the targets from float32 and from the other dtype, its change,
and the largest change of a prediction.

Usage::

    ./run demo --out /tmp/demo             # or an earlier demo folder
    python bench/dtype_heads.py /tmp/demo --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurestore.extraction import ExtractOptions, extract  # noqa: E402
from featurestore.store import FeatureStore  # noqa: E402
from manifests import build_manifest  # noqa: E402
from manifests.labels import read_labels  # noqa: E402
from models.metrics import pearson  # noqa: E402
from models.prediction import load_heads  # noqa: E402
from models.sequences import load_sequences  # noqa: E402
from models.training import flush_denormals, predict_batches  # noqa: E402


def head_predictions(head, store: FeatureStore, clip_ids: list[str]) -> np.ndarray:
    """``(clips, targets)`` predictions of ``head`` from ``store``'s only feature set,
    whatever its fingerprint, clamped to [0, 1] as ``emi predict`` does."""
    data = load_sequences(
        [store], clip_ids, crops=[head.max_frames], layers=tuple(head.model.config.layers)
    )
    raw = flush_denormals(
        predict_batches, head.model, data, clip_ids, device="cpu", max_frames=head.max_frames
    )
    return np.clip(np.stack([raw[c] for c in clip_ids]), 0.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="a folder `emi demo` wrote")
    parser.add_argument("--dtype", default="bfloat16", help="the other compute dtype")
    parser.add_argument("--split", default="test", help="the label split to score")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    base = FeatureStore.open(args.demo / "feats.zarr")
    labels = read_labels(args.demo / f"{args.split}_split.csv")
    ids = sorted(labels.rows)
    heads = load_heads(sorted(p for p in (args.demo / "heads").iterdir() if p.is_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        other_path = Path(tmp) / f"{args.dtype}.zarr"
        start = time.perf_counter()
        options = ExtractOptions.of(
            model=base.spec.backbone.ref, compute_dtype=args.dtype, device="cpu", quiet=True
        )
        summary = extract(build_manifest(args.demo / "audio"), str(other_path), options)
        seconds = time.perf_counter() - start
        other = FeatureStore.open(other_path)
        print(
            f"{summary.extracted} clips extracted again in {args.dtype} ({seconds:.0f} s); "
            f"{len(ids)} {args.split} clips scored"
        )
        results = []
        print(f"{'head':16s} {'r float32':>10s} {'r ' + args.dtype:>12s} {'change':>8s} "
              f"{'max |pred change|':>18s}")  # fmt: skip
        for head in heads:
            true = np.array([[labels.rows[c][labels.targets.index(t)] for t in head.targets]
                             for c in ids])  # fmt: skip
            a = head_predictions(head, base, ids)
            b = head_predictions(head, other, ids)
            ra, rb = float(np.nanmean(pearson(a, true))), float(np.nanmean(pearson(b, true)))
            worst = float(np.abs(a - b).max())
            print(f"{head.name:16s} {ra:10.4f} {rb:12.4f} {rb - ra:+8.4f} {worst:18.4f}")
            results.append(
                {
                    "head": head.name,
                    "pearson_float32": ra,
                    f"pearson_{args.dtype}": rb,
                    "max_prediction_change": worst,
                }
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
