"""A stored feature always comes from the bytes that were decoded: files swapped
between a folder's listing and their decoding (new content, a link pointing out of the
source root, a folder on the path swapped for a link) are refused, never stored under
the listed hash; and a stop asked while a part runs ends it after its current round,
keeping what it finished."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from featurestore import part_task
from featurestore.audio import AudioError, decode_clip
from featurestore.extraction import extract
from featurestore.options import ExtractOptions, RunHooks
from featurestore.store import FeatureStore
from service.config import ServiceConfig
from service.score import _content_keyed
from service.sources import manifest_below_roots
from tests.conftest import run_cli
from tests.synth import write_clip


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_files_swapped_after_listing_are_refused_and_nothing_outside_is_read(
    tmp_path, tiny_backbone, monkeypatch
):
    root = tmp_path / "root"
    folder = root / "clips"
    for k, name in enumerate(("a", "b", "c", "sub/d")):
        write_clip(folder / f"{name}.wav", 1.5, seed=k)
    outside = tmp_path / "outside"
    write_clip(outside / "secret.wav", 1.5, seed=90)
    write_clip(outside / "sub" / "d.wav", 1.5, seed=91)
    config = ServiceConfig(stores=str(tmp_path / "stores"), heads=tmp_path / "heads",
                           state=tmp_path / "state", source_roots=[str(root)])  # fmt: skip
    listed, refused = manifest_below_roots(str(folder), config)
    assert refused == [] and len(listed) == 4
    records = _content_keyed(listed)  # as the score cache keys clips: the listed hash
    by_name = {os.path.basename(r.path): r for r in records}
    real, opened, swapped = part_task.decode_clip, [], threading.Event()

    def swap_then_decode(path, **kwargs):
        if not swapped.is_set():  # once the job runs: swap three files under it
            swapped.set()
            write_clip(folder / ".b.new.wav", 1.5, seed=50)
            os.replace(folder / ".b.new.wav", folder / "b.wav")  # other content
            os.symlink(outside / "secret.wav", folder / ".c.link")
            os.replace(folder / ".c.link", folder / "c.wav")  # a link out of the root
            os.rename(folder / "sub", folder / ".sub.old")
            os.symlink(outside / "sub", folder / "sub")  # a folder swapped for a link
        opened.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(part_task, "decode_clip", swap_then_decode)
    store = tmp_path / "cache.zarr"
    options = ExtractOptions.of(model=str(tiny_backbone), quiet=True, resolved_paths=True)
    summary = extract(records, str(store), options)
    assert swapped.is_set()
    reasons = {os.path.basename(f.path): f.reason for f in summary.failed}
    assert sorted(reasons) == ["b.wav", "c.wav", "d.wav"]
    assert "changed since the folder was listed" in reasons["b.wav"]
    assert "symbolic link" in reasons["c.wav"]
    assert "no longer the file that was listed" in reasons["d.wav"]
    # every stored clip is keyed by the hash of the very bytes its features came from
    opened_store = FeatureStore.open(str(store))
    stored = opened_store.sha256_by_clip()
    assert stored == {by_name["a.wav"].clip_id: _sha(folder / "a.wav")}
    assert all(clip_id == sha for clip_id, sha in stored.items())
    assert str(outside) not in " ".join(opened)  # the job asked only for the listed paths
    verified = run_cli("store", "verify", store)
    assert verified.exit_code == 0
    # run again once the files stay put: b is stored under its new content's hash, the
    # links are still refused
    again, outside_now = manifest_below_roots(str(folder), config)
    assert [f.clip_id for f in outside_now] == ["c"]  # never opened; a linked folder: not listed
    assert sorted(r.clip_id for r in again) == [".sub.old/d", "a", "b"]
    second = extract(_content_keyed(again), str(store), options)
    assert second.failed == []
    assert FeatureStore.open(str(store)).sha256_by_clip()[_sha(folder / "b.wav")]


def test_decoding_hashes_what_it_reads_and_refuses_what_is_not_a_regular_file(tmp_path):
    wav = write_clip(tmp_path / "a.wav", 1.0, seed=3)
    clip = decode_clip(wav)
    assert clip.sha256 == _sha(wav)
    with pytest.raises(AudioError, match="changed since the folder was listed"):
        decode_clip(wav, expected_sha256="0" * 64)  # emi extract/score: a listed hash
    os.mkfifo(tmp_path / "pipe.wav")
    started = time.monotonic()
    with pytest.raises(AudioError, match="FIFO"):
        decode_clip(tmp_path / "pipe.wav")  # never waits for a writer
    assert time.monotonic() - started < 5
    os.symlink(wav, tmp_path / "link.wav")
    assert decode_clip(tmp_path / "link.wav").sha256 == clip.sha256  # a user's link: followed
    with pytest.raises(AudioError, match="symbolic link"):
        decode_clip(tmp_path / "link.wav", exact=True)  # a resolved path: never


def test_a_stop_during_a_part_ends_it_after_its_round_and_keeps_what_it_finished(
    tmp_path, tiny_backbone, monkeypatch
):
    folder = tmp_path / "clips"
    for k in range(12):
        write_clip(folder / f"c{k:02d}.wav", 4.0, seed=k)
    run_cli("manifest", "build", folder, "-o", tmp_path / "clips.csv")
    from manifests import load_manifest

    records = load_manifest(tmp_path / "clips.csv")
    real, decoded, asked = part_task.decode_clip, [], threading.Event()

    def decode_then_ask_to_stop(path, **kwargs):
        decoded.append(path)
        if len(decoded) == 4:  # within the part's first rounds
            asked.set()
            time.sleep(1.0)  # the driver's watcher sees it and sets the stop event
        return real(path, **kwargs)

    monkeypatch.setattr(part_task, "decode_clip", decode_then_ask_to_stop)
    store = tmp_path / "f.zarr"
    options = ExtractOptions.of(model=str(tiny_backbone), quiet=True)
    summary = extract(records, str(store), options, RunHooks(should_stop=asked.is_set))
    assert summary.stopped and len(summary.parts_written) == 1
    kept = FeatureStore.open(str(store))
    assert 0 < len(kept.clip_ids) < 12 and summary.failed == []
    assert len(decoded) < 12  # the clips after the stop were never decoded
    # what it committed stays; a rerun computes only the rest
    monkeypatch.setattr(part_task, "decode_clip", real)
    rest = extract(records, str(store), ExtractOptions.of(model=str(tiny_backbone), quiet=True))
    assert rest.already_stored == len(kept.clip_ids)
    assert rest.extracted == 12 - len(kept.clip_ids)


def test_progress_moves_within_a_part_round_by_round(tmp_path, tiny_backbone, monkeypatch):
    folder = tmp_path / "clips"
    for k in range(10):
        write_clip(folder / f"c{k:02d}.wav", 2.5, seed=k)
    run_cli("manifest", "build", folder, "-o", tmp_path / "clips.csv")
    from manifests import load_manifest

    real = part_task.decode_clip

    def slow_decode(path, **kwargs):
        time.sleep(0.25)  # rounds spread over seconds: the driver reads each report
        return real(path, **kwargs)

    monkeypatch.setattr(part_task, "decode_clip", slow_decode)
    seen: list[tuple[int, int, float]] = []
    options = ExtractOptions.of(model=str(tiny_backbone), quiet=True)
    hooks = RunHooks(
        on_part=lambda s: seen.append((s.extracted, s.running_clips, s.running_audio_s))
    )
    summary = extract(
        load_manifest(tmp_path / "clips.csv"), str(tmp_path / "f.zarr"), options, hooks
    )
    assert len(summary.parts_written) == 1  # one part of 25 s
    running = [clips for extracted, clips, _ in seen if extracted == 0 and clips > 0]
    assert len(running) >= 2 and running == sorted(running) and running[0] < 10
    assert running[-1] == 10  # the part's last round is shown before its clips commit
    assert seen[-1][:2] == (10, 0)  # committed: nothing left running
    assert all(audio > 0 for _, clips, audio in seen if clips)
