"""What a user reads when something is wrong: the file a misspelled target is missing
from and the column meant, the heads inside a folder given as one head, which heads
read which features, and a progress line that says its state once."""

from __future__ import annotations

import pytest

from tests.conftest import labelled_store, run_cli, train_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backbone):
    return labelled_store(tmp_path_factory.mktemp("messages"), tiny_backbone, clips=12, seed=4)


def test_a_misspelled_target_names_the_file_and_the_column_meant(made, tmp_path):
    refused = train_cli(made, tmp_path / "h", "--targets", "Admiraton,Joy", expect=2)
    assert "Admiraton: not in train_split.csv; did you mean Admiration?" in refused.output
    assert "Traceback" not in refused.output


def test_a_folder_of_heads_given_as_a_head_lists_the_heads_inside(made, tmp_path):
    heads = made["folder"]  # holds mean-linear/ (a head) beside the corpus and store
    refused = run_cli("predict", made["store"], "--head", heads, "-o", tmp_path / "p.csv",
                      expect=2)  # fmt: skip
    assert "a folder of heads (mean-linear), not a head" in refused.output
    assert f"--head {heads / 'mean-linear'}" in refused.output


def test_heads_of_different_features_are_named_with_their_features(made, tmp_path, tiny_backbone):
    cropped = tmp_path / "cropped.zarr"  # the same audio, cut at 1 s: other features
    run_cli("extract", made["audio"], cropped, "--model", tiny_backbone, "--max-seconds", "1",
            "--quiet")  # fmt: skip
    run_cli("train", cropped, "--labels", made["train"], "--val-labels", made["valid"],
            "--out", tmp_path / "short", "--preset", "mean-linear", "--quiet")  # fmt: skip
    refused = run_cli("score", made["audio"], "--head", made["head"], "--head",
                      tmp_path / "short", "-o", tmp_path / "s.csv", expect=None)  # fmt: skip
    assert refused.exit_code != 0
    text = " ".join(refused.output.split())
    assert "trained on different features (mean-linear: features" in text
    assert "short: features" in text


def test_the_progress_line_says_the_state_once():
    from cli.jobs_cmd import progress_words

    done = {"state": "succeeded", "progress": {"stage": "succeeded"}}
    assert progress_words(done) == "succeeded"
    running = {"state": "running", "progress": {"stage": "extracting"}}
    assert progress_words(running) == "running (extracting)"
    assert progress_words({"state": "queued", "progress": {}}) == "queued"
