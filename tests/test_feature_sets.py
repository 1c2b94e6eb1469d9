"""Several feature sets per store: each with its own spec, fingerprint, parts and
resume; adding one never changes another's bytes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import StoreDamage, StoreError
from featurestore.report import verify_store
from featurestore.store import FeatureStore, index_digest
from tests.conftest import read_16k_mono, run_cli
from tests.reference import ReferenceForward, assert_matches


def _files(store):
    """Every file of the store but the root's index and the writer lock, with its bytes."""
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file()
        and p.relative_to(store).as_posix() != "zarr.json"
        and not p.relative_to(store).as_posix().startswith("emi_lock/")
    }


@pytest.fixture(scope="module")
def two_sets(layer_store, tiny_group_backbone, mixed_corpus, tmp_path_factory):
    """The layer store (one set, tiny layer-norm backbone) plus a second set made by
    the group-norm backbone; and the first set's files before the second was added."""
    store = tmp_path_factory.mktemp("sets") / "two.zarr"
    shutil.copytree(layer_store, store)
    before = _files(store)
    run_cli(
        "extract", mixed_corpus, store, "--model", tiny_group_backbone,
        "--feature-set", "group", "--batch-seconds", "5", "--quiet",
    )  # fmt: skip
    return {"store": store, "before": before}


def test_a_second_set_leaves_the_first_byte_identical(two_sets, layer_store):
    store = two_sets["store"]
    after = _files(store)
    for name, data in two_sets["before"].items():
        assert after[name] == data, name  # not one byte of the first set changed
    added = set(after) - set(two_sets["before"])
    assert added and all(name.startswith("sets/") for name in added)
    assert any(name.startswith("sets/group/parts/p0") for name in added)
    opened = FeatureStore.open(store)
    first = FeatureStore.open(layer_store)
    assert opened.feature_sets == (first.feature_set, "group")
    assert opened.feature_set == first.feature_set  # the default set is the first
    assert opened.fingerprint == first.fingerprint
    for clip_id in first.clip_ids:
        np.testing.assert_array_equal(opened.hidden(clip_id), first.hidden(clip_id))
    root = json.loads((store / "zarr.json").read_text())["attributes"]["emi"]
    assert root["format_version"] == 3 and set(root["sets"]) == {first.feature_set, "group"}


def test_each_set_equals_its_backbones_reference(two_sets, mixed_corpus, tiny_group_backbone):
    group = FeatureStore.open(two_sets["store"], feature_set="group")
    assert group.spec.backbone.feat_extract_norm == "group"
    reference = ReferenceForward(tiny_group_backbone)
    for path in sorted(p for p in mixed_corpus.rglob("*") if p.is_file()):
        clip_id = path.relative_to(mixed_corpus).with_suffix("").as_posix()
        assert_matches(group, clip_id, reference(read_16k_mono(path)))
    for name in FeatureStore.open(two_sets["store"]).feature_sets:
        assert verify_store(FeatureStore.open(two_sets["store"], feature_set=name)) == []


def test_each_set_resumes_on_its_own(two_sets, mixed_corpus, tiny_backbone, tiny_group_backbone):
    store = two_sets["store"]
    for model, options in ((tiny_group_backbone, ()), (tiny_backbone, ())):
        # without --feature-set: the set these settings make
        again = run_cli("extract", mixed_corpus, store, "--model", model, *options, "--json")
        assert json.loads(again.stdout)["extracted"] == 0
    summary = json.loads(
        run_cli("extract", mixed_corpus, store, "--feature-set", "group", "--json").stdout
    )
    assert summary["extracted"] == 0 and summary["feature_set"] == "group"
    # the same name with other settings is refused, naming the sets; nothing changes
    before = (store / "zarr.json").read_bytes()
    refused = run_cli(
        "extract", mixed_corpus, store, "--model", tiny_backbone, "--feature-set", "group",
        expect=2,
    )  # fmt: skip
    assert "feature set 'group' holds features" in refused.output
    assert "--feature-set NAME" in refused.output
    assert (store / "zarr.json").read_bytes() == before
    bad = run_cli("extract", mixed_corpus, store, "--feature-set", "../x", expect=2)
    assert "not a plain name" in bad.output


