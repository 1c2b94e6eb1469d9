"""The pipelined part task: decoding threads, device rounds and the background writer
give the features of the plain unbatched forward, and failures stay per clip."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zarr

from featurestore import part_task
from featurestore.encode import BatchEncoder, ClipFeatures
from featurestore.extraction import ExtractOptions, extract, plan_parts
from featurestore.pipeline import WriteBehind, decode_ahead, run_ahead
from featurestore.store import FeatureStore, PartWriter, StoredClip, write_part
from manifests import build_manifest
from manifests.records import ClipRecord
from tests.conftest import read_16k_mono
from tests.reference import ReferenceForward, assert_matches
from tests.synth import voiced


@pytest.fixture(scope="module")
def container_corpus(mixed_corpus, tmp_path_factory) -> Path:
    """The mixed corpus plus clips that take the decoder's other paths: 44.1 kHz stereo
    16-bit, 48 kHz stereo float, 22.05 kHz three-channel 24-bit FLAC."""
    folder = tmp_path_factory.mktemp("containers")
    shutil.copytree(mixed_corpus, folder, dirs_exist_ok=True)
    for name, rate, channels, subtype, seconds in (
        ("stereo16.wav", 44_100, 2, "PCM_16", 2.3),
        ("stereo_float.wav", 48_000, 2, "FLOAT", 1.7),
        ("three24.flac", 22_050, 3, "PCM_24", 1.1),
    ):
        n = int(seconds * rate)
        mono = voiced(seconds, seed=rate, f0_hz=140)
        mono = np.interp(np.arange(n) / rate, np.arange(len(mono)) / 16_000, mono)
        data = np.stack([mono * (0.5 + 0.2 * c) for c in range(channels)], axis=1)
        sf.write(str(folder / name), data.astype(np.float32), rate, subtype=subtype)
    return folder


def _extract(corpus: Path, store: Path, backbone: Path, **options):
    options = {"model": str(backbone), "quiet": True, "batch_seconds": 2.0, **options}
    return extract(build_manifest(corpus), str(store), ExtractOptions.of(**options))


def _assert_equals_reference(store: Path, corpus: Path, backbone: Path, skip=()) -> None:
    opened = FeatureStore.open(store)
    reference = ReferenceForward(backbone)
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        clip_id = path.relative_to(corpus).with_suffix("").as_posix()
        if clip_id not in skip:
            assert_matches(opened, clip_id, reference(read_16k_mono(path)))


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_pipelined_store_equals_unbatched_forward(
    threads, container_corpus, tiny_backbone, tmp_path, monkeypatch
):
    # Short rounds, so even this small corpus goes through many of them.
    monkeypatch.setattr(part_task, "FIRST_ROUND_SECONDS", 0.5)
    monkeypatch.setattr(part_task, "MIN_ROUND_SECONDS", 1.0)
    rounds = []
    encode = part_task.segments_of
    monkeypatch.setattr(
        part_task, "segments_of", lambda *a, **k: rounds.append(len(a[0])) or encode(*a, **k)
    )
    summary = _extract(container_corpus, tmp_path / "s.zarr", tiny_backbone, decode_threads=threads)
    assert not summary.failed and summary.extracted == len(build_manifest(container_corpus))
    assert len(rounds) >= 4
    _assert_equals_reference(tmp_path / "s.zarr", container_corpus, tiny_backbone)


def test_a_failure_in_a_decoding_thread_fails_only_its_clip(
    container_corpus, tiny_backbone, tmp_path, monkeypatch
):
    decode = part_task.decode_clip

    def flaky(path, **kwargs):
        if Path(path).name == "stereo16.wav":
            raise MemoryError("injected decoder failure")
        return decode(path, **kwargs)

    monkeypatch.setattr(part_task, "decode_clip", flaky)
    summary = _extract(container_corpus, tmp_path / "s.zarr", tiny_backbone, decode_threads=3)
    assert [f.clip_id for f in summary.failed] == ["stereo16"]
    assert "MemoryError: injected decoder failure" in summary.failed[0].reason
    stored = FeatureStore.open(tmp_path / "s.zarr")
    assert "stereo16" not in stored.clip_ids
    assert len(stored.clip_ids) == len(build_manifest(container_corpus)) - 1
    _assert_equals_reference(tmp_path / "s.zarr", container_corpus, tiny_backbone, {"stereo16"})


def test_a_batch_that_fails_on_the_device_is_retried_one_segment_at_a_time(
    container_corpus, tiny_backbone, tmp_path, monkeypatch
):
    sizes = []
    launch = BatchEncoder.launch

    def out_of_memory_for_batches(self, rows, frames):
        sizes.append(len(rows))
        if len(rows) > 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return launch(self, rows, frames)

    monkeypatch.setattr(BatchEncoder, "launch", out_of_memory_for_batches)
    summary = _extract(container_corpus, tmp_path / "s.zarr", tiny_backbone, decode_threads=2)
    assert not summary.failed
    assert max(sizes) > 1  # batches were tried, failed and were split
    _assert_equals_reference(tmp_path / "s.zarr", container_corpus, tiny_backbone)


def test_decode_ahead_keeps_order_and_bounds_the_audio_decoded_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def decode(i: int) -> int:
        with lock:
            started.append(i)
        if i == 7:
            raise ValueError("bad clip 7")
        return i * i

    taken = []
    for item, result in decode_ahead(
        range(40), decode, threads=3, ahead_seconds=5.0, seconds=lambda i: 1.0
    ):
        time.sleep(0.002)  # a slow device: the decoders run ahead
        with lock:
            assert max(started) <= item + 5  # never more than 5 s of audio ahead
        taken.append((item, result))
    assert [i for i, _ in taken] == list(range(40))
    assert isinstance(taken[7][1], ValueError)
    assert all(r == i * i for i, r in taken if i != 7)
    assert sorted(started) == list(range(40))


def test_run_ahead_keeps_order_stays_bounded_and_raises_the_producers_error():
    produced: list[int] = []

    def produce():
        for i in range(20):
            produced.append(i)
            yield i
        raise RuntimeError("device lost")

    seen = []
    with pytest.raises(RuntimeError, match="device lost"):
        for item in run_ahead(produce(), depth=2):
            time.sleep(0.005)  # a slow consumer: the producer waits, at most 3 ahead
            assert len(produced) <= item + 4
            seen.append(item)
    assert seen == list(range(20))

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    produced.clear()
    for item in run_ahead(endless(), depth=1):
        if item == 3:
            break  # the consumer stops: so does the producer
    time.sleep(0.3)
    assert len(produced) <= 6


def test_write_behind_bounds_its_queue_and_raises_the_first_write_error():
    waiting = []
    written = []
    gate = threading.Event()

    def write(work):
        gate.wait()
        written.append(work)

    behind = WriteBehind(write, depth=2)
    feeder = threading.Thread(target=lambda: [behind.submit(k) for k in range(6)])
    feeder.start()
    time.sleep(0.2)
    waiting.append(len(written))
    assert feeder.is_alive()  # blocked: 2 queued plus 1 being written, no more
    gate.set()
    feeder.join()
    behind.close()
    assert waiting == [0] and written == list(range(6))

    def broken(work):
        raise OSError(f"disk full at {work}")

    failing = WriteBehind(broken, depth=1)
    failing.submit(0)
    with pytest.raises(OSError, match="disk full at 0"):
        for k in range(1, 10):
            failing.submit(k)
            time.sleep(0.01)
        failing.close()


def test_a_part_written_in_rounds_equals_one_written_at_once(tiny_backbone, tmp_path, monkeypatch):
    from featurestore.backbone import identify_backbone
    from featurestore.spec import build_spec
    from featurestore.store import open_zarr_store

    monkeypatch.setattr("featurestore.store.part_writer.CHUNK_BYTES", 1024)  # many chunks per clip
    spec = build_spec(
        identify_backbone(str(tiny_backbone)),
        max_seconds=None,
        window_seconds=None,
        compute_dtype="float32",
    )
    rng = np.random.default_rng(0)
    clips, features = [], []
    for i, frames in enumerate([70, 3, 129, 1, 64, 300]):
        hidden = rng.standard_normal((frames, 32)).astype(np.float16)
        vad = rng.standard_normal((frames, 3)).astype(np.float32)
        clips.append(StoredClip(f"c{i}", f"/audio/c{i}.wav", f"{i:064x}", frames / 50))
        features.append(
            ClipFeatures(hidden, vad, hidden.mean(0, dtype=np.float32), vad.mean(0), vad[0])
        )
    once = write_part(open_zarr_store(tmp_path / "a", mode="a"), "p000000-x", spec, clips, features)
    writer = PartWriter(open_zarr_store(tmp_path / "b", mode="a"), "p000000-x", spec)
    for lo, hi in ((0, 1), (1, 2), (2, 5), (5, 6)):
        writer.append(clips[lo:hi], features[lo:hi])
    rounds = writer.finish()
    for key in ("clips", "frames", "clip_id", "clip_frames", "digests", "clip_digests"):
        assert rounds[key] == once[key], key
    a = zarr.open_group(str(tmp_path / "a" / "parts" / "p000000-x"), mode="r")
    b = zarr.open_group(str(tmp_path / "b" / "parts" / "p000000-x"), mode="r")
    for name in a.array_keys():
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)
        assert a[name].chunks == b[name].chunks


def test_parts_are_balanced_with_no_small_trailing_part():
    records = [
        ClipRecord(clip_id=f"c{i}", path=f"/a/c{i}.wav", duration_s=10.0) for i in range(130)
    ]
    parts = plan_parts(records, part_seconds=600)
    assert len(parts) == 3  # 1300 s: three parts of about 433 s, not 600 + 600 + 100
    assert sorted(len(p) for p in parts) == [43, 43, 44]
    assert sorted(r.clip_id for p in parts for r in p) == sorted(r.clip_id for r in records)


def test_a_producer_left_early_is_closed_on_its_own_thread():
    closed = threading.Event()

    def produce():
        try:
            while True:
                yield 1
        finally:
            closed.set()  # e.g. the decoding pool shutting down

    for _ in run_ahead(produce(), depth=1):
        break
    assert closed.wait(2.0)


def test_padding_never_leaks_into_a_clips_sums():
    import torch

    class InfInPadding(torch.nn.Module):
        """Finite on real frames, inf on padded ones (as an overflow there would be)."""

        uses_layer_norm = True

        def forward(self, values, attention_mask=None):
            frames = (values.shape[1] - 400) // 320 + 1
            hidden = torch.ones(values.shape[0], frames, 4)
            if attention_mask is not None:
                real = (attention_mask.sum(dim=1) - 400) // 320 + 1
                for row, count in enumerate(real.tolist()):
                    hidden[row, count:] = float("inf")
            return hidden, hidden[..., :3]

    long, short = np.zeros(16_000, np.float32), np.zeros(8_000, np.float32)
    outputs = BatchEncoder(InfInPadding())([long, short], [49, 24])
    assert all(o.finite for o in outputs)
    np.testing.assert_array_equal(outputs[1].hidden_sum, np.full(4, 24.0, np.float32))
    np.testing.assert_array_equal(outputs[1].vad_sum, np.full(3, 24.0, np.float32))


def test_unknown_or_odd_durations_still_plan_balanced_parts():
    durations = [float("inf"), None, 0.0, -3.0, float("nan")] + [10.0] * 100
    records = [
        ClipRecord(clip_id=f"c{i}", path=f"/a/c{i}.wav", duration_s=d)
        for i, d in enumerate(durations)
    ]
    parts = plan_parts(records, part_seconds=300)
    assert sorted(r.clip_id for p in parts for r in p) == sorted(r.clip_id for r in records)
    # 1005 s, odd durations counted as 1 s: four parts of about 251 s
    seconds = [sum(r.duration_s if r.duration_s == 10.0 else 1.0 for r in p) for p in parts]
    assert len(parts) == 4 and all(abs(s - 1005 / 4) <= 10 for s in seconds), seconds
