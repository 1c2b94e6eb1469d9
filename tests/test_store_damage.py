"""Every byte read back is checked: each kind of damage inside a part is reported by
`emi store verify` and refused by predict, train, score and export; repair then lets
the next extract recompute exactly what was lost."""

import json
import shutil
from pathlib import Path

import pytest

from featurestore.store import FeatureStore
from tests.conftest import labelled_store, run_cli, train_cli
from tests.reference import assert_same_features


@pytest.fixture(scope="module")
def trusted(tmp_path_factory, tiny_backbone):
    """A labelled corpus, its store (several parts) and a head trained on it."""
    made = labelled_store(
        tmp_path_factory.mktemp("trusted"),
        tiny_backbone,
        clips=16,
        seed=5,
        extract_options=("--part-seconds", "4"),
    )
    assert len(FeatureStore.open(made["store"]).complete_parts) >= 3
    return made


def _part_holding(store: Path, clip_id: str) -> str:
    return FeatureStore.open(store).part_of(clip_id)


def _first_chunk(array_dir: Path) -> Path:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())[0]


def _delete_chunk(array):
    def damage(part_dir: Path) -> None:
        _first_chunk(part_dir / array).unlink()

    return damage


def _garble_chunk(part_dir: Path) -> None:
    chunk = _first_chunk(part_dir / "hidden")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _truncate(relative):
    def damage(part_dir: Path) -> None:
        target = part_dir / relative
        target.write_bytes(target.read_bytes()[:40])

    return damage


def _delete(relative):
    def damage(part_dir: Path) -> None:
        (part_dir / relative).unlink()

    return damage


def _swap_chunks(part_dir: Path) -> None:
    """Two valid chunks (each passes its own chunk checksum) exchanged between two arrays."""
    a, b = _first_chunk(part_dir / "vad_mean"), _first_chunk(part_dir / "clip_vad")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def _edit_metadata(array, change):
    """An array's ``zarr.json`` edited into another valid one (the chunk bytes stay)."""

    def damage(part_dir: Path) -> None:
        meta_file = part_dir / array / "zarr.json"
        node = json.loads(meta_file.read_text())
        change(node)
        meta_file.write_text(json.dumps(node))

    return damage


def _set(key, value):
    def change(node: dict) -> None:
        node[key] = value

    return change


def _no_checksum(node: dict) -> None:
    node["codecs"][-1]["configuration"]["checksum"] = False


def _halve_chunks(node: dict) -> None:
    grid = node["chunk_grid"]["configuration"]["chunk_shape"]
    grid[0] = max(1, grid[0] // 2)


DAMAGE = {
    # A deleted chunk reads back as fill values unless the content checksums catch it.
    **{
        f"deleted {a} chunk": (_delete_chunk(a), a)
        for a in ("frame_vad", "vad_mean", "clip_vad", "duration_s", "sha256", "source_path")
    },
    "deleted hidden chunk": (_delete_chunk("hidden"), "hidden"),
    "garbled hidden chunk": (_garble_chunk, "hidden"),
    "swapped valid chunks": (_swap_chunks, "vad_mean"),
    "truncated part zarr.json": (_truncate("zarr.json"), None),
    "deleted part zarr.json": (_delete("zarr.json"), None),
    "truncated array zarr.json": (_truncate("hidden/zarr.json"), "hidden"),
    # Metadata edited into another valid type of the same size: the bytes are untouched.
    "hidden float16 -> int16": (_edit_metadata("hidden", _set("data_type", "int16")), "hidden"),
    "hidden_mean float32 -> uint32": (
        _edit_metadata("hidden_mean", _set("data_type", "uint32")),
        "hidden_mean",
    ),
    "frame_vad float32 -> int32": (
        _edit_metadata("frame_vad", _set("data_type", "int32")),
        "frame_vad",
    ),
    "codec checksum off": (_edit_metadata("hidden", _no_checksum), "hidden"),
    "chunk grid changed": (_edit_metadata("vad_mean", _halve_chunks), "vad_mean"),
    "fill value changed": (_edit_metadata("hidden", _set("fill_value", 0.0)), "hidden"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_part_damage_is_reported_refused_and_repaired(kind, trusted, tmp_path):
    damage, array = DAMAGE[kind]
    store = tmp_path / "feats.zarr"
    shutil.copytree(trusted["store"], store)
    part = _part_holding(store, "00000")  # a training clip: train and predict read it
    damage(store / "parts" / part)

    verify = run_cli("store", "verify", store, expect=1)
    assert f"part {part}" in verify.output, verify.output
    if array:
        assert array in verify.output

    out = tmp_path / "out"
    out.mkdir()
    predicted = run_cli("predict", store, "--head", trusted["head"], "-o", out / "p.csv", expect=2)
    assert f"part {part}" in predicted.output and "Traceback" not in predicted.output
    exported = run_cli("store", "export", store, out / "f.h5", expect=2)
    assert f"part {part}" in exported.output
    trained = train_cli(
        {**trusted, "store": store}, out / "head", "--preset", "mean-linear", expect=2
    )
    assert f"part {part}" in trained.output
    scored = run_cli(
        "score",
        trusted["audio"],
        "--head",
        trusted["head"],
        "--store",
        store,
        "-o",
        out / "s.csv",
        "--quiet",
        expect=2,
    )
    assert f"part {part}" in scored.output
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written

    lost = FeatureStore.open(trusted["store"]).part_marker(part)["clip_id"]
    repaired = run_cli("store", "repair", store)
    assert f"dropped 1 damaged part ({len(lost)} clips" in repaired.output
    assert not (store / "parts" / part).exists()
    assert run_cli("store", "verify", store).exit_code == 0
    again = json.loads(run_cli("extract", trusted["audio"], store, "--json", "--quiet").output)
    assert again["extracted"] == len(lost)
    assert_same_features(FeatureStore.open(store), FeatureStore.open(trusted["store"]))


def test_a_part_deleted_whole_is_noticed(trusted, tmp_path):
    store = tmp_path / "feats.zarr"
    shutil.copytree(trusted["store"], store)
    part = FeatureStore.open(store).complete_parts[1]
    shutil.rmtree(store / "parts" / part)
    verify = run_cli("store", "verify", store, expect=1)
    assert f"part {part}: metadata missing" in verify.output
    info = json.loads(run_cli("store", "info", store, "--json").output)
    assert info["clips"] == len(FeatureStore.open(trusted["store"]))  # the index still knows


@pytest.mark.parametrize(
    "damage",
    ["truncate", "delete", "edit"],
)
def test_damaged_root_is_damage_not_absence(damage, trusted, tmp_path):
    store = tmp_path / "feats.zarr"
    shutil.copytree(trusted["store"], store)
    root = store / "zarr.json"
    if damage == "truncate":
        root.write_bytes(root.read_bytes()[:100])
    elif damage == "delete":
        root.unlink()
    else:  # valid JSON, but a committed clip edited away from the index
        node = json.loads(root.read_text())
        first = next(iter(node["attributes"]["emi"]["parts"].values()))
        first["clip_id"][0] = "someone-else"
        root.write_text(json.dumps(node))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    verify = run_cli("store", "verify", store, expect=2)
    assert "damaged" in verify.output and "no feature store" not in verify.output
    extract = run_cli("extract", trusted["audio"], store, "--quiet", expect=2)
    assert "damaged" in extract.output
    run_cli("predict", store, "--head", trusted["head"], "-o", tmp_path / "p.csv", expect=2)
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before  # nothing wiped, nothing rewritten
