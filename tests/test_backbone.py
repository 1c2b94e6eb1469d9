import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli import model_cmd
from featurestore.backbone import BackboneError, identify_backbone, load_backbone
from featurestore.random_backbone import SIZES, random_config, write_random_backbone
from tests.conftest import run_cli


def test_random_checkpoint_has_the_real_layout(tiny_backbone):
    keys = set(load_file(str(tiny_backbone / "model.safetensors")))
    assert {
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    } <= keys
    assert all(k.startswith(("wav2vec2.", "classifier.")) for k in keys)
    config = json.loads((tiny_backbone / "config.json").read_text())
    assert config["id2label"] == {"0": "arousal", "1": "dominance", "2": "valence"}
    assert load_file(str(tiny_backbone / "model.safetensors"))[
        "classifier.out_proj.weight"
    ].shape == (3, 32)


def test_init_random_is_seeded(tmp_path):
    run_cli("model", "init-random", tmp_path / "a", "--size", "tiny", "--seed", "3")
    run_cli("model", "init-random", tmp_path / "b", "--size", "tiny", "--seed", "3")
    run_cli("model", "init-random", tmp_path / "c", "--size", "tiny", "--seed", "4")
    fa, fb, fc = (identify_backbone(str(tmp_path / n)).fingerprint for n in "abc")
    assert fa == fb != fc


def test_sizes_match_their_description():
    assert random_config("base").feat_extract_norm == "group"
    large = random_config("large-robust-12")
    assert (
        large.hidden_size,
        large.num_hidden_layers,
        large.feat_extract_norm,
        large.do_stable_layer_norm,
    ) == (1024, 12, "layer", True)
    assert set(SIZES) == {"tiny", "small", "base", "large-robust-12"}
    assert tuple(SIZES) == model_cmd.SIZES  # the CLI's copy (kept light to import)


def _to_legacy_bin(src, dst):
    """The audeering checkpoint's form: pytorch_model.bin with weight_g / weight_v."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    legacy = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        legacy[key] = value
    assert any(k.endswith("weight_g") for k in legacy)
    torch.save(legacy, dst / "pytorch_model.bin")
    return dst


def test_legacy_bin_loads_identically(tiny_backbone, tmp_path):
    legacy = _to_legacy_bin(tiny_backbone, tmp_path / "legacy")
    a = load_backbone(str(tiny_backbone))
    b = load_backbone(str(legacy))
    assert a.identity.fingerprint == b.identity.fingerprint
    x = torch.randn(1, 8000)
    with torch.inference_mode():
        ha, va = a.model(x)
        hb, vb = b.model(x)
    assert torch.equal(ha, hb) and torch.equal(va, vb)


def test_pickled_code_is_refused(tiny_backbone, tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_backbone / "config.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(BackboneError, match="never loads pickled code"):
        load_backbone(str(folder))
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_weights_and_keys_are_named(tiny_backbone, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_backbone / "config.json").read_text())
    with pytest.raises(BackboneError, match="no model.safetensors or pytorch_model.bin"):
        load_backbone(str(folder))
    state = load_file(str(tiny_backbone / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if not k.startswith("classifier.")},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(BackboneError, match="lack 4 keys.*classifier"):
        load_backbone(str(folder))


def test_unknown_model_reference(tmp_path):
    with pytest.raises(BackboneError, match="no such folder"):
        load_backbone(str(tmp_path / "nope"))
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE=1"):
        load_backbone("someone/not-cached-model")


def test_fingerprint_ignores_folder_but_not_weights(tiny_backbone, tmp_path):
    other = write_random_backbone(tmp_path / "copy", size="tiny", seed=0)
    assert (
        identify_backbone(str(other)).fingerprint
        == identify_backbone(str(tiny_backbone)).fingerprint
    )
    state = load_file(str(other / "model.safetensors"))
    state["classifier.out_proj.bias"] = state["classifier.out_proj.bias"] + 1e-3
    save_file(state, str(other / "model.safetensors"))
    assert (
        identify_backbone(str(other)).fingerprint
        != identify_backbone(str(tiny_backbone)).fingerprint
    )


def test_model_copy_puts_a_checkpoint_in_place_and_never_touches_a_folder_of_theirs(
    tmp_path, tiny_backbone
):
    """emi model copy: the checkpoint lands whole with its identity; again, it is kept;
    a destination holding something else is refused with nothing changed or left."""
    from featurestore.backbone import identify_backbone
    from featurestore.checkpoint_copy import copy_checkpoint
    from featurestore.errors import BackboneError

    target = tmp_path / "volume" / "backbone"
    identity = copy_checkpoint(str(tiny_backbone), target)
    assert identity.weights_sha256 == identify_backbone(str(tiny_backbone)).weights_sha256
    assert copy_checkpoint(str(tiny_backbone), target).checkpoint_hash == identity.checkpoint_hash
    theirs = tmp_path / "volume" / "notes"
    theirs.mkdir()
    (theirs / "mine.txt").write_text("precious")
    with pytest.raises(BackboneError, match="not a checkpoint"):
        copy_checkpoint(str(tiny_backbone), theirs)
    assert [p.name for p in theirs.iterdir()] == ["mine.txt"]
    assert (theirs / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in target.parent.iterdir()) == ["backbone", "notes"]  # no partial
    with pytest.raises(BackboneError, match="not a checkpoint folder"):
        copy_checkpoint(str(theirs), tmp_path / "elsewhere")
