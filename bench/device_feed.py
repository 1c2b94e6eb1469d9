"""Is the device fed? The extractor's CPU side against a stand-in device, no GPU needed.

The backbone's device step is replaced by a stand-in that, like a GPU, returns
real-shaped features (1024-d float16 frames of the ``large-robust-12`` shape, its VAD
outputs and per-segment sums) ``audio_s / R`` seconds after its work could start: work
queues behind earlier work as on a CUDA stream, and waiting for it sleeps with the GIL
released. What remains is the CPU side of a part task, exactly as a dask worker runs it:
decode, mix down, resample, normalise, batch (the padded host batch is still built),
assemble clips, digest, compress and write the Zarr part.

Reported, for each tree (this one, and with ``--baseline REV`` an earlier commit of the
project run the same way in the same run) and each core count:

- the CPU-side ceiling: throughput with R = infinity (audio seconds per second);
- for R = 0.5x, 0.7x and 1x of that ceiling: throughput and the fraction of wall time
  the stand-in device was busy.

The corpus is like the challenge audio: 44.1 kHz stereo 16-bit WAV clips of 4-11 s.
Each measurement is a fresh process pinned to its cores (``sched_setaffinity``).

For a tree without the device step (``BatchEncoder``), the stand-in replaces the
backbone's forward instead, and that tree's own code does the float16 cast, the means
and the finiteness check on the CPU, as it did.

Usage::

    python bench/device_feed.py --minutes 30 --cores 1,2 --baseline 56fd827
    python bench/device_feed.py --memory --clips 100 --clip-minutes 10
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 1024  # the large-robust-12 shape
POOL_FRAMES = 40_000  # 13 min of frames, handed out in turn: no chunk repeats data
RATIOS = (0.5, 0.7, 1.0)


# -- the corpus ---------------------------------------------------------------------------


def make_corpus(
    folder: Path,
    minutes: float,
    *,
    rate: int,
    channels: int,
    seed: int = 0,
    lengths: tuple[float, float] = (4.0, 11.0),
) -> float:
    """Write clips of ``lengths`` seconds until ``minutes`` of audio; returns seconds."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total, index = 0.0, 0
    while total < minutes * 60:
        seconds = float(rng.uniform(*lengths))
        n = int(seconds * rate)
        t = np.arange(n) / rate
        tone = 0.3 * np.sin(2 * np.pi * (110 + index % 90) * t * (1 + 0.05 * np.sin(t)))
        noise = 0.05 * rng.standard_normal((n, channels))
        audio = (tone[:, None] + noise).astype(np.float32)
        sf.write(str(folder / f"clip{index:05d}.wav"), audio, rate, subtype="PCM_16")
        total += n / rate
        index += 1
    return total


# -- one measurement, in a pinned process --------------------------------------------------


