"""Trust, second pass: clip identity across folders, every field of what is read
checked, and runs that end with a message instead of a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from tests.conftest import labelled_store, run_cli
from tests.synth import write_clip


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backbone) -> dict:
    """A labelled store of 16 clips and a mean-linear head on it."""
    return labelled_store(
        tmp_path_factory.mktemp("trust"), tiny_backbone, clips=16, seed=5, max_seconds=1.5
    )


def copy_store(made: dict, to: Path) -> Path:
    import shutil

    shutil.copytree(made["store"], to)
    return to


# -- 1. a stored clip is never replaced by another folder's file of the same name ----------


def test_score_never_replaces_a_stored_clip_with_another_folders_file(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    before = FeatureStore.open(store).hidden("00003").copy()
    other = tmp_path / "other"
    write_clip(other / "00003.wav", 1.2, seed=77, f0_hz=300)  # another recording, same name
    (other / "00004.wav").write_bytes((made["audio"] / "00004.wav").read_bytes())  # same content
    result = run_cli(
        "score", other, "--head", made["head"], "--store", store, "-o", tmp_path / "p.csv",
        expect=3,
    )  # fmt: skip
    assert "00003" in result.output and "already stored from another file" in result.output
    assert str(made["audio"] / "00003.wav") in result.output
    opened = FeatureStore.open(store)
    np.testing.assert_array_equal(opened.hidden("00003"), before)
    assert opened.clip_info("00003").source_path == str(made["audio"] / "00003.wav")
    # the same content from another folder is the same clip: scored from the store
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["clip_id"] for r in rows] == ["00004"]
    assert run_cli("store", "verify", store).exit_code == 0
    # extracting the training folder again: nothing changed, nothing blamed
    again = run_cli("extract", made["audio"], store, "--json", "--quiet")
    summary = json.loads(again.stdout)
    assert summary["changed_sources"] == [] and summary["other_sources"] == []
    assert summary["extracted"] == 0


def test_extract_refuses_another_source_unless_asked(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    other = tmp_path / "other"
    write_clip(other / "00002.wav", 1.0, seed=78, f0_hz=250)
    refused = run_cli("extract", other, store, "--refresh-changed", "--json", "--quiet", expect=3)
    summary = json.loads(refused.stdout)
    assert summary["other_sources"] == ["00002"] and summary["refreshed"] == 0
    assert "--replace-other-sources" in summary["failed"][0]["reason"]
    assert FeatureStore.open(store).clip_info("00002").source_path.startswith(str(made["audio"]))
    run_cli("extract", other, store, "--replace-other-sources", "--quiet")
    assert FeatureStore.open(store).clip_info("00002").source_path == str(other / "00002.wav")
    # the same path with new content is a change of that file: refreshed when asked
    write_clip(other / "00002.wav", 1.0, seed=79, f0_hz=200)
    changed = json.loads(run_cli("extract", other, store, "--json", "--quiet").stdout)
    assert changed["changed_sources"] == ["00002"] and changed["other_sources"] == []


# -- 7. plain readers see a missing chunk as NaN (floats) or -1 (counts), not zeros -------


def test_a_deleted_chunk_reads_as_nan_in_plain_zarr(made, tmp_path):
    import zarr

    store = copy_store(made, tmp_path / "s.zarr")
    part = FeatureStore.open(store).complete_parts[0]
    for array in ("hidden", "vad_mean", "frames"):
        for chunk in (store / "parts" / part / array / "c").rglob("*"):
            if chunk.is_file():
                chunk.unlink()
    group = zarr.open_group(store / "parts" / part, mode="r")
    assert np.isnan(group["hidden"][:]).all() and np.isnan(group["vad_mean"][:]).all()
    assert (group["frames"][:] == -1).all()


# -- 3. metrics of non-finite predictions are an error, never a perfect score ------------


def test_nan_predictions_are_refused_by_metrics_and_evaluate(made):
    import torch

    from models.head_files import load_head
    from models.metrics import MetricError, ccc, evaluate, pearson
    from models.prediction import predict

    true = np.random.default_rng(0).random((20, 2))
    nan = np.full((20, 2), np.nan)
    assert np.isnan(ccc(nan, true)).all() and np.isnan(pearson(nan, true)).all()
    with pytest.raises(MetricError, match="NaN or inf for a, b"):
        evaluate(nan, true, ["a", "b"])
    head = load_head(made["head"])
    with torch.no_grad():
        next(p for p in head.model.parameters() if p.ndim == 1).fill_(float("nan"))
    with pytest.raises(Exception, match="predicted NaN or inf"):
        predict(made["store"], [head])
    from models.evaluation import evaluate_heads

    with pytest.raises(Exception, match="predicted NaN or inf"):
        evaluate_heads(made["store"], [head], made["test"], resamples=10)


# -- 5. a head's card is checked against its rules and covered by its checksum ------------


def _edits() -> dict:
    def set_in(path, value):
        def edit(card):
            node = card
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        return edit

    def drop(key):
        return lambda card: card.pop(key)

    return {
        # (edit, the field the rules name; None: only the checksum can tell)
        "dropout 5": (set_in(("head", "dropout"), 5), "head.dropout"),
        "lstm_layers 0": (set_in(("head", "head_type"), "fusion"), "head.lstm_hidden"),
        "input_dim '35'": (set_in(("head", "input_dim"), "35"), "head.input_dim"),
        "input_dim 36": (set_in(("head", "input_dim"), 36), "head.input_dim"),
        "layers ['x']": (set_in(("head", "layers"), ["x"]), "head.layers"),
        "layers [2]": (set_in(("head", "layers"), [2]), "head.layers"),
        "max_frames 0": (set_in(("training", "max_frames"), 0), "training.max_frames"),
        "seven targets": (
            lambda c: c["targets"].append("Seventh"),
            "head.num_targets",
        ),
        "duplicated target": (set_in(("targets", 1), "Admiration"), "targets"),
        "foreign fingerprint": (set_in(("store", "fingerprint"), "ab" * 32), "store.fingerprint"),
        "joined removed": (drop("joined"), "joined"),
        "format_version 99": (set_in(("format_version",), 99), "format_version"),
        "renamed target": (set_in(("targets", 0), "Awe"), None),
    }


@pytest.mark.parametrize("edit", list(_edits()))
def test_an_edited_head_card_is_refused_naming_what_is_wrong(edit, made, tmp_path):
    import shutil

    from models.card_rules import card_digest

    change, field = _edits()[edit]
    head = tmp_path / "head"
    shutil.copytree(made["head"], head)
    card = json.loads((head / "config.json").read_text())
    assert card["format_version"] == 2 and card["card_sha256"] == card_digest(card)
    change(card)
    (head / "config.json").write_text(json.dumps(card))
    out = tmp_path / "p.csv"
    refused = run_cli("predict", made["store"], "--head", head, "-o", out, expect=2)
    assert "Traceback" not in refused.output and not out.exists()
    if edit != "format_version 99":
        assert "card_sha256" in refused.output, refused.output
    if field is None:
        return
    # the same edit with the checksum made to match: the rules name the field
    card["card_sha256"] = card_digest(card)
    (head / "config.json").write_text(json.dumps(card))
    named = run_cli("predict", made["store"], "--head", head, "-o", out, expect=2)
    assert f"field {field!r}" in named.output, named.output
    assert run_cli("heads", "compare", head, expect=2).exit_code == 2


def test_a_format_1_card_still_loads(made, tmp_path):
    import shutil

    head = tmp_path / "old"
    shutil.copytree(made["head"], head)
    card = json.loads((head / "config.json").read_text())
    card.pop("card_sha256")
    card["format_version"] = 1
    (head / "config.json").write_text(json.dumps(card))
    new = run_cli("predict", made["store"], "--head", made["head"], "-o", tmp_path / "a.csv")
    old = run_cli("predict", made["store"], "--head", head, "-o", tmp_path / "b.csv")
    assert new.exit_code == old.exit_code == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


# -- 6. samples too large to normalise are a per-clip failure, not silence ----------------


def test_huge_float_samples_fail_their_clip_with_the_reason(tiny_backbone, tmp_path):
    import soundfile as sf

    audio = tmp_path / "audio"
    write_clip(audio / "fine.wav", 1.0, seed=1)
    t = np.arange(16000) / 16000
    sf.write(audio / "huge.wav", (1e30 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
             16000, subtype="FLOAT")  # fmt: skip
    with _no_runtime_warning():
        result = run_cli("extract", audio, tmp_path / "s.zarr", "--model", tiny_backbone,
                         "--json", "--quiet", expect=3)  # fmt: skip
    summary = json.loads(result.stdout)
    [failure] = summary["failed"]
    assert failure["clip_id"] == "huge" and "too large to normalise" in failure["reason"]
    assert FeatureStore.open(tmp_path / "s.zarr").clip_ids == ["fine"]


def _no_runtime_warning():
    import warnings

    class Guard:
        def __enter__(self):
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("error", RuntimeWarning)

        def __exit__(self, *exc):
            return self._catch.__exit__(*exc)

    return Guard()


# -- 18. weights keep the umask's mode, as every other file does --------------------------


def test_weights_files_are_readable_as_the_umask_says(made, tmp_path):
    import os

    from manifests.atomic import current_umask

    wanted = 0o666 & ~current_umask()
    for folder in (made["head"], tmp_path / "model"):
        if folder == tmp_path / "model":
            run_cli("model", "init-random", folder, "--size", "tiny")
        for file in folder.iterdir():
            assert os.stat(file).st_mode & 0o777 == wanted, file


# -- 8, 9. a full disk ends with a message, never a wedged store --------------------------


def _disk_full(*args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_creating_a_store_leaves_nothing_wedged(
    made, tiny_backbone, tmp_path, monkeypatch
):
    import featurestore.location

    store = tmp_path / "new.zarr"
    with monkeypatch.context() as m:
        m.setattr(featurestore.location, "_write_file", _disk_full)
        full = run_cli("extract", made["audio"], store, "--model", tiny_backbone, "--quiet",
                       expect=2)  # fmt: skip
    assert "No space left" in full.output and "run the same command again" in full.output
    assert not (store / "zarr.json").exists()
    assert not [p for p in store.rglob("*.partial")]
    run_cli("extract", made["audio"], store, "--model", tiny_backbone, "--quiet")
    assert len(FeatureStore.open(store)) == 16


def test_an_empty_root_left_by_earlier_versions_is_replaced(made, tiny_backbone, tmp_path):
    store = tmp_path / "wedged.zarr"
    (store / "parts").mkdir(parents=True)
    (store / "zarr.json").write_bytes(b"")  # what a full disk left before
    (store / "parts" / "zarr.json.123.partial").write_bytes(b"{")
    verify = run_cli("store", "verify", store, expect=2)
    assert "creation never completed" in verify.output
    repaired = run_cli("store", "repair", store)
    assert "never completed" in repaired.output and not (store / "zarr.json").exists()
    (store / "zarr.json").write_bytes(b"")
    run_cli("extract", made["audio"], store, "--model", tiny_backbone, "--quiet")
    assert run_cli("store", "verify", store).exit_code == 0


def test_a_full_disk_in_a_further_sets_part_is_a_clean_failure(made, tmp_path, monkeypatch):
    import featurestore.store

    store = copy_store(made, tmp_path / "s.zarr")
    with monkeypatch.context() as m:
        m.setattr(featurestore.store.PartWriter, "finish", _disk_full)
        failed = run_cli("extract", made["audio"], store, "--feature-set", "more", "--layers",
                         "all", "--json", "--quiet", expect=3)  # fmt: skip
    summary = json.loads(failed.stdout)
    assert summary["extracted"] == 0 and len(summary["failed"]) == 16
    assert "No space left" in summary["failed"][0]["reason"]
    leftover = [p.name for p in (store / "sets" / "more" / "parts").iterdir()]
    assert leftover == ["zarr.json"]  # the failed part's folder is gone
    assert run_cli("store", "verify", store).exit_code == 0


def test_verify_reports_and_repair_removes_temporaries_of_interrupted_writes(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    (store / "zarr.json.999.partial").write_bytes(b'{"half')
    verify = run_cli("store", "verify", store, expect=1)
    assert "zarr.json.999.partial" in verify.output and "interrupted write" in verify.output
    repaired = run_cli("store", "repair", store)
    assert "1 temporary file of interrupted writes" in repaired.output
    assert run_cli("store", "verify", store).exit_code == 0


# -- 10. scores of the cache store: no lock when nothing is missing, else wait for it -----


def test_scores_share_the_cache_store(made, tmp_path, monkeypatch):
    import shutil
    import threading

    from featurestore.location import StoreLocation
    from featurestore.lock import StoreLock
    from service.score import default_score_store

    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for k, wav in enumerate(sorted(made["audio"].glob("*.wav"))[:6]):
        shutil.copy(wav, (first if k < 3 else second) / wav.name)
    run_cli("score", first, "--head", made["head"], "-o", tmp_path / "a.csv", "--quiet")
    fingerprint = json.loads((made["head"] / "config.json").read_text())["store"]["fingerprint"]
    cache = default_score_store(fingerprint)
    assert cache.exists()
    held = StoreLock(StoreLocation.of(cache), purpose="extract").acquire()  # another writer
    try:
        again = run_cli("score", first, "--head", made["head"], "-o", tmp_path / "a2.csv")
        assert "0 extracted, 3 reused" in again.output
        threading.Timer(2.0, held.release).start()
        waited = run_cli("score", second, "--head", made["head"], "-o", tmp_path / "b.csv")
    finally:
        held.release()
    assert "waiting for the writer lock" in waited.output and "3 extracted" in waited.output


# -- 11. a broken symlink is a per-clip problem ----------------------------------------------


def test_a_broken_symlink_is_a_clip_with_its_reason(made, tiny_backbone, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "00001.wav").write_bytes((made["audio"] / "00001.wav").read_bytes())
    (audio / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    built = run_cli("manifest", "build", audio, "-o", tmp_path / "m.csv")
    assert "gone" in built.output and "broken symbolic link" in built.output
    extracted = run_cli("extract", audio, tmp_path / "s.zarr", "--model", tiny_backbone,
                        "--json", "--quiet", expect=3)  # fmt: skip
    [failure] = json.loads(extracted.stdout)["failed"]
    assert failure["clip_id"] == "gone" and "broken symbolic link" in failure["reason"]
    scored = run_cli("score", audio, "--head", made["head"], "-o", tmp_path / "p.csv", expect=3)
    assert "gone: " in scored.output and "Traceback" not in scored.output


# -- 12. what a killed training left is never a head; the next train or heads command tidies -


def test_leftovers_of_killed_trainings_are_not_heads(made, tmp_path, monkeypatch):
    import shutil
    import time

    heads = tmp_path / "heads"
    shutil.copytree(made["head"], heads / "a")
    shutil.copytree(made["head"], heads / ".a.partial-0123abcd")  # killed while writing
    shutil.copytree(made["head"], heads / ".b.old-4567cdef")  # killed between the renames
    card = json.loads((heads / ".a.partial-0123abcd" / "config.json").read_text())
    fresh = run_cli("heads", "compare", heads, "--json")  # a write may still be running
    assert [Path(r["folder"]).name for r in json.loads(fresh.output)["heads"]] == ["a"]
    assert (heads / ".b.old-4567cdef").exists()
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 3600)  # an hour later
    compared = run_cli("heads", "compare", heads, "--json")
    rows = json.loads(compared.output)["heads"]
    assert sorted(Path(r["folder"]).name for r in rows) == ["a", "b"]  # b restored
    assert not (heads / ".a.partial-0123abcd").exists() and (heads / "b" / "config.json").exists()
    assert card["name"]  # (the partial held a whole head: only its name makes it a leftover)


# -- 13. a grid's size is counted before it is expanded; deep nesting is a clear error -----


def test_huge_and_deep_grids_are_refused_at_once(made, tmp_path):
    from tests.conftest import train_cli

    huge = {
        "grid": {k: list(range(100)) for k in ("lr", "seed", "epochs", "dropout", "batch_size")}
    }
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    refused = train_cli(made, tmp_path / "h", "--grid", tmp_path / "huge.json", expect=2)
    assert "10000000000 heads" in refused.output and "limit of 1000" in refused.output
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    deep = train_cli(made, tmp_path / "h", "--grid", tmp_path / "deep.json", expect=2)
    assert "nested too deeply" in deep.output and "Traceback" not in deep.output


# -- 14. an edited set spec blocks that set only; the root rebuilds from the part markers -


def test_an_edited_set_spec_blocks_only_that_set_and_the_root_rebuilds(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    run_cli("extract", made["audio"], store, "--feature-set", "more", "--layers", "all",
            "--quiet")  # fmt: skip
    before = {n: FeatureStore.open(store, feature_set=n).hidden("00001").copy()
              for n in ("more", FeatureStore.open(store).feature_set)}  # fmt: skip
    root = store / "zarr.json"
    node = json.loads(root.read_text())
    node["attributes"]["emi"]["sets"]["more"]["spec"]["window_seconds"] = 5.0
    root.write_text(json.dumps(node))
    first = FeatureStore.open(store)  # the other set is unaffected
    np.testing.assert_array_equal(first.hidden("00001"), before[first.feature_set])
    damaged = FeatureStore.open(store, feature_set="more")  # opens; every read refuses
    with pytest.raises(Exception, match="feature set 'more': its spec"):
        damaged.hidden("00001")
    verify = run_cli("store", "verify", store, expect=1)
    assert "set more" in verify.output and "--rebuild-root" in verify.output
    run_cli("predict", store, "--head", made["head"], "-o", tmp_path / "p.csv")
    # the whole root lost: rebuilt from the markers, both sets as they were
    root.write_bytes(b"garbage")
    assert "--rebuild-root" in run_cli("store", "verify", store, expect=2).output
    rebuilt = run_cli("store", "repair", store, "--rebuild-root")
    assert "rebuilt the root from the part markers" in rebuilt.output
    assert (store / rebuilt.output.split("kept as ")[1].split()[0].rstrip(",;")).exists()
    assert run_cli("store", "verify", store).exit_code == 0
    for name, hidden in before.items():
        np.testing.assert_array_equal(
            FeatureStore.open(store, feature_set=name).hidden("00001"), hidden
        )
    assert FeatureStore.open(store).fingerprint == first.fingerprint


# -- 15. public functions validate their arguments ------------------------------------------


def test_python_api_misuse_gets_the_projects_errors(made):
    from featurestore import ArgumentError, LayerError
    from models import evaluate_heads, predict
    from models.errors import SettingsError
    from models.options import TrainSettings

    store = FeatureStore.open(made["store"])
    clip = store.clip_ids[0]
    for bad in (1.5, True, "1"):
        with pytest.raises(LayerError, match="give a layer number"):
            store.hidden(clip, layer=bad)
    with pytest.raises(ArgumentError, match="max_frames -1"):
        list(store.read_clips([clip], max_frames=-1))
    with pytest.raises(ArgumentError, match="not the text"):
        list(store.read_clips(clip))
    [(only, hidden, _)] = list(store.read_clips([clip, clip], max_frames=2))
    assert only == clip and len(hidden) == 2
    one = predict(store, str(made["head"]))  # one folder alone is one head
    assert one.clip_ids == sorted(store.clip_ids)
    twice = predict(store, [made["head"]], clip_ids=[clip, clip])
    assert twice.clip_ids == [clip]
    with pytest.raises(ArgumentError, match="resamples -1"):
        evaluate_heads(store, [made["head"]], made["test"], resamples=-1)
    with pytest.raises(ArgumentError, match="confidence 2"):
        evaluate_heads(store, [made["head"]], made["test"], confidence=2)
    with pytest.raises(SettingsError, match="batch_size: 0"):
        TrainSettings(batch_size=0)
    with pytest.raises(SettingsError, match="lr"):
        TrainSettings(lr=float("nan"))


# -- 16. the docs' reading without emi works on stores of one and of several sets ---------


def test_the_docs_plain_reading_works_for_both_root_formats(made, tmp_path, monkeypatch):
    from tests.docs_blocks import page_blocks

    [block] = page_blocks("docs/store.md", "python")
    snippet = block.text
    store = copy_store(made, tmp_path / "feats.zarr")
    monkeypatch.chdir(tmp_path)
    for formats in (2, 3):
        if formats == 3:
            run_cli("extract", made["audio"], store, "--feature-set", "more", "--quiet")
        namespace: dict = {}
        exec(compile(snippet, block.page, "exec"), namespace)  # noqa: S102
        assert namespace["emi"]["format_version"] == formats
        opened = FeatureStore.open(store)
        first = str(namespace["ids"][0])
        np.testing.assert_array_equal(namespace["hidden_0"], opened.hidden(first))
        assert namespace["means"].shape[0] == len(opened)


# -- 19. legends beside the data, never over it; colour-blind-safe, distinct line styles ---


def test_plot_legends_sit_outside_the_axes_and_targets_look_different(made):
    from models.compare import compare_heads, comparison_plot
    from models.plots import PALETTE, learning_curves_figure

    metrics = json.loads((made["head"] / "metrics.json").read_text())
    metrics["layer_weights"] = {"0": 0.2, "1": 0.5, "last": 0.3}  # the third panel too
    figures = [learning_curves_figure(metrics), comparison_plot(compare_heads([made["head"]]))]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for fig in figures:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None
            if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)):
                raise AssertionError(f"a legend covers the data of {ax.get_ylabel()!r}")
    pearson_ax = figures[0].axes[1]
    targets = [
        line
        for line in pearson_ax.get_lines()
        if line.get_label() in metrics["epochs"][0]["val"]["pearson"]
    ]
    looks = {(line.get_color(), str(line.get_linestyle())) for line in targets}
    assert len(targets) == 6 and len(looks) == 6
    assert all(line.get_color() in PALETTE for line in targets)
    for fig in figures:  # legends readable with the image shown at 100%
        for ax in fig.axes:
            assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 9
    assert "compared" in figures[1].axes[0].get_title()  # heads_comparison.png says what it is


def test_the_predictions_plot_states_its_scale_and_clips():
    from models.plots import predictions_figure

    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, size=(37, 2))
    fig = predictions_figure(true + 0.05, true, ["Joy", "Admiration"])
    first = fig.axes[0]
    assert first.get_xlabel() == "true intensity (0-1)"
    assert first.get_ylabel() == "predicted intensity (0-1)"
    assert first.get_xlim() == (0, 1) and first.get_ylim() == (0, 1)
    assert first.get_title().startswith("Joy: r = 1.00") and "n = 37" in first.get_title()
    assert "37 clips" in fig.get_suptitle()


# -- 20. words that help: label ids with extensions, evaluate's advice, constant columns, --
#        help texts, plurals


def test_messages_and_help_say_what_to_do(made, tmp_path):
    import torch

    from models.evaluation import evaluate_heads
    from models.head_files import load_head

    labels = tmp_path / "train_split.csv"
    labels.write_text("Filename,Joy\n00000.wav,0.5\n00001.wav,0.2\n")
    refused = run_cli("manifest", "build", made["audio"], "--labels", labels, "-o",
                      tmp_path / "m.csv", expect=2)  # fmt: skip
    assert "have no extension" in refused.output and "00000.wav -> 00000" in refused.output
    lacking = tmp_path / "test_split.csv"
    lacking.write_text("Filename,Joy\n00000,0.5\nnot-stored,0.2\n")
    evaluated = run_cli("evaluate", made["store"], "--head", made["head"], "--labels", lacking,
                        expect=2)  # fmt: skip
    assert "--skip-missing to evaluate the rest" in evaluated.output
    head = load_head(made["head"])
    with torch.no_grad():
        for p in head.model.parameters():
            if p.ndim > 1:
                p.zero_()  # predicts its bias: the same for every clip
    result = evaluate_heads(made["store"], [head], made["test"], resamples=5)
    assert any("same value for every clip" in w and "Joy" in w for w in result.warnings)
    train_help = run_cli("train", "--help").output
    assert "x<=None" not in train_help and "x>=None" not in train_help
    for option in ("--lstm-hidden", "--lstm-layers", "--mlp-hidden", "--dropout"):
        line = train_help.split(option, 1)[1].split("\n  --", 1)[0]
        assert len(line.split()) > 3, (option, line)  # it has a help text
    score_help = run_cli("score", "--help").output
    assert "CSV to write" in score_help and "No progress bar" in score_help
    assert "``" not in run_cli("model", "info", "--help").output
    hub = run_cli("extract", made["audio"], tmp_path / "x.zarr", "--model", "someone/model",
                  expect=2)  # fmt: skip
    assert ".." not in hub.output.replace("...", "")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"heads": [{"name": "one", "preset": "mean-linear"}]}))
    from tests.conftest import train_cli

    trained = train_cli(made, f"{tmp_path / 'grid_heads'}/", "--grid", grid)
    assert "//summary.csv" not in trained.output and "grid_heads/summary.csv" in trained.output


# -- what a review of the above found ----------------------------------------------------------


def test_a_cached_score_lists_each_unreadable_file(made, tmp_path, monkeypatch):
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "00001.wav").write_bytes((made["audio"] / "00001.wav").read_bytes())
    (audio / "gone_a.wav").symlink_to(tmp_path / "nowhere_a.wav")
    (audio / "gone_b.wav").symlink_to(tmp_path / "nowhere_b.wav")
    (audio / "noise.wav").write_bytes(b"RIFF....WAVEfmt not audio")
    scored = run_cli("score", audio, "--head", made["head"], "-o", tmp_path / "p.csv", expect=3)
    for name in ("gone_a: a broken symbolic link", "gone_b: a broken symbolic link", "noise: "):
        assert name in scored.output, scored.output
    assert [r["clip_id"] for r in csv.DictReader((tmp_path / "p.csv").open())] == ["00001"]


def test_an_empty_lock_generation_does_not_lock_the_store_for_good(made, tmp_path):
    store = copy_store(made, tmp_path / "s.zarr")
    generations = sorted((store / "emi_lock").glob("g*"))
    empty = store / "emi_lock" / f"g{int(generations[-1].name[1:]) + 1:08d}"
    empty.mkdir()  # what a write that failed between the folder and its node left
    run_cli("extract", made["audio"], store, "--quiet")
    assert run_cli("store", "repair", store).exit_code == 0


def test_a_rebuilt_root_keeps_every_set_apart(made, tmp_path):
    import shutil

    from featurestore.store import set_name_of

    store = tmp_path / "s.zarr"
    backbone = json.loads((made["head"] / "config.json").read_text())["store"]["spec"]
    run_cli("extract", made["audio"], store, "--model", backbone["backbone"]["ref"],
            "--feature-set", "mine", "--quiet")  # fmt: skip
    named = set_name_of(FeatureStore.open(store).spec)  # a further set of the default name
    run_cli("extract", made["audio"], store, "--feature-set", named, "--layers", "all",
            "--quiet")  # fmt: skip
    (store / "zarr.json").write_bytes(b"lost")
    run_cli("store", "repair", store, "--rebuild-root")
    rebuilt = FeatureStore.open(store)
    assert len(rebuilt.feature_sets) == 2 and named in rebuilt.feature_sets
    assert all(len(rebuilt.with_set(n)) == 16 for n in rebuilt.feature_sets)
    assert run_cli("store", "verify", store).exit_code == 0
    # the first set's parts lost: the one left keeps its own parts folder
    for part in (store / "parts").iterdir():
        if part.is_dir():
            shutil.rmtree(part)
    (store / "zarr.json").write_bytes(b"lost")
    run_cli("store", "repair", store, "--rebuild-root")
    assert FeatureStore.open(store).feature_sets == (named,)
    assert len(FeatureStore.open(store)) == 16
    assert run_cli("store", "verify", store).exit_code == 0


def test_a_damaged_default_set_leaves_the_others_readable(made, tmp_path):
    from tests.conftest import train_cli

    store = copy_store(made, tmp_path / "s.zarr")
    run_cli("extract", made["audio"], store, "--feature-set", "more", "--layers", "all",
            "--quiet")  # fmt: skip
    train_cli({**made, "store": store}, tmp_path / "on_more", "--preset", "mean-linear",
              "--features", "more")  # fmt: skip
    root = store / "zarr.json"
    node = json.loads(root.read_text())
    meta = node["attributes"]["emi"]
    meta["sets"][meta["default_set"]]["spec"]["window_seconds"] = 5.0
    root.write_text(json.dumps(node))
    predicted = run_cli("predict", store, "--head", tmp_path / "on_more", "-o", tmp_path / "p.csv")
    assert predicted.output.startswith("16 clips x 1 head")
    info = run_cli("store", "info", store, "--feature-set", "more").output
    assert "DAMAGED" in info and "more" in info
    refused = run_cli("predict", store, "--head", made["head"], "-o", tmp_path / "q.csv", expect=2)
    assert "its spec in the root metadata does not match" in refused.output


def test_a_new_sets_name_is_chosen_under_the_writer_lock(made, tmp_path):
    from dataclasses import replace

    from featurestore.location import StoreLocation
    from featurestore.lock import StoreLock
    from featurestore.store import StoreWriter

    store = copy_store(made, tmp_path / "s.zarr")
    first = FeatureStore.open(store)
    other = replace(first.spec, window_seconds=5.0)  # other features, the same backbone
    where = StoreLocation.of(store)
    with StoreLock(where) as lock:
        same = StoreWriter.open(where, first.spec, lock, new_set_name=first.feature_set)
        assert same.feature_set == first.feature_set  # the set that has these features
        added = StoreWriter.open(where, other, lock, new_set_name=first.feature_set)
    # the name is taken by other features: the new set gets a name of its own
    assert added.feature_set == f"{first.feature_set}-{other.fingerprint[:12]}"
    assert set(FeatureStore.open(store).feature_sets) == {first.feature_set, added.feature_set}
