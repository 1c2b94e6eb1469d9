"""Extraction throughput and memory, measured side by side in one run.

For each random backbone size, over the same few minutes of variable-length 16 kHz
audio (lengths drawn like the EMI data: median about 6 s, 1 to 15 s):

- ``pure forward``: the backbone over preloaded, pre-normalised tensors, one clip at a
  time, nothing else (the limit);
- ``naive loop``: per file read, normalise with the transformers processor, plain
  ``Wav2Vec2Model`` forward plus the head, ``np.save`` (how per-file scripts work);
- ``emi extract (library)``: manifest build plus ``featurestore.extraction.extract`` on a
  real dask ``LocalCluster``, writing the Zarr store;
- ``emi extract (CLI)``: the same as a fresh ``emi extract`` process, start-up included.

Then peak memory (max RSS of a fresh ``emi extract`` process) for one long clip with
windowing, against a clip 10x shorter, to show memory does not grow with clip length.

Usage::

    python bench/extract_throughput.py --minutes 3 --sizes small,base --repeats 2
    python bench/extract_throughput.py --memory-only --long-minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featurestore.audio import normalise  # noqa: E402
from featurestore.backbone import load_backbone  # noqa: E402
from featurestore.extraction import ExtractOptions, extract  # noqa: E402
from featurestore.random_backbone import write_random_backbone  # noqa: E402
from manifests import build_manifest  # noqa: E402
from tests.synth import voiced  # noqa: E402


def make_corpus(folder: Path, minutes: float, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, total, i = [], 0.0, 0
    while total < minutes * 60:
        seconds = float(np.clip(rng.lognormal(np.log(6.0), 0.5), 1.0, 15.0))
        path = folder / f"{i:05d}.wav"
        sf.write(str(path), voiced(seconds, seed=i, f0_hz=100 + i % 80), 16_000, subtype="PCM_16")
        paths.append(path)
        total += seconds
        i += 1
    return paths


def time_pure_forward(checkpoint: Path, paths: list[Path]) -> float:
    model = load_backbone(str(checkpoint)).model
    tensors = [
        torch.from_numpy(normalise(sf.read(str(p), dtype="float32")[0]))[None] for p in paths
    ]
    with torch.inference_mode():
        model(tensors[0])  # warm-up
        start = time.perf_counter()
        for x in tensors:
            model(x)
    return time.perf_counter() - start


def time_naive_loop(checkpoint: Path, paths: list[Path], out: Path) -> float:
    from safetensors.torch import load_file
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    start = time.perf_counter()
    encoder = Wav2Vec2Model.from_pretrained(str(checkpoint)).eval()
    state = load_file(str(checkpoint / "model.safetensors"))
    dense_w, dense_b = state["classifier.dense.weight"], state["classifier.dense.bias"]
    out_w, out_b = state["classifier.out_proj.weight"], state["classifier.out_proj.bias"]
    processor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in paths:
            audio, rate = sf.read(str(path), dtype="float32")
            values = processor(audio, sampling_rate=rate, return_tensors="pt").input_values
            hidden = encoder(values).last_hidden_state[0]
            vad = torch.tanh(hidden @ dense_w.T + dense_b) @ out_w.T + out_b
            np.save(out / f"{path.stem}.npy", torch.cat([hidden, vad], 1).numpy())
    return time.perf_counter() - start


def time_emi_library(checkpoint: Path, folder: Path, store: Path) -> float:
    start = time.perf_counter()
    records = build_manifest(folder)
    summary = extract(records, str(store), ExtractOptions(model=str(checkpoint), quiet=True))
    elapsed = time.perf_counter() - start
    assert not summary.failed and summary.extracted == len(records), summary
    return elapsed


def run_emi_cli(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a fresh ``emi`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise RuntimeError("peak RSS not measurable: run each memory case in its own bench run")
    return elapsed, peak / 1024


def throughput(sizes: list[str], minutes: float, work: Path, repeats: int) -> list[dict]:
    paths = make_corpus(work / "corpus", minutes)
    audio_s = sum(sf.info(str(p)).duration for p in paths)
    print(
        f"corpus: {len(paths)} clips, {audio_s / 60:.1f} min of audio; "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus; "
        f"best of {repeats} interleaved runs"
    )
    rows = []
    for size in sizes:
        ckpt = write_random_backbone(work / f"ckpt-{size}", size=size, seed=0)
        times: dict[str, list[float]] = {k: [] for k in ("pure", "naive", "library", "cli")}
        for rep in range(repeats):
            times["pure"].append(time_pure_forward(ckpt, paths))
            times["naive"].append(time_naive_loop(ckpt, paths, work / f"naive-{size}-{rep}"))
            times["library"].append(
                time_emi_library(ckpt, work / "corpus", work / f"lib-{size}-{rep}.zarr")
            )
            times["cli"].append(
                run_emi_cli(
                    [
                        "extract",
                        str(work / "corpus"),
                        str(work / f"cli-{size}-{rep}.zarr"),
                        "--model",
                        str(ckpt),
                        "--quiet",
                    ]
                )[0]
            )
        best = {k: min(v) for k, v in times.items()}
        row = {
            "size": size,
            "audio_s": audio_s,
            "runs": times,
            **{f"{k}_best_s": v for k, v in best.items()},
        }
        rows.append(row)
        print(f"\n[{size}] audio seconds per wall second (higher is better)")
        for name, key in (
            ("pure forward (limit)", "pure"),
            ("naive per-file loop", "naive"),
            ("emi extract (library)", "library"),
            ("emi extract (CLI, start-up incl.)", "cli"),
        ):
            print(f"  {name:36s} {audio_s / best[key]:8.1f} x real time  ({best[key]:.1f} s)")
        print(
            f"  emi library / pure forward time   {best['library'] / best['pure']:.3f}  "
            f"(overhead {100 * (best['library'] / best['pure'] - 1):+.1f}%)"
        )
        print(f"  emi library / naive loop time     {best['library'] / best['naive']:.3f}")
        print(f"  emi CLI / pure forward time       {best['cli'] / best['pure']:.3f}")
    return rows


def memory(long_minutes: float, work: Path, size: str) -> dict:
    ckpt = write_random_backbone(work / f"ckpt-{size}", size=size, seed=0)
    result = {}
    for label, minutes in (("short", long_minutes / 10), ("long", long_minutes)):
        folder = work / f"mem-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / "clip.flac"), voiced(minutes * 60, seed=3), 16_000)
        # A fresh interpreter per case: ru_maxrss of children is a high-water mark.
        code = (
            "import resource, subprocess, sys; "
            f"subprocess.run([sys.executable, '-m', 'cli.main', 'extract', {str(folder)!r}, "
            f"{str(work / f'mem-{label}.zarr')!r}, '--model', {str(ckpt)!r}, '--quiet'], "
            "check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        result[label] = {
            "minutes": minutes,
            "peak_rss_mib": int(out.stdout.strip()) / 1024,
            "wall_s": time.perf_counter() - start,
        }
    print(f"\npeak memory, {size} backbone, 30 s windows (max RSS of the emi process):")
    for r in result.values():
        print(
            f"  {r['minutes']:5.1f} min clip: {r['peak_rss_mib']:7.0f} MiB  ({r['wall_s']:.0f} s)"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="audio in the corpus")
    parser.add_argument("--sizes", default="small,base", help="random backbone sizes")
    parser.add_argument("--long-minutes", type=float, default=20.0, help="memory case length")
    parser.add_argument("--memory-size", default="small", help="backbone for the memory case")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs; best kept")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="emi-bench-"))
    try:
        results = {}
        if not args.memory_only:
            results["throughput"] = throughput(
                args.sizes.split(","), args.minutes, work, args.repeats
            )
        if not args.skip_memory:
            results["memory"] = memory(args.long_minutes, work, args.memory_size)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
