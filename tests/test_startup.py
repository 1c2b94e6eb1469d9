"""Small jobs start fast: a checkpoint's weights are hashed once per file version."""

from __future__ import annotations

import json
import os

import pytest

from featurestore import backbone
from featurestore.backbone import identify_backbone, load_backbone
from featurestore.errors import BackboneError
from featurestore.random_backbone import write_random_backbone


def _new_process(monkeypatch, *, weights_readable: bool) -> list[str]:
    """Forget the in-process hashes; count (or refuse) reads of the weight file."""
    monkeypatch.setattr(backbone, "_WEIGHTS_HASHES", {})
    monkeypatch.setattr(backbone, "_COMPUTED_HASHES", {})
    reads: list[str] = []
    read = backbone.read_weights

    def counting(folder):
        reads.append(str(folder))
        if not weights_readable:
            raise BackboneError("weights read although their hash was cached")
        return read(folder)

    monkeypatch.setattr(backbone, "read_weights", counting)
    return reads


def test_a_cached_hash_spares_reading_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    folder = write_random_backbone(tmp_path / "ckpt", seed=3)
    first = load_backbone(str(folder)).identity
    assert (tmp_path / "cache" / backbone.WEIGHTS_HASH_CACHE).is_file()
    _new_process(monkeypatch, weights_readable=False)
    again = identify_backbone(str(folder))
    assert again.weights_sha256 == first.weights_sha256
    assert again.checkpoint_hash == first.checkpoint_hash


def test_a_changed_weight_file_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    folder = write_random_backbone(tmp_path / "ckpt", seed=3)
    before = identify_backbone(str(folder)).weights_sha256
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    write_random_backbone(tmp_path / "other", seed=4)
    os.replace(tmp_path / "other" / "model.safetensors", weights)  # same size, new bytes
    assert weights.stat().st_size == size
    reads = _new_process(monkeypatch, weights_readable=True)
    after = identify_backbone(str(folder)).weights_sha256
    assert reads and after != before
    config, _ = backbone.read_config(folder)
    used = backbone._used_weights(backbone.read_weights(folder), config)
    assert after == backbone.hash_state_dict(used)


@pytest.mark.parametrize("damage", ["garbage", "wrong digest type", "missing"])
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    folder = write_random_backbone(tmp_path / "ckpt", seed=5)
    expected = identify_backbone(str(folder)).weights_sha256
    cache = tmp_path / "cache" / backbone.WEIGHTS_HASH_CACHE
    if damage == "garbage":
        cache.write_bytes(b"\x00{not json")
    elif damage == "wrong digest type":
        cache.write_text(json.dumps({k: 7 for k in json.loads(cache.read_text())}))
    else:
        cache.unlink()
    reads = _new_process(monkeypatch, weights_readable=True)
    assert identify_backbone(str(folder)).weights_sha256 == expected
    assert reads  # recomputed from the weights
    assert expected in json.loads(cache.read_text()).values()


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("EMI_CACHE", str(blocker))
    folder = write_random_backbone(tmp_path / "ckpt", seed=6)
    first = identify_backbone(str(folder)).weights_sha256
    _new_process(monkeypatch, weights_readable=True)
    assert identify_backbone(str(folder)).weights_sha256 == first


def test_a_stale_cache_entry_never_reaches_loaded_weights(tmp_path, monkeypatch):
    """A file replaced keeping path, size, mtime and inode (``cp -p`` over it) keeps its
    cache key: identifying trusts the cache, but a worker that loads the weights hashes
    them, so the run sees a fingerprint mismatch, and the cache is corrected."""
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    folder = write_random_backbone(tmp_path / "ckpt", seed=7)
    true = load_backbone(str(folder)).identity.weights_sha256
    cache = tmp_path / "cache" / backbone.WEIGHTS_HASH_CACHE
    stale = "f" * 64
    cache.write_text(json.dumps({k: stale for k in json.loads(cache.read_text())}))
    _new_process(monkeypatch, weights_readable=True)
    assert identify_backbone(str(folder)).weights_sha256 == stale  # the cache is trusted
    assert load_backbone(str(folder)).identity.weights_sha256 == true  # loading is not
    _new_process(monkeypatch, weights_readable=False)
    assert identify_backbone(str(folder)).weights_sha256 == true  # and it was corrected


def test_a_command_imports_only_its_own_module():
    """`emi extract` loads the extract command's module, not those of the other
    commands (the store's HDF5 export, the service's web framework) nor torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cli.main import emi\n"
        "try:\n"
        "    emi(['extract', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()[-1]
    loaded = set(out.split())
    assert "cli.extract_cmd" in loaded
    for heavy in ("cli.store_cmd", "cli.serve_cmd", "cli.evaluate_cmd", "h5py", "fastapi", "torch"):
        assert heavy not in loaded, heavy
