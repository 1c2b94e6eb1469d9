"""A new user's first hour: checks before work, sorted outputs, words that mean one thing."""

import csv
import json
import shutil

from manifests import build_manifest, save_manifest
from tests.conftest import run_cli
from tests.test_guarantees import scored, snapshot  # noqa: F401  (module fixture)


def test_score_refuses_another_backbone_before_any_work(
    scored,  # noqa: F811
    tiny_group_backbone,
    tmp_path,
    monkeypatch,
):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EMI_CACHE", str(cache))
    run_cli("score", scored["audio"], "--head", scored["head"], "-o", tmp_path / "a.csv")
    before = snapshot(cache / "score")  # the score store (not the weights-hash cache)
    refused = run_cli(
        "score", scored["audio"], "--head", scored["head"], "-o", tmp_path / "b.csv",
        "--model", tiny_group_backbone, expect=2,
    )  # fmt: skip
    assert "Nothing was extracted" in refused.output and "fingerprint" in refused.output
    assert snapshot(cache / "score") == before and not (tmp_path / "b.csv").exists()
    run_cli("score", scored["audio"], "--head", scored["head"], "-o", tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text() == (tmp_path / "a.csv").read_text()


def _ids(path) -> list[str]:
    with open(path, newline="") as f:
        return [r["clip_id"] for r in csv.DictReader(f)]


def test_every_csv_is_sorted_by_clip_id(scored, tmp_path):  # noqa: F811
    audio = tmp_path / "audio"
    shutil.copytree(scored["audio"], audio)
    (audio / "00003.wav").rename(audio / "zz-last.wav")
    (audio / "00007.wav").rename(audio / "aa-first.wav")
    records = build_manifest(audio)
    save_manifest(list(reversed(records)), tmp_path / "m.csv")
    assert _ids(tmp_path / "m.csv") == sorted(_ids(tmp_path / "m.csv"))
    store = tmp_path / "s.zarr"
    run_cli("extract", tmp_path / "m.csv", store, "--quiet", "--model",
            json.loads((scored["head"] / "config.json").read_text())["store"]["spec"]
            ["backbone"]["ref"])  # fmt: skip
    run_cli("predict", store, "--head", scored["head"], "-o", tmp_path / "p.csv")
    run_cli("score", audio, "--head", scored["head"], "--store", store, "-o", tmp_path / "s.csv")
    for name in ("p.csv", "s.csv"):
        ids = _ids(tmp_path / name)
        assert ids == sorted(ids) and "aa-first" in ids and "zz-last" in ids


def test_info_and_model_info_say_what_they_mean(scored, tiny_backbone):  # noqa: F811
    info = run_cli("store", "info", scored["store"]).output
    assert "None" not in info and "no crop" in info
    model = json.loads(run_cli("model", "info", tiny_backbone).output)
    assert "checkpoint_hash" in model and "fingerprint" not in model
    head = json.loads((scored["head"] / "config.json").read_text())
    assert head["training"]["mixed_precision"] is False  # trained on a CPU: none was used