class Busy:
    """The stand-in device's clock: work queues behind earlier work, as on a GPU stream.

    ``start`` queues ``audio_s / rate`` seconds of work and returns when it will be done;
    ``wait`` sleeps until then (releasing the GIL, as a CUDA synchronize does). The
    device's busy time is the sum of its work.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.free_at = 0.0
        self.lock = threading.Lock()

    def start(self, audio_s: float, rate: float) -> float:
        if rate == float("inf"):
            return 0.0
        with self.lock:
            self.free_at = max(time.perf_counter(), self.free_at) + audio_s / rate
            self.seconds += audio_s / rate
            return self.free_at

    def wait(self, until: float) -> None:
        left = until - time.perf_counter()
        if left > 0:
            time.sleep(left)

    def run(self, audio_s: float, rate: float) -> None:
        """Synchronous work: start and wait."""
        self.wait(self.start(audio_s, rate))


def stand_in_identity():
    from transformers import Wav2Vec2Config

    from featurestore.backbone import BackboneIdentity

    config = Wav2Vec2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=12,
        num_attention_heads=16,
        intermediate_size=4096,
        num_labels=3,
        feat_extract_norm="layer",
    )
    return BackboneIdentity(
        ref="stand-in",
        revision=None,
        weights_sha256="stand-in",
        config_sha256="stand-in",
        config=config,
    )


class Pool:
    """Distinct frames for each call, handed out in turn from a random pool (features
    that repeat within a chunk would compress unrealistically fast)."""

    def __init__(self, values) -> None:
        self.values, self.cursor = values, 0

    def take(self, frames: int) -> int:
        if self.cursor + frames > len(self.values):
            self.cursor = 0
        start, self.cursor = self.cursor, self.cursor + frames
        return start


def pipelined_encoder(identity, busy: Busy, rate: float):
    """A stand-in for ``featurestore.encode.BatchEncoder``: what a GPU sends back."""
    import numpy as np

    from featurestore.encode import SegmentOutput

    rng = np.random.default_rng(1)
    hidden = Pool(rng.standard_normal((POOL_FRAMES, HIDDEN)).astype(np.float16))
    vad = rng.standard_normal((POOL_FRAMES, 3)).astype(np.float32)
    sums = rng.standard_normal(HIDDEN).astype(np.float32)

    class StandInDevice:
        allow_padding = True

        def __init__(self) -> None:
            self.identity = identity

        def launch(self, rows, frames):
            longest = max(len(r) for r in rows)
            staging = np.empty((len(rows), longest), np.float32)  # the host batch
            for index, row in enumerate(rows):
                staging[index, : len(row)] = row
                staging[index, len(row) :] = 0.0
            return busy.start(sum(len(r) for r in rows) / 16_000, rate), frames

        def collect(self, launched):
            until, frames = launched
            busy.wait(until)
            outputs = []
            for n in frames:
                start = hidden.take(n)
                outputs.append(
                    SegmentOutput(
                        hidden.values[start : start + n],
                        vad[start : start + n],
                        sums * n,
                        vad[start] * n,
                        True,
                    )
                )
            return outputs

        def clip_vad(self, means):
            return np.zeros((len(means), 3), np.float32)

    return StandInDevice()


def patch_baseline_forward(part_task, identity, busy: Busy, rate: float) -> None:
    """For a tree without a device step: the stand-in replaces the backbone's forward."""
    import torch

    from featurestore.backbone import LoadedBackbone

    generator = torch.Generator().manual_seed(1)
    hidden = Pool(torch.randn((POOL_FRAMES, HIDDEN), generator=generator))
    vad_pool = torch.randn((POOL_FRAMES, 3), generator=generator)

    class StandInForward:
        uses_layer_norm = True
        classifier = torch.nn.Linear(HIDDEN, 3)

        def __call__(self, inputs, attention_mask=None):
            batch, samples = inputs.shape
            real = batch * samples if attention_mask is None else int(attention_mask.sum())
            busy.run(real / 16_000, rate)
            frames = (samples - 400) // 320 + 1
            start = hidden.take(batch * frames)  # rows: consecutive, distinct slices
            rows = hidden.values[start : start + batch * frames].view(batch, frames, HIDDEN)
            vad = vad_pool[start % (POOL_FRAMES - frames) :][:frames]
            return rows, vad[None].expand(batch, -1, -1)

    loaded = LoadedBackbone(model=StandInForward(), identity=identity)
    part_task.cached_backbone = lambda job, device: loaded


