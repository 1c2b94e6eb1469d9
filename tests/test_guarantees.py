"""What emi promises besides the store's checks: it deletes only what it wrote, never
serves features of audio that changed, writes results whole, and listens on loopback."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from featurestore.store import FeatureStore
from models.head_files import load_head
from tests.conftest import labelled_store, run_cli, train_cli
from tests.synth import write_clip

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_backbone):
    """A labelled corpus, its store and a compact head."""
    return labelled_store(
        tmp_path_factory.mktemp("scored"), tiny_backbone, clips=16, seed=9, presets=("compact",)
    )


# -------------------------------------------------------- emi deletes only what it wrote


def _not_a_store(kind: str, tmp_path: Path, audio: Path) -> Path:
    if kind == "non-empty folder":
        target = tmp_path / "results"
        (target / "sub").mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
        (target / "sub" / "table.csv").write_text("a,b\n1,2\n")
        return target
    if kind == "the audio folder itself":
        target = tmp_path / "audio_copy"
        shutil.copytree(audio, target)
        (target / "clips.csv").write_text("clip_id,path\n")
        return target
    if kind == "a file":
        target = tmp_path / "feats.zarr"
        target.write_bytes(b"not a store")
        return target
    if kind == "another zarr group":
        import zarr

        target = tmp_path / "other.zarr"
        zarr.open_group(str(target), mode="w").attrs["project"] = "theirs"
        return target
    raise AssertionError(kind)


KINDS = ["non-empty folder", "the audio folder itself", "a file", "another zarr group"]


@pytest.mark.parametrize("kind", KINDS)
def test_extract_and_score_refuse_a_path_that_is_not_a_store(kind, scored, tiny_backbone, tmp_path):
    target = _not_a_store(kind, tmp_path, scored["audio"])
    before = snapshot(target.parent)
    source = target if kind == "the audio folder itself" else scored["audio"]
    result = run_cli("extract", source, target, "--model", tiny_backbone, "--quiet", expect=2)
    assert str(target) in result.output and "Traceback" not in result.output
    score = run_cli(
        "score",
        scored["audio"],
        "--head",
        scored["head"],
        "--store",
        target,
        "-o",
        tmp_path / "out.csv",
        expect=2,
    )
    assert str(target) in score.output
    assert snapshot(target.parent) == before  # every byte, every file, as it was


def test_train_refuses_an_out_folder_that_is_not_a_head(scored, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = train_cli(scored, out, expect=2)
    assert "not a head folder" in result.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_an_empty_folder_becomes_a_store(scored, tiny_backbone, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("extract", scored["audio"], empty, "--model", tiny_backbone, "--quiet")
    assert len(FeatureStore.open(empty)) == 16


# -------------------------------------------------------------------------- never stale


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_rescore_after_a_file_changed_equals_a_fresh_run(
    scored, tiny_backbone, tmp_path, monkeypatch
):
    folder = tmp_path / "audio"
    shutil.copytree(scored["audio"], folder)
    user_store = tmp_path / "user.zarr"  # made from this folder: refreshed from its files
    run_cli("extract", folder, user_store, "--model", tiny_backbone, "--quiet")
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    head = scored["head"]
    run_cli("score", folder, "--head", head, "-o", tmp_path / "before.csv", "--quiet")
    # Overwrite one file with other audio: same name, other content.
    write_clip(folder / "00003.wav", 1.7, seed=99, f0_hz=240)

    run_cli("score", folder, "--head", head, "-o", tmp_path / "cached.csv", "--quiet")
    run_cli("score", folder, "--head", head, "--store", user_store, "-o", tmp_path / "user.csv")
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "fresh-cache"))
    run_cli("score", folder, "--head", head, "-o", tmp_path / "fresh.csv", "--quiet")

    fresh = _csv(tmp_path / "fresh.csv")
    assert _csv(tmp_path / "cached.csv") == fresh
    assert _csv(tmp_path / "user.csv") == fresh
    changed = [r for r in _csv(tmp_path / "before.csv") if r["clip_id"] == "00003"]
    assert changed != [r for r in fresh if r["clip_id"] == "00003"]  # it did change
    store = FeatureStore.open(user_store)
    assert (
        store.clip_info("00003")["sha256"]
        != FeatureStore.open(scored["store"]).clip_info("00003")["sha256"]
    )


def test_extract_warns_of_changed_files_and_refreshes_on_request(scored, tiny_backbone, tmp_path):
    folder = tmp_path / "audio"
    shutil.copytree(scored["audio"], folder)
    store = tmp_path / "s.zarr"  # made from this folder: its files' changes are refreshes
    run_cli("extract", folder, store, "--model", tiny_backbone, "--quiet")
    write_clip(folder / "00005.wav", 1.2, seed=77, f0_hz=200)
    warned = run_cli("extract", folder, store, "--quiet")
    assert "00005" in warned.output and "--refresh-changed" in warned.output
    refreshed = json.loads(
        run_cli("extract", folder, store, "--refresh-changed", "--json", "--quiet").output
    )
    assert (refreshed["refreshed"], refreshed["extracted"]) == (1, 1)
    reopened = FeatureStore.open(store)
    assert len(reopened) == 16 and run_cli("store", "verify", store).exit_code == 0
    assert reopened.frames("00005") == 1.2 * 50 - 1  # the new file's frames


# ---------------------------------------------------------------------- atomic results


def test_a_crash_while_retraining_leaves_the_old_head(scored, tmp_path, monkeypatch):
    head = tmp_path / "head"
    shutil.copytree(scored["head"], head)
    before = snapshot(head)
    import models.plots

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(models.plots, "plot_ridge_penalty", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train_cli(scored, head, "--preset", "mean-linear", "--overwrite", expect=None)
    assert snapshot(head) == before
    assert load_head(head).config["preset"] == "compact"
    assert [p.name for p in tmp_path.iterdir()] == ["head"]  # no temporary left behind


def test_predict_refuses_a_head_whose_weights_were_replaced(scored, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(scored["head"], first)
    train_cli(scored, second, "--preset", "compact", "--seed", "5")
    shutil.copy(second / "model.safetensors", first / "model.safetensors")
    result = run_cli(
        "predict", scored["store"], "--head", first, "-o", tmp_path / "p.csv", expect=2
    )
    assert "not the weights" in result.output and not (tmp_path / "p.csv").exists()


def test_export_is_whole_or_absent(scored, tmp_path):
    out = tmp_path / "f.h5"
    out.write_bytes(b"an earlier export")
    store = tmp_path / "s.zarr"
    shutil.copytree(scored["store"], store)
    part = FeatureStore.open(store).complete_parts[-1]
    shutil.rmtree(store / "parts" / part / "hidden" / "c")  # damage found mid-export
    run_cli("store", "export", store, out, expect=2)
    assert out.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".h5")] == ["f.h5"]


# ------------------------------------------------------------ nothing beyond loopback


def _listeners(pid: int) -> set[str]:
    found = set()
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(conn.laddr.ip)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_extract_listens_on_loopback_only_and_quiet_is_quiet(workers, tiny_backbone, tmp_path):
    for i in range(8):
        write_clip(tmp_path / "audio" / f"{i:05d}.wav", 1.5, seed=i)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "extract",
            str(tmp_path / "audio"),
            str(tmp_path / "s.zarr"),
            "--model",
            str(tiny_backbone),
            "--workers",
            workers,
            "--part-seconds",
            "1",
            "--quiet",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    while proc.poll() is None:
        seen |= _listeners(proc.pid)
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen <= {"127.0.0.1", "::1"}, seen
    if workers == "2":
        assert seen, "worker processes talk over loopback TCP: the poll must have seen it"
    assert err == ""  # --quiet: no warnings, no progress
    assert len(FeatureStore.open(tmp_path / "s.zarr")) == 8
    assert np.isfinite(FeatureStore.open(tmp_path / "s.zarr").clip_vad("00000")).all()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train_split.csv").write_text("Filename,Joy\nmy,0.5\n")
    before = snapshot(tmp_path)
    result = run_cli("demo", "--out", tmp_path / "mine", "--clips", "20", expect=2)
    assert "not an emi demo folder" in result.output
    assert snapshot(tmp_path) == before


def test_train_refuses_an_existing_head_unless_overwrite(scored, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(scored["head"], head)
    before = snapshot(head)
    refused = train_cli(scored, head, "--preset", "mean-linear", expect=2)
    assert "already holds a head" in refused.output and "--overwrite" in refused.output
    assert snapshot(head) == before
    train_cli(scored, head, "--preset", "mean-linear", "--overwrite")
    assert load_head(head).config.preset == "mean-linear"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"heads": [{"name": "head", "preset": "mean-linear"}]}))
    again = train_cli(scored, tmp_path, "--grid", grid, expect=2)
    assert "already holds a head" in again.output
