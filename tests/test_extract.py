"""End to end: `emi extract` on real dask clusters, against the unbatched reference."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from featurestore.encode import plan_segments
from featurestore.store import FeatureStore
from manifests import build_manifest, save_manifest
from tests.conftest import read_16k_mono, run_cli
from tests.reference import ReferenceForward, assert_matches, assert_same_features
from tests.synth import voiced, write_clip

REPO = Path(__file__).resolve().parents[1]


def test_layer_norm_store_equals_unbatched_forward(layer_store, mixed_corpus, tiny_backbone):
    store = FeatureStore.open(layer_store)
    files = sorted(p for p in mixed_corpus.rglob("*") if p.is_file())
    expected_ids = sorted(p.relative_to(mixed_corpus).with_suffix("").as_posix() for p in files)
    assert sorted(store.clip_ids) == expected_ids
    reference = ReferenceForward(tiny_backbone)
    for path in files:
        clip_id = path.relative_to(mixed_corpus).with_suffix("").as_posix()
        assert_matches(store, clip_id, reference(read_16k_mono(path)))
        info = store.clip_info(clip_id)
        assert info["source_path"] == str(path.resolve())
        assert info["duration_s"] == pytest.approx(sf.info(str(path)).duration)


def test_group_norm_store_equals_unbatched_forward(mixed_corpus, tiny_group_backbone, tmp_path):
    run_cli(
        "extract",
        mixed_corpus,
        tmp_path / "g.zarr",
        "--model",
        tiny_group_backbone,
        "--batch-seconds",
        "5",
        "--quiet",
    )
    store = FeatureStore.open(tmp_path / "g.zarr")
    assert store.spec["backbone"]["feat_extract_norm"] == "group"
    reference = ReferenceForward(tiny_group_backbone)
    for path in sorted(p for p in mixed_corpus.rglob("*") if p.is_file()):
        clip_id = path.relative_to(mixed_corpus).with_suffix("").as_posix()
        assert_matches(store, clip_id, reference(read_16k_mono(path)))


@pytest.mark.slow
def test_two_workers_give_the_same_store(layer_store, mixed_corpus, tiny_backbone, tmp_path):
    run_cli(
        "extract",
        mixed_corpus,
        tmp_path / "two.zarr",
        "--model",
        tiny_backbone,
        "--workers",
        "2",
        "--part-seconds",
        "2",
        "--quiet",
    )
    one, two = FeatureStore.open(layer_store), FeatureStore.open(tmp_path / "two.zarr")
    assert len(two.complete_parts) > 2  # the work really was split
    assert_same_features(one, two)
    assert run_cli("store", "verify", tmp_path / "two.zarr").exit_code == 0


def test_append_and_rerun_do_only_missing_work(mixed_corpus, tiny_backbone, tmp_path):
    records = build_manifest(mixed_corpus)
    save_manifest(records[:4], tmp_path / "first.csv")
    save_manifest(records, tmp_path / "all.csv")
    store = tmp_path / "s.zarr"
    first = json.loads(
        run_cli(
            "extract", tmp_path / "first.csv", store, "--model", tiny_backbone, "--json", "--quiet"
        ).output
    )
    assert first["extracted"] == 4
    part_files = {p: p.read_bytes() for p in (store / "parts").rglob("*") if p.is_file()}
    second = json.loads(
        run_cli("extract", tmp_path / "all.csv", store, "--json", "--quiet").output
    )  # --model defaults to the store's
    assert (second["already_stored"], second["extracted"]) == (4, len(records) - 4)
    assert all(p.read_bytes() == content for p, content in part_files.items())
    third = json.loads(run_cli("extract", tmp_path / "all.csv", store, "--json", "--quiet").output)
    assert (third["already_stored"], third["extracted"], third["parts_written"]) == (
        len(records),
        0,
        [],
    )
    assert sorted(FeatureStore.open(store).clip_ids) == sorted(r.clip_id for r in records)


def test_store_with_another_spec_is_refused(layer_store, mixed_corpus, tiny_group_backbone):
    before = FeatureStore.open(layer_store).clip_ids
    result = run_cli("extract", mixed_corpus, layer_store, "--model", tiny_group_backbone, expect=2)
    assert "fingerprint" in result.output and "weights_sha256" in result.output
    crop = run_cli("extract", mixed_corpus, layer_store, "--max-seconds", "1", expect=2)
    assert "max_seconds: None vs 1.0" in crop.output
    assert FeatureStore.open(layer_store).clip_ids == before


def _complete_parts(store: Path) -> int:
    """Parts committed to the store's root index so far."""
    try:
        attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return 0
    return len(attrs.get("emi", {}).get("parts", {}))


def _extract_args(manifest, store, backbone) -> list[str]:
    """``emi extract``'s arguments for the crash test's runs."""
    return [
        "extract", str(manifest), str(store), "--model", str(backbone),
        "--part-seconds", "1", "--quiet", "--json",
    ]  # fmt: skip


