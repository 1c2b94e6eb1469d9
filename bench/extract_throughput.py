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

Each of the last three for every ``--dtypes`` entry (default float32 and bfloat16), and
for a reduced dtype the pure forward twice: under autocast (what emi runs: matrix
products in the dtype, norms and softmax in float32) and with the weights cast (every op
in the dtype); then the speed-up of each dtype over float32. emi's rows also print the
share of the frames the backbone ran that were padding (0 unbatched, as on a CPU).

Then peak memory (max RSS of a fresh ``emi extract`` process) for one long clip with
windowing, against a clip 10x shorter, to show memory does not grow with clip length.

On a GPU (``--device cuda``) the pure forward runs the same padded batches emi plans
(``--batch-seconds``, several values compared in one run) under each dtype,
with the device synchronised before the clock stops, and the GPU's peak memory is
reported per case.

Usage::

    python bench/extract_throughput.py --minutes 3 --sizes small,base --repeats 2
    python bench/extract_throughput.py --dtypes float32 --sizes small --skip-memory
    python bench/extract_throughput.py --memory-only --long-minutes 20
    python bench/extract_throughput.py --device cuda --sizes large-robust-12 \
        --dtypes float32,bfloat16,float16 --batch-seconds 30,120,480 --minutes 30 --skip-memory
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
from dataclasses import dataclass
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


def time_pure_forward(
    checkpoint: Path,
    paths: list[Path],
    device: str,
    dtype: str,
    batch_seconds: float,
    *,
    cast_weights: bool = False,
) -> float:
    """The backbone alone over preloaded, normalised audio already on the device, in the
    padded batches emi would plan (one clip per forward when ``batch_seconds`` is 0),
    under ``dtype`` autocast, or (``cast_weights``) with weights and inputs in ``dtype``
    (every op in that dtype, layer norms and softmax included)."""
    from featurestore.encode import plan_batches, plan_segments
    from featurestore.part_task import COMPUTE_DTYPES

    model = load_backbone(str(checkpoint), device=device).model
    if cast_weights:
        model = model.to(COMPUTE_DTYPES[dtype])
    audio = [normalise(sf.read(str(p), dtype="float32")[0]) for p in paths]
    segments = [s for i, a in enumerate(audio) for s in plan_segments(i, len(a), window_seconds=30)]
    batches = []
    for batch in plan_batches(
        segments, batch_seconds=batch_seconds, allow_padding=model.uses_layer_norm
    ):
        longest = max(s.samples for s in batch)
        values = torch.zeros((len(batch), longest))
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, seg in enumerate(batch):
            values[row, : seg.samples] = torch.from_numpy(
                audio[seg.clip][seg.sample_start : seg.sample_end]
            )
            mask[row, : seg.samples] = 1
        padded = any(s.samples != longest for s in batch)
        if cast_weights:
            values = values.to(COMPUTE_DTYPES[dtype])
        batches.append((values.to(device), mask.to(device) if padded else None))
    autocast = torch.autocast(
        device_type=torch.device(device).type,
        dtype=COMPUTE_DTYPES[dtype],
        enabled=dtype != "float32" and not cast_weights,
    )
    with torch.inference_mode(), autocast:
        model(*batches[0])  # warm-up
        _synchronise(device)
        start = time.perf_counter()
        for values, mask in batches:
            model(values, attention_mask=mask)
        _synchronise(device)
    return time.perf_counter() - start


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gpu_peak_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return peak


