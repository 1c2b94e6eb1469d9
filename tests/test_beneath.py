"""Paths opened beneath a root never reach outside it: links followed while they stay
below, ``..`` never above the root, and a link that flips between an inside and an
outside target while it is opened, listed or parsed, thousands of times, both with the
kernel's ``openat2`` and with the component walk."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from manifests import beneath
from manifests.beneath import OutsideRoot, open_beneath, resolve_beneath
from manifests.records import ManifestError
from service.config import ServiceConfig
from service.errors import RequestError
from service.sources import (
    list_folder,
    manifest_below_roots,
    read_labels_below_roots,
    resolve_source,
)
from tests.flipping import flipping
from tests.synth import write_clip

SECRET = b"SECRET_KEY=do-not-show"


@pytest.fixture(params=["openat2", "walk"])
def mode(request, monkeypatch):
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return request.param


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.txt").write_bytes(SECRET)
    (root / "a" / "rel.txt").symlink_to("b/f.txt")
    (root / "abs").symlink_to(root / "a" / "b")  # an absolute link that stays inside
    (root / "out.txt").symlink_to(outside / "s.txt")
    (root / "a" / "up").symlink_to("../../outside")
    (root / "loop").symlink_to("loop")
    return {"root": str(root.resolve()), "outside": outside}


def _read(root: str, relative: str) -> tuple[bytes, str]:
    fd, real = open_beneath(root, relative)
    try:
        return os.read(fd, 100), real
    finally:
        os.close(fd)


def test_links_are_followed_only_while_they_stay_beneath_the_root(tree, mode):
    root = tree["root"]
    for relative in ("a/b/f.txt", "a/rel.txt", "abs/f.txt", "a/b/../b/f.txt", "a/../a/rel.txt"):
        data, real = _read(root, relative)
        assert data == b"inside" and real == f"{root}/a/b/f.txt", relative
    assert resolve_beneath(root, "a/..") == root
    for relative in ("out.txt", "a/up/s.txt", "..", "a/../../outside/s.txt", "abs/../../.."):
        with pytest.raises(OutsideRoot):
            open_beneath(root, relative)
    with pytest.raises(OSError) as loop:
        open_beneath(root, "loop")
    assert loop.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        open_beneath(root, "a/missing.txt")
    with pytest.raises(NotADirectoryError):
        open_beneath(root, "a/b/f.txt/x")


def test_a_flipping_link_never_opens_what_is_outside(tree, mode):
    root = Path(tree["root"])
    stop = threading.Event()
    thread = flipping(root / "flip.txt", "a/b/f.txt", str(tree["outside"] / "s.txt"), stop)
    seen = {"inside": 0, "refused": 0}
    try:
        for _ in range(2000):
            try:
                data, real = _read(str(root), "flip.txt")
            except (OutsideRoot, FileNotFoundError):
                seen["refused"] += 1
                continue
            assert data == b"inside" and real == f"{root}/a/b/f.txt"
            seen["inside"] += 1
    finally:
        stop.set()
        thread.join()
    assert seen["inside"] > 0 and seen["refused"] > 0, seen  # both targets were met


def _config(tmp_path: Path, root: Path) -> ServiceConfig:
    return ServiceConfig(stores=str(tmp_path / "stores"), heads=tmp_path / "heads",
                         state=tmp_path / "state", source_roots=[str(root)])  # fmt: skip


def test_labels_folders_and_listings_through_a_flipping_link_stay_inside(tmp_path, mode):
    """200 reads of each kind the service makes (a label file, a source folder and its
    clips, a folder listing) while a link flips: nothing outside is read, listed or
    named, and a label file's parse error never shows its text."""
    root = tmp_path / "root"
    inside = root / "inside"
    write_clip(inside / "clip.wav", 0.5, seed=1)
    (inside / "labels.csv").write_text("Filename,Joy\nclip,0.5\n")
    (inside / "broken.csv").write_text("Joy,Filename\nclip,0.5\n")  # a parse error
    outside = tmp_path / "outside"
    write_clip(outside / "secret_name.wav", 0.5, seed=2)
    (outside / "labels.csv").write_bytes(SECRET + b",x\nsecret_name,0.1\n")
    (outside / "secret_folder").mkdir()
    config = _config(tmp_path, root)
    stop = threading.Event()
    threads = [
        flipping(root / "labels.csv", "inside/labels.csv", str(outside / "labels.csv"), stop),
        flipping(root / "bad.csv", "inside/broken.csv", str(outside / "labels.csv"), stop),
        flipping(root / "folder", "inside", str(outside), stop),
    ]
    said: list[str] = []
    try:
        for _ in range(200):
            for name in ("labels.csv", "bad.csv"):
                try:
                    table = read_labels_below_roots(config, str(root / name), what="labels")
                    assert list(table.rows) == ["clip"]
                except (RequestError, ManifestError) as err:
                    said.append(str(err))
            try:
                folder = resolve_source(config, str(root / "folder"))
                records, refused = manifest_below_roots(folder, config)
                assert [r.clip_id for r in records] == ["clip"] and refused == []
                assert all(r.path.startswith(str(inside)) for r in records)
                listed = list_folder(config, str(root / "folder"))
                said.append(str(listed))
            except RequestError as err:
                assert err.status in (403, 404)  # 404: the link was mid-swap
                said.append(str(err))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    text = "\n".join(said)
    assert "SECRET" not in text and "secret_" not in text and str(outside) not in text
    assert "line 1: first column" in text  # the inside file's parse error, by line only
    assert "is outside the source roots" in text  # the flips were met
