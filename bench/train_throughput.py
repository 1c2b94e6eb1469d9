"""Training throughput, measured side by side in one run.

Over one store of synthetic features (``--hidden`` wide, ``--clips`` clips of 3-8 s):

- ``in-memory limit``: the same head, recipe and batches on tensors already in memory
  (no store, no collation from float16): the limit for data loading;
- ``emi, cached``: ``models.training.train_heads`` reading the Zarr store (once, then
  from its in-memory cache), writing the head folder (weights, metrics, PNG) as it does;
- ``emi, streamed``: the same with a memory budget of a third of the data, so every
  epoch re-reads the store part by part;
- ``K heads, one load``: one ``emi train --grid`` run of K heads;
- ``K separate runs``: K ``emi train`` processes, one head each.

Usage::

    python bench/train_throughput.py --clips 240 --epochs 4 --heads 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featurestore.backbone import identify_backbone  # noqa: E402
from featurestore.encode import ClipFeatures  # noqa: E402
from featurestore.location import StoreLocation  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from featurestore.spec import build_spec  # noqa: E402
from featurestore.store import FeatureStore, StoredClip, StoreWriter  # noqa: E402
from featurestore.store.imported import commit_features  # noqa: E402
from manifests import read_labels  # noqa: E402
from models.heads import build_head, preset_config  # noqa: E402
from models.training import (  # noqa: E402
    HeadPlan,
    TrainSettings,
    flush_denormals,
    train_heads,
    warmup_cosine,
)

TARGETS = ["Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy"]


def make_store(work: Path, size: str, clips: int, seed: int = 0) -> tuple[Path, Path, Path]:
    backbone = write_random_backbone(work / "backbone", size=size, seed=seed)
    spec = build_spec(identify_backbone(str(backbone)), max_seconds=None, window_seconds=30.0)
    writer = StoreWriter.open(StoreLocation.of(work / "feats.zarr"), spec, lock=None)
    dim, rng = spec["hidden_size"], np.random.default_rng(seed)
    rows, stored, features = [], [], []
    for i in range(clips):
        frames = int(rng.integers(150, 400))
        hidden = rng.normal(size=(frames, dim)).astype(np.float32)
        vad = rng.normal(size=(frames, 3)).astype(np.float32)
        clip_id = f"{i:05d}"
        stored.append(StoredClip(clip_id, f"/synthetic/{clip_id}.wav", "0" * 64, frames / 50))
        features.append(
            ClipFeatures(
                hidden.astype(np.float16), vad, hidden.mean(0), vad.mean(0), np.zeros(3, np.float32)
            )
        )
        rows.append([clip_id, *rng.uniform(0, 1, 6).round(4)])
        if len(stored) == 50 or i == clips - 1:
            commit_features(writer, stored, features)
            stored, features = [], []
    split = int(0.8 * clips)
    files = []
    for name, chunk in (("train", rows[:split]), ("valid", rows[split:])):
        path = work / f"{name}_split.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Filename", *TARGETS])
            writer.writerows(chunk)
        files.append(path)
    return work / "feats.zarr", files[0], files[1]


def train_in_memory(
    store_path: Path, train_csv: Path, val_csv: Path, settings: TrainSettings, preset: str
) -> float:
    """The limit: the recipe on float32 tensors preloaded before the clock starts."""
    settings = settings.for_preset(preset)  # the preset's batch size and the like
    store = FeatureStore.open(store_path)
    train, val = read_labels(train_csv), read_labels(val_csv)

    def load(table):
        seqs = [
            torch.from_numpy(
                np.concatenate([store.hidden(c).astype(np.float32), store.frame_vad(c)], axis=1)
            )
            for c in table.rows
        ]
        means = torch.stack([s.mean(0) for s in seqs])
        return seqs, means, torch.tensor(list(table.rows.values()), dtype=torch.float32)

    (tr_seqs, tr_means, tr_y), (va_seqs, va_means, _) = load(train), load(val)
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_head(preset_config(preset, input_dim=store.hidden_size + 3, num_targets=6))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    steps = math.ceil(len(tr_seqs) / settings.batch_size)
    scheduler = warmup_cosine(optimiser, steps, steps * settings.epochs)

    def batch(seqs, idx):
        lengths = torch.tensor([len(seqs[i]) for i in idx])
        padded = torch.nn.utils.rnn.pad_sequence([seqs[i] for i in idx], batch_first=True)
        return padded, lengths

    flush_denormals(  # as the trainer does (see models.training.flush_denormals)
        _epochs, model, optimiser, scheduler, settings, rng, tr_seqs, tr_means, tr_y,
        va_seqs, va_means, batch,
    )  # fmt: skip
    return time.perf_counter() - start


def _epochs(model, optimiser, scheduler, settings, rng, tr_seqs, tr_means, tr_y, va_seqs,
            va_means, batch) -> None:  # fmt: skip
    for _ in range(settings.epochs):
        model.train()
        order = rng.permutation(len(tr_seqs))
        for k in range(0, len(order), settings.batch_size):
            idx = order[k : k + settings.batch_size]
            frames, lengths = batch(tr_seqs, idx)
            loss = torch.nn.functional.mse_loss(model(frames, lengths, tr_means[idx]), tr_y[idx])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), settings.clip_value)
            optimiser.step()
            scheduler.step()
        model.eval()
        with torch.inference_mode():
            for k in range(0, len(va_seqs), 64):
                idx = list(range(k, min(k + 64, len(va_seqs))))
                frames, lengths = batch(va_seqs, idx)
                model(frames, lengths, va_means[idx])


def train_emi(store_path, train_csv, val_csv, settings, preset, out, *, budget=None, heads=1):
    plans = [HeadPlan(name=f"h{k}", preset=preset, settings=settings) for k in range(heads)]
    kwargs = {} if budget is None else {"budget_bytes": budget}
    start = time.perf_counter()
    train_heads(
        FeatureStore.open(store_path),
        read_labels(train_csv),
        read_labels(val_csv),
        plans,
        out,
        device="cpu",
        **kwargs,
    )
    return time.perf_counter() - start


def run_cli(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="random backbone size (store width)")
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--heads", type=int, default=3, help="K for the many-heads case")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emi-train-bench-"))
    try:
        store, train_csv, val_csv = make_store(work, args.size, args.clips)
        opened = FeatureStore.open(store)
        frames = sum(opened.clip_info(c)["frames"] for c in opened.clip_ids)
        data_bytes = frames * (opened.hidden_size + 3) * 2
        settings = TrainSettings(epochs=args.epochs, lr=1e-3)
        import models.plots  # noqa: F401  (a one-time import, like torch's: not training)

        print(
            f"store: {args.clips} clips, {frames} frames x {opened.hidden_size + 3}, "
            f"{data_bytes / 2**20:.0f} MiB as float16; preset {args.preset}, "
            f"{args.epochs} epochs, torch threads {torch.get_num_threads()}"
        )
        results = {
            "in_memory_s": train_in_memory(store, train_csv, val_csv, settings, args.preset),
            "emi_cached_s": train_emi(
                store, train_csv, val_csv, settings, args.preset, work / "cached", heads=1
            ),
            "emi_streamed_s": train_emi(
                store,
                train_csv,
                val_csv,
                settings,
                args.preset,
                work / "streamed",
                budget=data_bytes // 3,
                heads=1,
            ),  # fmt: skip
            **_many_heads(work, store, train_csv, val_csv, args),
        }
        _report(results, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _many_heads(work: Path, store, train_csv, val_csv, args) -> dict:
    """K heads as one grid run against K separate runs and one run of one head (CLI
    processes, start-up included); seconds of each."""
    grid = work / "grid.json"
    grid.write_text(json.dumps({"grid": {"seed": list(range(1, args.heads + 1))},
                                "defaults": {"preset": args.preset}}))  # fmt: skip
    common = ["--labels", str(train_csv), "--val-labels", str(val_csv), "--epochs",
              str(args.epochs), "--lr", "1e-3", "--device", "cpu", "--quiet"]  # fmt: skip
    return {
        "k_heads_one_run_s": run_cli(
            ["train", str(store), *common, "--out", str(work / "grid"), "--grid", str(grid)]
        ),
        "k_separate_runs_s": sum(
            run_cli(
                [
                    "train",
                    str(store),
                    *common,
                    "--out",
                    str(work / f"single{k}"),
                    "--seed",
                    str(k + 1),
                    "--preset",
                    args.preset,
                ]
            )  # fmt: skip
            for k in range(args.heads)
        ),
        "one_head_cli_s": run_cli(
            ["train", str(store), *common, "--out", str(work / "one"), "--preset", args.preset]
        ),
    }


def _report(r: dict, args) -> None:
    print(f"\none head, {args.epochs} epochs (lower is better)")
    print(f"  in-memory tensors (limit)        {r['in_memory_s']:7.1f} s")
    print(
        f"  emi, store -> cache              {r['emi_cached_s']:7.1f} s  "
        f"({100 * (r['emi_cached_s'] / r['in_memory_s'] - 1):+.1f}% vs limit)"
    )
    print(
        f"  emi, streamed (budget 1/3 data)  {r['emi_streamed_s']:7.1f} s  "
        f"({100 * (r['emi_streamed_s'] / r['in_memory_s'] - 1):+.1f}% vs limit)"
    )
    k = args.heads
    print(f"\n{k} heads (CLI processes, start-up included)")
    print(f"  one run, {k} heads, one load     {r['k_heads_one_run_s']:7.1f} s")
    print(f"  {k} separate runs               {r['k_separate_runs_s']:7.1f} s")
    print(f"  one run of one head              {r['one_head_cli_s']:7.1f} s")
    one_run, separate = r["k_heads_one_run_s"], r["k_separate_runs_s"]
    print(f"  {k} heads in one run / one head  {one_run / r['one_head_cli_s']:7.2f} x")
    print(f"  separate / one run               {separate / one_run:7.2f} x")


if __name__ == "__main__":
    main()