def test_info_lists_the_sets_and_opening_a_missing_set_names_them(two_sets):
    store = two_sets["store"]
    info = run_cli("store", "info", store).output
    assert "feature sets 2" in info and "group" in info and "no VAD" not in info
    data = json.loads(run_cli("store", "info", store, "--json").output)
    listed = {s["feature_set"]: s for s in data["feature_sets"]}
    assert set(listed) == set(FeatureStore.open(store).feature_sets)
    assert all(s["clips"] == 9 and s["set_size_bytes"] > 0 for s in listed.values())
    assert data["size_bytes"] >= sum(s["set_size_bytes"] for s in listed.values())
    with pytest.raises(StoreError, match="no feature set 'nope' .*group"):
        FeatureStore.open(store, feature_set="nope")
    assert "ok (" in run_cli("store", "verify", store).output


def test_damage_in_one_set_is_repaired_without_touching_the_other(two_sets, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(two_sets["store"], store)
    group = FeatureStore.open(store, feature_set="group")
    part = group.complete_parts[0]
    chunk = next(p for p in (store / "sets/group/parts" / part / "hidden").rglob("*") if p.is_file()
                 and p.name != "zarr.json")  # fmt: skip
    chunk.write_bytes(b"damaged")
    with pytest.raises(StoreDamage):
        group.hidden(group.clip_ids[0])
    first_files = {k: v for k, v in _files(store).items() if not k.startswith("sets/")}
    verified = run_cli("store", "verify", store, expect=1)
    assert "set group:" in verified.output
    repaired = run_cli("store", "repair", store)
    assert "dropped 1 damaged part " in repaired.output
    assert {k: v for k, v in _files(store).items() if not k.startswith("sets/")} == first_files
    assert (
        len(FeatureStore.open(store, feature_set="group").complete_parts)
        == len(group.complete_parts) - 1
    )


def test_roots_of_one_set_stay_format_2_where_earlier_emi_reads_them(
    layer_store, mixed_corpus, tiny_backbone, tmp_path
):
    """A store of one default-named set with the VAD head is written exactly as before
    feature sets (format 2, the same keys and digest), so earlier emi versions read it;
    a first set with another name, or without the VAD head, makes a format-3 root
    (which they refuse with a clear message, not as damage)."""
    meta = json.loads((layer_store / "zarr.json").read_text())["attributes"]["emi"]
    assert meta["format_version"] == 2
    assert set(meta) == {"format_version", "fingerprint", "spec", "parts", "failures",
                         "index_digest"}  # fmt: skip
    assert meta["index_digest"] == index_digest(meta)
    opened = FeatureStore.open(layer_store)
    assert opened.feature_sets == (Path(opened.spec.backbone.ref).name,)
    named = tmp_path / "named.zarr"
    run_cli("extract", mixed_corpus, named, "--model", tiny_backbone, "--feature-set", "w2v",
            "--quiet")  # fmt: skip
    root = json.loads((named / "zarr.json").read_text())["attributes"]["emi"]
    assert root["format_version"] == 3 and root["default_set"] == "w2v"
    assert root["sets"]["w2v"]["parts_path"] == "parts"
    assert len(FeatureStore.open(named)) == len(opened)
    # a format-2 root naming a parts folder of its own is not trusted
    edited = tmp_path / "edited.zarr"
    shutil.copytree(layer_store, edited)
    node = json.loads((edited / "zarr.json").read_text())
    node["attributes"]["emi"]["parts_path"] = "elsewhere"
    (edited / "zarr.json").write_text(json.dumps(node))
    with pytest.raises(StoreDamage):
        FeatureStore.open(edited)


def test_set_names_are_plain_lower_case_folder_names(mixed_corpus, tmp_path):
    for name in ("Hub", "zarr.json", "../x", ".hidden"):
        bad = run_cli("extract", mixed_corpus, tmp_path / "x.zarr", "--feature-set", name,
                      expect=2)  # fmt: skip
        assert "not a plain name" in bad.output, name
    assert not (tmp_path / "x.zarr").exists()


def test_heads_find_their_set_and_are_refused_where_it_is_missing(
    tiny_backbone, tiny_group_backbone, tmp_path
):
    from tests.conftest import labelled_store, train_cli

    made = labelled_store(tmp_path, tiny_backbone, clips=16, seed=4, presets=())
    run_cli("extract", made["audio"], made["store"], "--model", tiny_group_backbone,
            "--feature-set", "group", "--quiet")  # fmt: skip
    train_cli(made, tmp_path / "on_group", "--preset", "mean-linear", "--features", "group")
    train_cli(made, tmp_path / "on_first", "--preset", "mean-linear")
    card = json.loads((tmp_path / "on_group" / "config.json").read_text())
    assert card["store"]["feature_set"] == "group"
    group = FeatureStore.open(made["store"], feature_set="group")
    assert card["store"]["fingerprint"] == group.fingerprint
    # one predict over both heads: each reads its own set
    run_cli("predict", made["store"], "--head", tmp_path / "on_group", "--head",
            tmp_path / "on_first", "-o", tmp_path / "both.csv")  # fmt: skip
    header = (tmp_path / "both.csv").read_text().splitlines()[0]
    assert "on_group/" in header and "on_first/" in header
    # a store without the set: refused, naming the set and its fingerprint
    single = tmp_path / "single.zarr"
    run_cli("extract", made["audio"], single, "--model", tiny_backbone, "--quiet")
    refused = run_cli("predict", single, "--head", tmp_path / "on_group", "-o",
                      tmp_path / "p.csv", expect=2)  # fmt: skip
    assert "needs feature set 'group'" in refused.output
    assert group.fingerprint[:12] in refused.output and "--feature-set group" in refused.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_hubert_and_wavlm_sets_equal_their_reference(family, mixed_corpus, tmp_path):
    """Plain transformers checkpoints (no VAD head) as a second set: every stored layer
    equals the matching hidden_states[k] of AutoModel's forward."""
    model = tmp_path / family
    shown = run_cli("model", "init-random", model, "--size", "tiny", "--family", family)
    assert family in shown.output
    info = json.loads(run_cli("model", "info", model).output)
    assert info["family"] == family and info["vad_head"] is False
    store = tmp_path / "feats.zarr"
    run_cli("extract", mixed_corpus, store, "--model", model, "--layers", "all",
            "--batch-seconds", "3", "--quiet")  # fmt: skip
    opened = FeatureStore.open(store)
    assert opened.spec.vad_labels == () and "frame_vad" not in opened.arrays
    assert opened.layers == (0, 1, 2)
    reference = ReferenceForward(model)
    assert type(reference.encoder).__name__.lower().startswith(family)
    for path in sorted(p for p in mixed_corpus.rglob("*") if p.is_file()):
        clip_id = path.relative_to(mixed_corpus).with_suffix("").as_posix()
        ref = reference(read_16k_mono(path))
        assert_matches(opened, clip_id, ref)
        for k, expected in enumerate(ref["layers"]):
            stored = opened.hidden(clip_id, layer=k).astype(np.float32)
            np.testing.assert_allclose(stored, expected, rtol=2**-10, atol=1e-4)
    assert verify_store(opened) == []
    assert "no VAD head" in run_cli("store", "info", store).output


def test_heads_train_on_a_set_without_vad(tmp_path):
    """A set of hidden states only (HuBERT): heads read [hidden] per frame."""
    from featurestore.random_backbone import write_random_backbone
    from tests.conftest import labelled_store, train_cli

    model = write_random_backbone(tmp_path / "hubert", size="tiny", seed=2, family="hubert")
    made = labelled_store(tmp_path, model, clips=16, seed=5, presets=())
    train_cli(made, tmp_path / "compact", "--preset", "compact")
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert config["head"]["input_dim"] == 32  # tiny hidden size, no VAD outputs
    run_cli("predict", made["store"], "--head", tmp_path / "compact", "-o", tmp_path / "p.csv")
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + len(FeatureStore.open(made["store"]))


def test_a_head_of_two_sets_trains_reloads_and_predicts_its_validation_score(
    tiny_backbone, tiny_group_backbone, tmp_path
):
    from manifests import read_labels
    from models.metrics import pearson
    from tests.conftest import labelled_store, train_cli

    made = labelled_store(tmp_path, tiny_backbone, clips=24, seed=6, presets=())
    run_cli("extract", made["audio"], made["store"], "--model", tiny_group_backbone,
            "--feature-set", "group", "--quiet")  # fmt: skip
    first = FeatureStore.open(made["store"]).feature_set
    head = tmp_path / "joined"
    train_cli(made, head, "--preset", "compact", "--features", f"group,{first}", "--epochs", "4")
    card = json.loads((head / "config.json").read_text())
    assert card["head"]["input_dim"] == 2 * (32 + 3)  # two sets of [hidden, frame_vad]
    assert card["store"]["feature_set"] == "group"
    assert [ref["feature_set"] for ref in card["joined"]] == [first]
    metrics = json.loads((head / "metrics.json").read_text())
    run_cli("predict", made["store"], "--head", head, "-o", tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    labels = read_labels(made["valid"])
    pred = np.array(
        [[float(r[t]) for t in labels.targets] for r in rows if r["clip_id"] in labels.rows]
    )
    true = np.array([labels.rows[r["clip_id"]] for r in rows if r["clip_id"] in labels.rows])
    best = metrics["epochs"][metrics["best_epoch"] - 1]["val"]["pearson_mean"]
    assert pearson(np.clip(pred, 0, 1), true).mean() == pytest.approx(best, abs=1e-3)
    # emi score extracts both sets (into the cache store) and predicts the same
    run_cli("score", made["audio"], "--head", head, "-o", tmp_path / "s.csv", "--quiet")
    scored = {r["clip_id"]: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert scored.keys() == {r["clip_id"] for r in rows}
    for r in rows:
        for target in labels.targets:
            assert abs(float(scored[r["clip_id"]][target]) - float(r[target])) < 1e-5
    # the same head refused where one of its sets is missing, naming it
    single = tmp_path / "single.zarr"
    run_cli("extract", made["audio"], single, "--model", tiny_backbone, "--quiet")
    refused = run_cli("predict", single, "--head", head, "-o", tmp_path / "q.csv", expect=2)
    assert "needs feature set 'group'" in refused.output
    # a layer choice with two sets is refused before training
    bad = train_cli(made, tmp_path / "bad", "--features", f"group,{first}", "--layer", "1",
                    expect=2)  # fmt: skip
    assert "several feature sets" in bad.output


def test_sets_of_different_clips_and_stale_audio(tiny_backbone, tmp_path):
    """Sets need not hold the same clips: heads read the clips every set they need
    holds; joined sets of different audio (a file refreshed in one set only) are
    refused; extract's defaults follow the set being written."""
    from featurestore.random_backbone import write_random_backbone
    from tests.conftest import labelled_store, train_cli

    made = labelled_store(tmp_path, tiny_backbone, clips=16, seed=7, presets=())
    store, audio = made["store"], made["audio"]
    hubert = write_random_backbone(tmp_path / "hub", size="tiny", seed=3, family="hubert")
    some = tmp_path / "some"
    some.mkdir()
    for wav in sorted(audio.glob("*.wav"))[:8]:
        shutil.copy(wav, some / wav.name)
    run_cli("extract", some, store, "--model", hubert, "--feature-set", "hub", "--quiet")
    first = FeatureStore.open(store)
    hub = FeatureStore.open(store, feature_set="hub")
    assert len(hub) == 8 and len(first) == 16
    # a set without the VAD head says so, and its clips read without VAD outputs
    with pytest.raises(KeyError, match="no VAD head"):
        hub.frame_vad(hub.clip_ids[0])
    [(clip_id, hidden, vad)] = list(hub.read_clips([hub.clip_ids[0]]))
    assert vad.shape == (len(hidden), 0)
    train_cli(made, tmp_path / "h_first", "--preset", "mean-linear")
    train_cli(made, tmp_path / "h_joined", "--preset", "mean-linear", "--features",
              f"{first.feature_set},hub", "--skip-missing")  # fmt: skip
    both = run_cli("predict", store, "--head", tmp_path / "h_first", "--head",
                   tmp_path / "h_joined", "-o", tmp_path / "p.csv")  # fmt: skip
    # each head predicts every clip its own sets hold; no row is dropped
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert sorted(r["clip_id"] for r in rows) == sorted(first.clip_ids), both.output
    for r in rows:
        assert all(r[k] != "" for k in r if k.startswith("h_first/"))
        joined_cells = [r[k] for k in r if k.startswith("h_joined/")]
        if r["clip_id"] in hub:
            assert all(c != "" for c in joined_cells)
        else:
            assert all(c == "" for c in joined_cells)
    assert "head h_joined: 8 clips not in its feature sets" in both.output
    alone = run_cli("predict", store, "--head", tmp_path / "h_first", "-o", tmp_path / "a.csv")
    assert alone.output.startswith("16 clips x 1 head ->")
    evaluated = run_cli("evaluate", store, "--head", tmp_path / "h_joined", "--labels",
                        made["test"], "--skip-missing", "--resamples", "20")  # fmt: skip
    from manifests import read_labels

    test_ids = set(read_labels(made["test"]).rows)
    assert evaluated.output.startswith(f"{len(test_ids & set(hub.clip_ids))} clips;")
    # a file changes; only the first set is refreshed: the joined head refuses to pair
    # features of two recordings
    changed = sorted(some.glob("*.wav"))[0]
    (audio / changed.name).write_bytes((audio / sorted(some.glob("*.wav"))[1].name).read_bytes())
    run_cli("extract", audio, store, "--refresh-changed", "--quiet")
    stale = run_cli("predict", store, "--head", tmp_path / "h_joined", "-o",
                    tmp_path / "q.csv", expect=2)  # fmt: skip
    assert "different audio" in stale.output and changed.stem in stale.output
    # without --feature-set, extracting with the HuBERT backbone fills its own set
    # (with its settings), and a new named set takes the store's backbone
    # (the changed file's clip is stored in that set from some/, another file of other
    # content: it is refused, never replaced)
    filled = run_cli("extract", audio, store, "--model", hubert, "--json", expect=3).stdout
    filled = json.loads(filled)
    assert filled["feature_set"] == "hub" and filled["extracted"] == 8
    assert filled["other_sources"] == [changed.stem]
    added = json.loads(
        run_cli(
            "extract", audio, store, "--feature-set", "all", "--layers", "all", "--json"
        ).stdout  # fmt: skip
    )
    every = FeatureStore.open(store, feature_set="all")
    assert added["extracted"] == 16 and every.layers == (0, 1, 2)
    assert every.spec.backbone.weights_sha256 == first.spec.backbone.weights_sha256
    # damage in a further set: repair names the set and how to re-extract it
    chunk = next(p for p in (store / "sets/hub/parts").rglob("*")
                 if p.is_file() and p.parent.name == "0" and "hidden" in p.parts)  # fmt: skip
    chunk.write_bytes(b"damaged")
    repaired = run_cli("store", "repair", store)
    assert "set hub: part" in repaired.output and "--feature-set hub" in repaired.output