def measure(args) -> dict:
    """One run of every part of the corpus through ``run_part`` (the worker's task)."""
    sys.path.insert(0, args.tree)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    from featurestore import part_task
    from featurestore.extraction import plan_parts
    from featurestore.spec import build_spec, fingerprint
    from manifests import load_manifest

    records = load_manifest(args.manifest)
    identity = stand_in_identity()
    spec = build_spec(identity, max_seconds=None, window_seconds=30.0, compute_dtype="float16")
    busy = Busy()
    pipelined = hasattr(part_task, "decode_threads_for")
    if pipelined:  # a GPU worker: decoding threads on the cores it is given
        os.environ.setdefault("EMI_DECODE_THREADS", str(len(os.sched_getaffinity(0))))
        encoder = pipelined_encoder(identity, busy, args.rate)
    else:
        patch_baseline_forward(part_task, identity, busy, args.rate)
    parts = plan_parts(records, part_seconds=args.part_seconds)
    audio_s = frames = 0.0
    start = time.perf_counter()
    for k, part in enumerate(parts):
        job = part_task.PartJob(
            store=args.store,
            part=f"p{k:06d}-bench",
            model="stand-in",
            revision=None,
            clips=[
                {
                    "clip_id": r.clip_id,
                    "path": r.path,
                    "sha256": r.sha256,
                    "duration_s": r.duration_s,
                }
                for r in part
            ],
            device="cpu",
            compute_dtype="float16",
            fingerprint=fingerprint(spec),
            batch_seconds=args.batch_seconds,
            window_seconds=30.0,
            max_seconds=None,
        )
        result = part_task.run_part(job, encoder=encoder) if pipelined else part_task.run_part(job)
        # a PartResult; an earlier tree's part task answers a dict
        result = result if isinstance(result, dict) else vars(result)
        if result["failures"]:
            raise RuntimeError(f"clips failed: {result['failures'][:3]}")
        audio_s += result["audio_s"]
        frames += result["frames"]
    wall = time.perf_counter() - start
    return {
        "audio_s": audio_s,
        "wall_s": wall,
        "throughput": audio_s / wall,
        "busy": busy.seconds / wall,
        "frames": frames,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_pinned(tree: Path, cores: int, rate: float, manifest: Path, work: Path, args) -> dict:
    store = Path(tempfile.mkdtemp(dir=work, prefix="store-")) / "s.zarr"
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--tree",
        str(tree),
        "--manifest",
        str(manifest),
        "--store",
        str(store),
        "--rate",
        str(rate),
        "--part-seconds",
        str(args.part_seconds),
        "--batch-seconds",
        str(args.batch_seconds),
    ]
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": str(cores),
    }
    out = subprocess.run(["taskset", "-c", cpus, *command], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"measurement failed:\n{out.stderr[-3000:]}")
    shutil.rmtree(store.parent, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the report -----------------------------------------------------------------------------


def export_tree(rev: str, work: Path) -> Path:
    tree = work / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def feed_report(args, work: Path) -> dict:
    corpus = work / "corpus"
    audio_s = make_corpus(corpus, args.minutes, rate=44_100, channels=2)
    sys.path.insert(0, str(REPO))
    from manifests import build_manifest, save_manifest

    manifest = work / "manifest.csv"
    save_manifest(build_manifest(corpus), manifest)
    trees = {"this tree": REPO}
    if args.baseline:
        trees[f"baseline {args.baseline}"] = export_tree(args.baseline, work)
    cores = [int(c) for c in args.cores.split(",")]
    print(
        f"corpus: {audio_s / 60:.1f} min of 44.1 kHz stereo WAV, clips of 4-11 s; "
        f"stand-in device: {HIDDEN}-d float16 features; parts of {args.part_seconds:.0f} s; "
        f"batch {args.batch_seconds:.0f} s; best of {args.repeats}"
    )
    results: dict = {}
    for name, tree in trees.items():
        for n in cores:
            ceiling = max(
                run_pinned(tree, n, float("inf"), manifest, work, args)["throughput"]
                for _ in range(args.repeats)
            )
            row = {"ceiling": ceiling, "rates": {}}
            for ratio in args.ratios:
                runs = [
                    run_pinned(tree, n, ratio * ceiling, manifest, work, args)
                    for _ in range(args.repeats)
                ]
                best = max(runs, key=lambda r: r["throughput"])
                row["rates"][ratio] = {"R": ratio * ceiling, **best}
            results[_key(name, n)] = row
            print(f"\n[{name}, {n} core(s)] CPU-side ceiling {ceiling:7.0f} audio s/s")
            for ratio, r in row["rates"].items():
                print(
                    f"  R = {ratio:.1f} x ceiling = {r['R']:6.0f}: emi {r['throughput']:6.0f} "
                    f"audio s/s, device busy {100 * r['busy']:5.1f}%"
                )
    base = [k for k in results if not k.startswith("this")]
    this = [k for k in results if k.startswith("this")]
    print("\nratios, measured in this run:")
    if len(cores) > 1:
        for name in ("this tree", *(f"baseline {args.baseline}",) * bool(base)):
            one = results[_key(name, cores[0])]["ceiling"]
            for n in cores[1:]:
                many = results[_key(name, n)]["ceiling"]
                print(f"  {name}: ceiling {n} cores / {cores[0]} core  {many / one:5.2f}x")
    if base:
        for k_this, k_base in zip(this, base, strict=True):
            ratio = results[k_this]["ceiling"] / results[k_base]["ceiling"]
            print(f"  ceiling, {k_this} / {k_base}  {ratio:5.2f}x")
    return results


def _key(name: str, cores: int) -> str:
    """A result's name: the tree and its cores ("this tree, 2 cores")."""
    return f"{name}, {cores} core{'s' if cores > 1 else ''}"


def memory_report(args, work: Path) -> dict:
    """Peak RSS of one worker process extracting long clips with R = infinity."""
    corpus = work / "long"
    make_corpus(
        corpus,
        args.clips * args.clip_minutes,
        rate=16_000,
        channels=1,
        lengths=(args.clip_minutes * 60, args.clip_minutes * 60 + 1e-3),
    )
    sys.path.insert(0, str(REPO))
    from manifests import build_manifest, save_manifest

    manifest = work / "long.csv"
    save_manifest(build_manifest(corpus), manifest)
    cores = max(int(c) for c in args.cores.split(","))
    result = run_pinned(REPO, cores, float("inf"), manifest, work, args)
    print(
        f"\n{args.clips} clips of {args.clip_minutes:g} min (16 kHz mono WAV), {cores} core(s), "
        f"R = infinity: peak RSS {result['peak_rss_mib']:.0f} MiB, "
        f"{result['throughput']:.0f} audio s/s"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="audio in the corpus")
    parser.add_argument("--cores", default="1,2", help="core counts to pin to")
    parser.add_argument(
        "--ratios",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        default=RATIOS,
        help="device rates R to run, as fractions of the CPU-side ceiling",
    )
    parser.add_argument("--baseline", default=None, help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; best kept")
    parser.add_argument("--part-seconds", type=float, default=600.0)
    parser.add_argument("--batch-seconds", type=float, default=120.0, help="GPU default")
    parser.add_argument("--memory", action="store_true", help="the long-clip memory case")
    parser.add_argument("--clips", type=int, default=100, help="memory case: clips")
    parser.add_argument("--clip-minutes", type=float, default=10.0, help="memory case")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return
    work = Path(tempfile.mkdtemp(prefix="emi-feed-"))
    try:
        results = memory_report(args, work) if args.memory else feed_report(args, work)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
