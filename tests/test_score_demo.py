"""`emi score` and `emi demo`: the whole job from audio folders to CSVs."""

import csv
import json
import shlex
import sys

import httpx
import numpy as np
import pytest

from featurestore.store import FeatureStore
from manifests.synthetic import write_corpus
from service.demo import serve_arguments
from tests.conftest import run_cli
from tests.served import Hosted


def test_score_extracts_missing_clips_and_predicts(tiny_backbone, tmp_path):
    splits = write_corpus(tmp_path / "corpus", clips=24, seed=2, min_seconds=1.0, max_seconds=2.0)
    store = tmp_path / "feats.zarr"
    run_cli("extract", tmp_path / "corpus" / "audio", store, "--model", tiny_backbone, "--quiet")
    run_cli(
        "train",
        store,
        "--labels",
        splits["train"],
        "--val-labels",
        splits["valid"],
        "--out",
        tmp_path / "head",
        "--preset",
        "compact",
        "--epochs",
        "2",
        "--quiet",
    )
    new = tmp_path / "new_audio"
    new.mkdir()
    for name in ("00001", "00002", "00003"):
        (new / f"{name}.wav").write_bytes((tmp_path / "corpus/audio" / f"{name}.wav").read_bytes())
    (new / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    scored = tmp_path / "scores.csv"
    result = run_cli(
        "score",
        new,
        "--head",
        tmp_path / "head",
        "-o",
        scored,
        "--store",
        tmp_path / "score.zarr",
        "--quiet",
        expect=3,
    )
    assert "broken" in result.output
    rows = list(csv.DictReader(scored.open()))
    assert [r["clip_id"] for r in rows] == ["00001", "00002", "00003"]
    targets = json.loads((tmp_path / "head/config.json").read_text())["targets"]
    assert list(rows[0]) == ["clip_id", *targets]
    assert all(0.0 <= float(r[t]) <= 1.0 for r in rows for t in targets)
    # Same features as the training store: identical predictions from `emi predict`.
    run_cli("predict", store, "--head", tmp_path / "head", "-o", tmp_path / "train.csv")
    by_id = {r["clip_id"]: r for r in csv.DictReader((tmp_path / "train.csv").open())}
    for r in rows:
        for t in targets:
            assert abs(float(r[t]) - float(by_id[r["clip_id"]][t])) < 1e-5
    again = run_cli(
        "score",
        new,
        "--head",
        tmp_path / "head",
        "-o",
        scored,
        "--store",
        tmp_path / "score.zarr",
        "--quiet",
        expect=3,
    )
    assert "0 extracted, 3 reused" in again.output


@pytest.mark.slow
def test_demo_runs_offline_says_what_it_measures_and_serves_what_it_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(
        "demo", "--out", "demo", "--clips", "30", "--size", "tiny", "--epochs", "2",
        "--layers", "all",
    )  # fmt: skip
    out = result.output
    assert "random" in out and "nothing about emotion recognition" in out
    assert "--model audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim" in out
    for target in ("Admiration", "Empathic Pain", "Joy", "mean"):
        assert f"  {target}" in out
    demo = tmp_path / "demo"
    assert (demo / "heads/compact/learning_curves.png").stat().st_size > 1000
    assert (demo / "test_compact_pred_vs_true.png").stat().st_size > 1000
    rows = list(csv.DictReader((demo / "test_predictions.csv").open()))
    assert len(rows) == 6 and "compact/Joy" in rows[0] and "mean-linear/Joy" in rows[0]
    # --layers all: each head again on a learned weighting of the stored layers 0-2
    assert "compact-weighted/Joy" in rows[0] and "mean-linear-weighted/Joy" in rows[0]
    assert "learned layer weights 0: " in out
    weights = json.loads((demo / "heads/compact-weighted/metrics.json").read_text())
    assert set(weights["layer_weights"]) == {"0", "1", "2"}
    _serve_what_the_demo_printed(tmp_path, out, clips=30)


@pytest.mark.slow
def test_a_second_demo_just_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = ("demo", "--out", "demo", "--clips", "20", "--size", "tiny", "--epochs", "1")
    run_cli(*quick)
    again = run_cli(*quick).output
    assert "reusing its store" in again and "0 clips extracted, 20 already stored" in again
    for line in ("best epoch", "heads/compact/", "test_predictions.csv", "feats.zarr"):
        assert line in again
    other = run_cli(*quick[:4], "24", *quick[5:]).output
    assert "other settings; rewriting it" in other and "24 clips extracted" in other
    rows = list(csv.DictReader((tmp_path / "demo" / "test_predictions.csv").open()))
    assert len(rows) == 5  # the 24-clip corpus's test split, not a mix of both runs


class _ServedDemo(Hosted):
    """``emi serve`` with exactly the options the demo printed (on a thread, a free port)."""

    def __init__(self, folder, options: list[str]):
        super().__init__(folder, [])
        self.printed = options

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "serve", *self.printed, "--port", str(self.port)]


def _serve_what_the_demo_printed(tmp_path, out: str, clips: int) -> None:
    """The demo's printed ``emi serve`` command, run: the demo's heads and store listed,
    the page answered, and a score, an extract and a train job succeed (the score job
    reading the demo's store, computing nothing)."""
    printed = [line for line in out.splitlines() if " serve --stores " in line]
    assert len(printed) == 1
    words = shlex.split(printed[0])
    options = words[words.index("serve") + 1 :]
    assert options == serve_arguments("demo")  # the printed command is the one ./run serve runs
    demo = tmp_path / "demo"
    with _ServedDemo(tmp_path, options).start() as served:
        client = served.client()
        assert {h["name"] for h in client.heads()} >= {"compact", "mean-linear"}
        assert [s["name"] for s in client.stores()] == ["feats"]
        assert "<main" in httpx.get(served.url + "/").text  # the page
        jobs = {
            "score": {"source": str(demo / "audio"), "heads": ["compact", "mean-linear"]},
            "extract": {"source": str(demo / "audio"), "store": "again"},
            "train": {
                "store": "feats",
                "labels": str(demo / "train_split.csv"),
                "val_labels": str(demo / "valid_split.csv"),
                "name": "served",
                "preset": "mean-linear",
            },
        }
        ended = {}
        for kind, request in jobs.items():
            job = client.wait(client.submit({"kind": kind, **request})["id"], poll_s=0.2)
            assert job["state"] == "succeeded", (kind, job)
            ended[kind] = job
        assert "served" in {h["name"] for h in client.heads()}
        # the demo's audio is in its store already: read there, not computed again
        scored = ended["score"]["result"]
        assert (scored["extracted"], scored["reused"], scored["predicted"]) == (0, clips, clips)
        clip = httpx.get(f"{served.url}/v1/jobs/{ended['score']['id']}/clip",
                         params={"clip_id": "00003"}).json()  # fmt: skip
        frames = FeatureStore.open(demo / "feats.zarr").frame_vad("00003")
        assert np.allclose(clip["frame_vad"]["arousal"], frames[:, 0], atol=1e-4)
    assert (demo / "again.zarr").is_dir() and (demo / "service-state").is_dir()


def test_run_serve_names_a_folder_without_a_demo_run(tmp_path, capsys):
    from cli.demo_serve import main

    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit) as ended:
        main([str(tmp_path / "mine"), "--port", "0"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mine'} holds no finished emi demo run" in err and "emi demo --out" in err
