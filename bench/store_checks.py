"""What the store's checks cost: reading with every check on vs a reader without them.

Builds a synthetic store of real-model-shaped features (1024-d float16 hidden states)
twice: as emi writes it (zstd with its chunk checksum, content digests committed in the
root) and as a copy with zstd only, read by plain zarr with no checks (the reader emi
had before the checks). Then, interleaved, best of ``--repeats``:

- unchecked: plain ``zarr`` reads of every part's arrays from the zstd-only copy;
- checked: ``FeatureStore.read_part`` (the training and prediction path: chunk checksums,
  per-clip and per-array XXH3 content digests, shapes against the commit record);
- open: ``FeatureStore.open`` (one read of the root) and ``emi store verify``'s work.

    python bench/store_checks.py --clips 400 --repeats 3
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
from zarr.codecs import ZstdCodec  # noqa: E402

from featurestore.encode import ClipFeatures  # noqa: E402
from featurestore.location import StoreLocation  # noqa: E402
from featurestore.report import verify_store  # noqa: E402
from featurestore.spec import VAD_LABELS, as_spec  # noqa: E402
from featurestore.store import PARTS, SCHEMA, FeatureStore, StoredClip, StoreWriter  # noqa: E402
from featurestore.store.imported import commit_features
from models.sequences import SequenceData  # noqa: E402

KEYS = ("hidden", "frame_vad", "hidden_mean", "vad_mean")


def synthetic_spec(hidden: int) -> dict:
    """A spec in its canonical form (every field, as a stored spec has them)."""
    return as_spec(
        {
            "format_version": 1,
            "backbone": {"ref": "synthetic", "revision": None, "weights_sha256": "0" * 64},
            "layer": "last",
            "sample_rate_hz": 16000,
            "frame_rate_hz": 50,
            "hidden_size": hidden,
            "vad_labels": list(VAD_LABELS),
            "max_seconds": None,
            "window_seconds": 30.0,
            "compute_dtype": "float32",
        }
    ).to_dict()


def build(work: Path, clips: int, hidden: int, per_part: int) -> tuple[Path, Path]:
    checked = work / "checked.zarr"
    writer = StoreWriter.open(StoreLocation.of(checked), synthetic_spec(hidden), lock=None)
    rng = np.random.default_rng(0)
    stored, features = [], []
    for i in range(clips):
        frames = int(rng.integers(150, 450))
        h = rng.normal(size=(frames, hidden)).astype(np.float16)
        vad = rng.normal(size=(frames, 3)).astype(np.float32)
        stored.append(StoredClip(f"{i:06d}", f"/audio/{i:06d}.wav", "0" * 64, frames / 50))
        features.append(
            ClipFeatures(h, vad, h.astype(np.float32).mean(0), vad.mean(0), vad.mean(0))
        )
        if len(stored) == per_part or i == clips - 1:
            commit_features(writer, stored, features)
            stored, features = [], []
    # The same arrays, zstd only, no checksums: what a reader without checks reads.
    plain = work / "plain.zarr"
    source = zarr.open_group(str(checked), mode="r")
    target = zarr.open_group(str(plain), mode="w")
    for name, part in source[PARTS].groups():
        group = target.create_group(f"{PARTS}/{name}")
        for a in SCHEMA:
            arr = part[a.name]
            copy = group.create_array(
                a.name,
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=arr.chunks,
                compressors=(ZstdCodec(level=0),),
            )
            copy[...] = arr[...]
    return checked, plain


class UncheckedStore(FeatureStore):
    """The checked store's index, but parts read from the zstd-only copy with plain
    zarr and no checks: the reader emi had before (``read_part`` as it was)."""

    def __init__(self, checked: Path, plain: Path) -> None:
        opened = FeatureStore.open(checked)
        super().__init__(opened.where, opened.index)
        self._plain = zarr.open_group(str(plain), mode="r")

    def read_part(self, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        part = self._plain[PARTS][name]
        arrays = {k: part[k][...] for k in ("clip_id", "offsets", *keys)}
        arrays["clip_id"] = np.array([str(x) for x in arrays["clip_id"]], dtype=object)
        return arrays


def training_load(store: FeatureStore) -> int:
    """What the trainer does before its first epoch: every clip's sequence in memory."""
    data = SequenceData(store, store.clip_ids, budget_bytes=1 << 40)
    next(iter(data.batches(32)))
    return data.total_bytes


def read_unchecked(plain: Path) -> int:
    total = 0
    root = zarr.open_group(str(plain), mode="r")
    for _, part in sorted(root[PARTS].groups()):
        for key in ("clip_id", "offsets", *KEYS):
            total += part[key][...].nbytes
    return total


def read_checked(checked: Path) -> int:
    store = FeatureStore.open(checked)
    total = 0
    for _, arrays in store.iter_parts(keys=KEYS):
        total += sum(v.nbytes for k, v in arrays.items() if k != "clip_id")
    return total


def best_of(fn, repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = fn()
        times.append(time.perf_counter() - started)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--per-part", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checked, plain = build(Path(tmp), args.clips, args.hidden, args.per_part)
        store = FeatureStore.open(checked)
        frames = sum(store.frames(c) for c in store.clip_ids)
        print(
            f"store: {args.clips} clips, {frames} frames x {args.hidden} float16, "
            f"{len(store.complete_parts)} parts"
        )
        rows = {"unchecked": [], "checked": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            rows["unchecked"].append(best_of(lambda: read_unchecked(plain), 1))
            rows["checked"].append(best_of(lambda: read_checked(checked), 1))
        t_plain = min(t for t, _ in rows["unchecked"])
        t_checked = min(t for t, _ in rows["checked"])
        size = rows["checked"][0][1]
        print(f"bulk read, plain zarr, no checks:   {size / t_plain / 2**20:8.0f} MiB/s")
        print(f"bulk read, FeatureStore, checked:    {size / t_checked / 2**20:8.0f} MiB/s")
        print(f"checked / unchecked time:            {t_checked / t_plain:8.3f}")
        loads = {"unchecked": [], "checked": []}
        for _ in range(args.repeats):
            loads["unchecked"].append(
                best_of(lambda: training_load(UncheckedStore(checked, plain)), 1)
            )
            loads["checked"].append(best_of(lambda: training_load(FeatureStore.open(checked)), 1))
        l_plain = min(t for t, _ in loads["unchecked"])
        l_checked = min(t for t, _ in loads["checked"])
        print(f"training load, unchecked reader:     {l_plain:8.3f} s")
        print(f"training load, checked reader:       {l_checked:8.3f} s")
        print(f"checked / unchecked time:            {l_checked / l_plain:8.3f}")
        t_open, _ = best_of(lambda: len(FeatureStore.open(checked)), args.repeats)
        print(f"open (one root read, index built):   {t_open * 1000:8.1f} ms")
        t_verify, _ = best_of(lambda: len(verify_store(FeatureStore.open(checked))), args.repeats)
        print(
            f"emi store verify (all arrays, means): {size / t_verify / 2**20:7.0f} MiB/s, "
            f"{args.clips / t_verify:.0f} clips/s, {frames / 50 / 3600 / t_verify * 60:.1f} "
            "h of audio per minute"
        )


if __name__ == "__main__":
    main()