def time_naive_loop(checkpoint: Path, paths: list[Path], out: Path, device: str) -> float:
    from safetensors.torch import load_file
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    start = time.perf_counter()
    encoder = Wav2Vec2Model.from_pretrained(str(checkpoint)).eval().to(device)
    state = {k: v.to(device) for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    dense_w, dense_b = state["classifier.dense.weight"], state["classifier.dense.bias"]
    out_w, out_b = state["classifier.out_proj.weight"], state["classifier.out_proj.bias"]
    processor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in paths:
            audio, rate = sf.read(str(path), dtype="float32")
            values = processor(audio, sampling_rate=rate, return_tensors="pt").input_values
            hidden = encoder(values.to(device)).last_hidden_state[0]
            vad = torch.tanh(hidden @ dense_w.T + dense_b) @ out_w.T + out_b
            np.save(out / f"{path.stem}.npy", torch.cat([hidden, vad], 1).cpu().numpy())
    return time.perf_counter() - start


def time_emi_library(
    checkpoint: Path, folder: Path, store: Path, device: str, dtype: str, batch_seconds: float
) -> tuple[float, float]:
    """Wall seconds of ``extract`` (manifest included), and the share of the frames the
    backbone ran that were padding."""
    start = time.perf_counter()
    records = build_manifest(folder)
    options = ExtractOptions.of(
        model=str(checkpoint),
        device=device,
        compute_dtype=dtype,
        batch_seconds=batch_seconds,
        quiet=True,
    )
    summary = extract(records, str(store), options)
    elapsed = time.perf_counter() - start
    assert not summary.failed and summary.extracted == len(records), summary
    return elapsed, 1 - summary.frames / summary.frames_computed


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


def throughput(
    sizes: list[str],
    minutes: float,
    work: Path,
    repeats: int,
    *,
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32",),
    batch_list: tuple[float, ...] = (0.0,),
) -> list[dict]:
    paths = make_corpus(work / "corpus", minutes)
    audio_s = sum(sf.info(str(p)).duration for p in paths)
    print(
        f"corpus: {len(paths)} clips, {audio_s / 60:.1f} min of audio; device {device}, "
        f"dtypes {', '.join(dtypes)}; torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cpus; best of {repeats} interleaved runs"
    )
    if device == "cpu":
        from featurestore.cpu_dtype import native_bfloat16

        print(f"native bfloat16 on this CPU: {native_bfloat16() or 'none'}")
    rows = []
    for size in sizes:
        ckpt = write_random_backbone(work / f"ckpt-{size}", size=size, seed=0)
        for batch_seconds in batch_list:
            case = Case(ckpt, size, paths, audio_s, work, device, batch_seconds)
            rows.append(case.run(dtypes, repeats))
    return rows


@dataclass
class Case:
    """One backbone size and batch setting: every dtype's cases, interleaved."""

    ckpt: Path
    size: str
    paths: list[Path]
    audio_s: float
    work: Path
    device: str
    batch_seconds: float

    def run(self, dtypes: tuple[str, ...], repeats: int) -> dict:
        times: dict[str, list[float]] = {}
        gpu: dict[str, float | None] = {}
        padding: dict[str, float] = {}
        for rep in range(repeats):
            for key, seconds, extra in self._rep(dtypes, rep):
                times.setdefault(key, []).append(seconds)
                gpu[key] = _gpu_peak_mib(self.device)
                if extra is not None:
                    padding[key] = extra
        best = {k: min(v) for k, v in times.items()}
        self._print(dtypes, best, gpu, padding)
        return {
            "size": self.size,
            "dtypes": list(dtypes),
            "batch_seconds": self.batch_seconds,
            "device": self.device,
            "audio_s": self.audio_s,
            "runs": times,
            "gpu_peak_mib": gpu,
            "padded_frame_fraction": padding,
            **{f"{k}_best_s": v for k, v in best.items()},
        }

    def _rep(self, dtypes, rep):
        """One interleaved round of every case: ``(key, seconds, padding or None)``."""
        ckpt, paths, device, batch = self.ckpt, self.paths, self.device, self.batch_seconds
        tag = f"{self.size}-{batch:g}-{rep}"
        yield "naive", time_naive_loop(ckpt, paths, self.work / f"naive-{tag}", device), None
        for dtype in dtypes:
            yield f"pure {dtype}", time_pure_forward(ckpt, paths, device, dtype, batch), None
            if dtype != "float32":
                cast = time_pure_forward(ckpt, paths, device, dtype, batch, cast_weights=True)
                yield f"pure {dtype} weights", cast, None
            store = self.work / f"lib-{tag}-{dtype}.zarr"
            seconds, padded = time_emi_library(
                ckpt, self.work / "corpus", store, device, dtype, batch
            )
            yield f"library {dtype}", seconds, padded
            cli = ["extract", str(self.work / "corpus"), str(self.work / f"cli-{tag}-{dtype}.zarr")]
            cli += ["--model", str(ckpt), "--device", device, "--dtype", dtype, "--quiet"]
            cli += ["--batch-seconds", str(batch)]
            yield f"cli {dtype}", run_emi_cli(cli)[0], None

    def _print(self, dtypes, best, gpu, padding) -> None:
        print(f"\n[{self.size}, batch {self.batch_seconds:g} s] audio seconds per wall second")
        names = [("naive per-file loop (float32)", "naive")]
        for dtype in dtypes:
            names.append((f"pure forward, {dtype} autocast", f"pure {dtype}"))
            if dtype != "float32":
                names.append((f"pure forward, {dtype} weights", f"pure {dtype} weights"))
            names.append((f"emi extract (library), {dtype}", f"library {dtype}"))
            names.append((f"emi extract (CLI, start-up incl.), {dtype}", f"cli {dtype}"))
        for name, key in names:
            memory = f", GPU peak {gpu[key]:.0f} MiB" if gpu.get(key) is not None else ""
            pad = f", padding {100 * padding[key]:.1f}% of frames" if key in padding else ""
            speed = self.audio_s / best[key]
            print(f"  {name:44s} {speed:8.1f} x real time  ({best[key]:.1f} s{memory}{pad})")
        for dtype in dtypes:
            lib, pure = best[f"library {dtype}"], best[f"pure {dtype}"]
            print(f"  {dtype}: emi library / pure forward time  {lib / pure:.3f}")
            print(f"  {dtype}: emi library / naive loop time    {lib / best['naive']:.3f}")
        base = "float32"
        for dtype in dtypes:
            if dtype != base and base in dtypes:
                print(
                    f"  speed-up of {dtype} over float32: emi "
                    f"{best[f'library {base}'] / best[f'library {dtype}']:.2f}x, pure forward "
                    f"{best[f'pure {base}'] / best[f'pure {dtype}']:.2f}x (autocast), "
                    f"{best[f'pure {base}'] / best[f'pure {dtype} weights']:.2f}x (weights)"
                )


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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtypes",
        "--dtype",
        default="float32,bfloat16",
        help="comma-separated compute dtypes compared side by side (float32 first)",
    )
    parser.add_argument(
        "--batch-seconds", default="0", help="comma-separated padded seconds per forward"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="emi-bench-"))
    try:
        results = {}
        if not args.memory_only:
            results["throughput"] = throughput(
                args.sizes.split(","),
                args.minutes,
                work,
                args.repeats,
                device=args.device,
                dtypes=tuple(args.dtypes.split(",")),
                batch_list=tuple(float(b) for b in args.batch_seconds.split(",")),
            )
        if not args.skip_memory:
            results["memory"] = memory(args.long_minutes, work, args.memory_size)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