def _extract_cmd(manifest, store, backbone) -> list[str]:
    return [sys.executable, "-m", "cli.main", *_extract_args(manifest, store, backbone)]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tiny_backbone, tmp_path):
    for i in range(40):
        write_clip(tmp_path / "audio" / f"{i:05d}.wav", 1.0 + (i % 5) * 0.5, seed=i)
    save_manifest(build_manifest(tmp_path / "audio"), tmp_path / "clips.csv")
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        _extract_cmd(tmp_path / "clips.csv", killed, tiny_backbone),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _complete_parts(killed) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and workers: a crash
    proc.wait()
    done_before = _complete_parts(killed)
    assert 3 <= done_before < 40, "the run must be killed in the middle"

    rerun = run_cli(*_extract_args(tmp_path / "clips.csv", killed, tiny_backbone))  # here
    summary = json.loads(rerun.stdout)
    assert (
        summary["already_stored"] >= done_before
        and summary["extracted"] == 40 - summary["already_stored"]
    )
    run_cli(*_extract_args(tmp_path / "clips.csv", clean, tiny_backbone))  # uninterrupted

    a, b = FeatureStore.open(killed), FeatureStore.open(clean)
    assert len(a.clip_ids) == len(set(a.clip_ids)) == 40
    assert sorted(a.clip_ids) == sorted(b.clip_ids)
    for clip_id in b.clip_ids:
        for key in ("hidden", "frame_vad", "hidden_mean", "vad_mean", "clip_vad"):
            np.testing.assert_array_equal(getattr(a, key)(clip_id), getattr(b, key)(clip_id))
        assert a.clip_info(clip_id)["sha256"] == b.clip_info(clip_id)["sha256"]
    assert run_cli("store", "verify", killed).exit_code == 0


def test_bad_input_folder(tiny_backbone, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "empty.wav").write_bytes(b"")
    truncated = write_clip(audio / "truncated.wav", 1.0, subtype="PCM_16").read_bytes()
    (audio / "truncated.wav").write_bytes(truncated[: len(truncated) // 2])
    (audio / "random.wav").write_bytes(np.random.default_rng(0).bytes(8000))
    (audio / "text.mp3").write_text("ID3? no: plain text in an mp3 name\n" * 40)
    write_clip(audio / "short.wav", 300 / 16_000)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        x = voiced(0.5)
        x[1000] = value
        sf.write(str(audio / f"{name}.wav"), x, 16_000, subtype="FLOAT")
    good = {
        "six_channels": write_clip(audio / "six_channels.wav", 1.2, channels=6),
        "rate_8k": write_clip(audio / "rate_8k.wav", 1.5, rate_hz=8_000),
        "rate_96k": write_clip(audio / "rate_96k.flac", 1.1, rate_hz=96_000),
        "pcm24": write_clip(audio / "pcm24.wav", 0.9, subtype="PCM_24"),
        "three_minutes": write_clip(audio / "three_minutes.flac", 180.0, seed=5),
        "fine": write_clip(audio / "fine.mp3", 1.0),
    }
    store = tmp_path / "bad.zarr"
    result = run_cli(
        "extract", audio, store, "--model", tiny_backbone, "--window-seconds", "30", expect=3
    )
    expected_reasons = {
        "empty": "empty file",
        "truncated": "truncated WAV",
        "random": "unreadable",
        "text": "unreadable",
        "short": "too short",
        "nan": "NaN or infinite",
        "inf": "NaN or infinite",
    }
    for clip_id in expected_reasons:
        assert f"  {clip_id}: " in result.output
    info = json.loads(run_cli("store", "info", store, "--json").output)
    reasons = {f["clip_id"]: f["reason"] for f in info["failed"]}
    assert set(reasons) == set(expected_reasons)
    for clip_id, reason in expected_reasons.items():
        assert reason in reasons[clip_id], (clip_id, reasons[clip_id])

    opened = FeatureStore.open(store)
    assert sorted(opened.clip_ids) == sorted(good)
    reference = ReferenceForward(tiny_backbone)
    for clip_id, path in good.items():
        if clip_id in ("three_minutes", "fine"):
            continue
        assert_matches(opened, clip_id, reference(read_16k_mono(path)))
    # mp3: the same decoder on both sides, the forward is what is compared
    assert_matches(opened, "fine", reference(read_16k_mono(good["fine"])))
    # 3 minutes in 30 s windows: each window equals its own unbatched forward
    long = read_16k_mono(good["three_minutes"])
    normed = (long - long.mean()) / np.sqrt(long.var() + 1e-7)
    segments = plan_segments(0, len(long), window_seconds=30)
    assert len(segments) == 6
    expected = np.concatenate(
        [
            reference(normed[s.sample_start : s.sample_end].astype(np.float32), normalised=True)[
                "hidden"
            ]
            for s in segments
        ]
    )
    np.testing.assert_allclose(
        opened.hidden("three_minutes").astype(np.float32), expected, rtol=2**-10, atol=1e-4
    )
    assert run_cli("store", "verify", store).exit_code == 0


def test_changed_file_is_named_not_recomputed(tiny_backbone, tmp_path):
    for i in range(3):
        write_clip(tmp_path / "audio" / f"{i:05d}.wav", 1.0, seed=i)
    store = tmp_path / "s.zarr"
    run_cli("extract", tmp_path / "audio", store, "--model", tiny_backbone, "--quiet")
    before = FeatureStore.open(store).hidden("00001").copy()
    write_clip(tmp_path / "audio" / "00001.wav", 1.0, seed=99)  # the file changes
    result = run_cli("extract", tmp_path / "audio", store, "--json", "--quiet")
    assert json.loads(result.stdout)["changed_sources"] == ["00001"]
    np.testing.assert_array_equal(FeatureStore.open(store).hidden("00001"), before)
    text = run_cli("extract", tmp_path / "audio", store, "--quiet")
    assert "the files of 1 stored clip changed" in text.output and "00001" in text.output
