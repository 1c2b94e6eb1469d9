"""What a stored layer costs on disk: bytes per audio second with the store's codec and
with alternatives, on real-model-shaped features (1024-d float16, 50 frames per second).

Features, two kinds (no real checkpoint is needed):

- ``backbone``: ``hidden`` and ``hidden_states[k]`` of a random-weight backbone of the
  real model's shape (``large-robust-12``: 1024-d, 12 layers) on synthetic voiced audio,
  computed by emi's extractor (``--layers all``). Random weights are not trained
  weights: trained models' states are smoother across frames, so these are a
  conservative estimate.
- ``normal``: random-normal float16 (incompressible beyond its exponent bits: the
  worst case).

Codecs, each written with the store's chunking (about 4 MiB per chunk) and read back,
timed on this machine: the store's (zstd level 3 with zstd's chunk checksum), zstd
levels 1 and 9, and blosc-zstd with byte or bit shuffle (blosc is a core Zarr v3 codec;
it has no chunk checksum). Prints bytes per audio second per layer, the ratio to raw
float16, write and read MB/s, and what a 30-hour corpus costs with ``--layers last``,
three layers and ``all``.

    python bench/storage.py --seconds 120
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zarr  # noqa: E402
from zarr.codecs import BloscCodec, ZstdCodec  # noqa: E402

from featurestore.store import CHUNK_BYTES, CODECS  # noqa: E402

FRAMES_PER_SECOND = 50
CODEC_CHOICES = {
    "store: zstd-3 + checksum": CODECS,
    "zstd-1 + checksum": (ZstdCodec(level=1, checksum=True),),
    "zstd-9 + checksum": (ZstdCodec(level=9, checksum=True),),
    "blosc-zstd-3 byte shuffle": (
        BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2),
    ),
    "blosc-zstd-3 bit shuffle": (
        BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2),
    ),
}


def backbone_layers(seconds: float, size: str, work: Path) -> dict[str, np.ndarray]:
    """Per-frame float16 features of every layer of a random ``size`` backbone on
    ``seconds`` of synthetic voiced audio (10 s clips), extracted by emi."""
    import soundfile as sf

    from featurestore import ExtractOptions, FeatureStore, extract, write_random_backbone
    from manifests import build_manifest
    from manifests.synthetic import synth_clip

    rng = np.random.default_rng(0)
    audio = work / "audio"
    audio.mkdir()
    for i in range(max(1, int(seconds // 10))):
        pitch, rate, pauses = rng.uniform(size=3)
        sf.write(audio / f"{i:04d}.wav", synth_clip(pitch, rate, pauses, 10.0, rng), 16_000)
    model = write_random_backbone(work / "model", size=size, seed=0)
    extract(
        build_manifest(audio),
        str(work / "feats.zarr"),
        ExtractOptions.of(model=str(model), layers="all", quiet=True),
    )
    store = FeatureStore.open(work / "feats.zarr")
    layers = {"hidden": np.concatenate([store.hidden(c) for c in store.clip_ids])}
    for k in store.layers:
        layers[f"layer {k}"] = np.concatenate([store.hidden(c, layer=k) for c in store.clip_ids])
    return layers


def measure(values: np.ndarray, codecs: tuple, work: Path) -> tuple[int, float, float]:
    """Bytes on disk, write MB/s and read MB/s (raw float16 bytes per second)."""
    rows = max(64, CHUNK_BYTES // (values.shape[1] * values.itemsize))
    path = work / f"a{time.perf_counter_ns()}.zarr"
    started = time.perf_counter()
    arr = zarr.create_array(
        zarr.storage.LocalStore(path),
        shape=values.shape,
        chunks=(rows, values.shape[1]),
        dtype=values.dtype,
        compressors=codecs,
        fill_value=0,
        config={"write_empty_chunks": True},
    )
    arr[:] = values
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    back = zarr.open_array(zarr.storage.LocalStore(path), mode="r")[:]
    read = time.perf_counter() - started
    assert np.array_equal(back, values)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "c" in f.parts)
    mb = values.nbytes / 1e6
    return size, mb / wrote, mb / read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="audio seconds")
    parser.add_argument("--size", default="large-robust-12", help="random backbone size")
    parser.add_argument("--corpus-hours", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        features = backbone_layers(args.seconds, args.size, work)
        frames, width = features["hidden"].shape
        rng = np.random.default_rng(1)
        features["normal (worst case)"] = rng.standard_normal((frames, width)).astype(np.float16)
        seconds = frames / FRAMES_PER_SECOND
        raw = width * 2 * FRAMES_PER_SECOND
        print(
            f"{frames} frames ({seconds:.0f} s of audio) x {width}-d float16; raw "
            f"{raw / 1e3:.1f} kB per audio second per layer"
        )
        print(f"\n{'codec':28s} {'features':22s} {'kB/audio s':>10s} {'of raw':>7s}", end="")
        print(f" {'write MB/s':>10s} {'read MB/s':>9s}")
        store_codec = next(iter(CODEC_CHOICES))
        per_second: dict[str, float] = {}
        for name, codecs in CODEC_CHOICES.items():
            for what, values in features.items():
                if name != store_codec and what.startswith("layer") and what != "layer 6":
                    continue  # alternatives: on the last, a middle layer and the worst case
                size, write, read = measure(values, codecs, work)
                kb = size / seconds / 1e3
                if name == store_codec:
                    per_second[what] = kb
                print(
                    f"{name:28s} {what:22s} {kb:10.1f} {size / values.nbytes:7.3f} "
                    f"{write:10.0f} {read:9.0f}"
                )
        layer_values = [v for k, v in per_second.items() if k.startswith("layer")]
        mean_layer = float(np.mean(layer_values))
        hidden = per_second["hidden"]
        corpus_s = args.corpus_hours * 3600
        depth = len(layer_values)
        print(
            f"\nstore codec, mean over hidden_states 0-{depth - 1}: {mean_layer:.1f} kB per "
            f"audio second per layer (hidden: {hidden:.1f})"
        )
        print(f"a {args.corpus_hours:g}-hour corpus ({corpus_s:.0f} audio s) with the store codec:")
        choices = (("last", 0), ("three layers", 3), (f"all ({depth} layers)", depth))
        for label, layers in choices:
            total = (hidden + layers * mean_layer) * 1e3 * corpus_s
            print(f"  --layers {label:18s} {total / 1e9:7.1f} GB")


if __name__ == "__main__":
    main()
