"""What opening a store costs as it grows: the root index, parsed and checked.

Opening a store is one read of its root (``zarr.json``), whatever the number of parts;
that root grows with the clips (each part's record lists its clip ids, frame counts,
sha256, durations and digests). Builds roots of ``--parts`` x ``--clips`` (clips per
part) and times, interleaved, best of ``--repeats``:

- parse: ``json.loads`` of the root's bytes (the floor: what any reader pays);
- index: ``read_root``: the read, the digest check and the typed records
  (``featurestore.store.index.RootIndex``);
- open: ``FeatureStore.open`` plus the clip lookup table (``len(store)``), what a
  reader has before its first array read.

    python bench/root_index.py --parts 10,100,1000 --clips 100 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from featurestore.location import StoreLocation, group_node  # noqa: E402
from featurestore.spec import VAD_LABELS, as_spec  # noqa: E402
from featurestore.store import FeatureStore, PartRecord, RootIndex, read_root  # noqa: E402
from featurestore.store.index import FeatureSetRecord  # noqa: E402
from featurestore.store.root import write_root  # noqa: E402

SPEC = {
    "backbone": {
        "ref": "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim",
        "revision": None,
        "weights_sha256": "0" * 64,
        "config_sha256": "1" * 64,
        "feat_extract_norm": "layer",
    },
    "hidden_size": 1024,
    "max_seconds": None,
    "window_seconds": 30.0,
    "vad_labels": list(VAD_LABELS),
}


def part(number: int, clips: int) -> PartRecord:
    ids = tuple(f"clip{number:05d}-{k:04d}" for k in range(clips))
    keys = ("hidden", "frame_vad")
    return PartRecord(
        clips=clips,
        frames=clips * 250,
        clip_id=ids,
        clip_frames=(250,) * clips,
        sha256=tuple(f"{hash(c) & (2**64 - 1):064x}" for c in ids),
        duration_s=(5.0,) * clips,
        digests={k: "0123456789abcdef" for k in ("clip_id", "offsets", "hidden_mean")},
        clip_digests={k: ("0123456789abcdef",) * clips for k in keys},
        metadata_digests={k: "0123456789abcdef" for k in keys},
        fingerprint="f" * 64,
        written_at="2026-11-30T00:00:00+00:00",
        written_by="host:1",
    )


def make_store(folder: Path, parts: int, clips: int) -> Path:
    spec = as_spec(SPEC)
    name = "wav2vec2-large-robust-12-ft-emotion-msp-dim"
    record = FeatureSetRecord.new(name, spec)
    record = FeatureSetRecord(
        name, record.fingerprint, record.spec,
        parts={f"p{n:06d}-bench": part(n, clips) for n in range(parts)},
    )  # fmt: skip
    store = folder / f"{parts}x{clips}.zarr"
    where = StoreLocation.of(store)
    store.mkdir()
    write_root(where, RootIndex.of_sets([record]))
    (store / "parts").mkdir()
    where.write("parts/zarr.json", group_node({}))
    return store


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="10,100,1000")
    parser.add_argument("--clips", type=int, default=100, help="clips per part")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("parts  clips    root MiB   parse ms   index ms   open ms   index/parse  open/parse")
    with tempfile.TemporaryDirectory() as tmp:
        for parts in (int(p) for p in args.parts.split(",")):
            store = make_store(Path(tmp), parts, args.clips)
            raw = (store / "zarr.json").read_bytes()
            where = StoreLocation.of(store)
            parse = best(lambda raw=raw: json.loads(raw), args.repeats)
            index = best(lambda where=where: read_root(where), args.repeats)
            opened = best(lambda store=store: len(FeatureStore.open(store)), args.repeats)
            assert len(FeatureStore.open(store)) == parts * args.clips
            print(
                f"{parts:5d} {parts * args.clips:6d} {len(raw) / 2**20:11.1f} "
                f"{parse * 1e3:10.1f} {index * 1e3:10.1f} {opened * 1e3:9.1f} "
                f"{index / parse:12.2f} {opened / parse:11.2f}"
            )


if __name__ == "__main__":
    main()
