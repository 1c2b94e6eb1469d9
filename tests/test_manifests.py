import json

import pytest

from manifests import (
    ManifestError,
    build_manifest,
    load_manifest,
    read_labels,
    save_manifest,
    sha256_of_file,
)
from tests.conftest import run_cli
from tests.synth import write_clip

HEADER = "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy\n"


def test_folder_manifest_fields(tmp_path):
    write_clip(tmp_path / "a" / "00001.wav", 1.5, rate_hz=16_000)
    write_clip(tmp_path / "00002.flac", 0.5, rate_hz=44_100, channels=2)
    write_clip(tmp_path / "00003.mp3", 2.0, rate_hz=16_000)
    (tmp_path / "notes.txt").write_text("not audio, ignored by extension")
    records = build_manifest(tmp_path)
    by_id = {r.clip_id: r for r in records}
    assert sorted(by_id) == ["00002", "00003", "a/00001"]
    a = by_id["a/00001"]
    assert a.duration_s == pytest.approx(1.5)
    assert (a.sample_rate_hz, a.channels) == (16_000, 1)
    assert a.sha256 == sha256_of_file(tmp_path / "a" / "00001.wav")
    assert (by_id["00002"].sample_rate_hz, by_id["00002"].channels) == (44_100, 2)
    assert by_id["00003"].duration_s == pytest.approx(2.0, abs=0.1)
    assert not any(r.problem for r in records)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_roundtrip_with_labels(tmp_path, suffix):
    audio = tmp_path / "audio"
    for i in range(3):
        write_clip(audio / f"{i:05d}.wav", 0.5, seed=i)
    (tmp_path / "train_split.csv").write_text(
        HEADER + "00000,0.1,0.2,0.3,0.4,0.5,0.6\n00001,1,0,0,0,0,0.25\n"
    )
    (tmp_path / "valid_split.csv").write_text(HEADER + "00002,0,0,0,0,0,1\n")
    records = build_manifest(
        audio, label_files=[tmp_path / "train_split.csv", tmp_path / "valid_split.csv"]
    )
    out = save_manifest(records, tmp_path / f"clips{suffix}")
    loaded = load_manifest(out)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in records]
    by_id = {r.clip_id: r for r in loaded}
    assert by_id["00000"].split == "train" and by_id["00002"].split == "valid"
    assert by_id["00000"].labels["Empathic Pain"] == pytest.approx(0.4)
    assert list(by_id["00001"].labels) == HEADER.strip().split(",")[1:]


def test_zero_padded_ids_stay_text(tmp_path):
    (tmp_path / "l.csv").write_text(HEADER + "00042,0,0,0,0,0,0\n")
    assert list(read_labels(tmp_path / "l.csv").rows) == ["00042"]


def test_labelled_clips_without_audio_are_listed(tmp_path):
    write_clip(tmp_path / "audio" / "00001.wav", 0.5)
    (tmp_path / "train_split.csv").write_text(
        HEADER + "00001,0,0,0,0,0,0\n00007,0,0,0,0,0,0\n00009,0,0,0,0,0,0\n"
    )
    with pytest.raises(ManifestError, match=r"2 labelled clips have no audio.*00007, 00009"):
        build_manifest(tmp_path / "audio", label_files=[tmp_path / "train_split.csv"])


def test_duplicate_ids_in_folder_are_listed(tmp_path):
    write_clip(tmp_path / "00001.wav", 0.5)
    write_clip(tmp_path / "00001.flac", 0.5)
    with pytest.raises(ManifestError, match=r"00001: 00001.flac, 00001.wav"):
        build_manifest(tmp_path)


def test_bad_label_rows_are_listed(tmp_path):
    (tmp_path / "l.csv").write_text(
        HEADER + "00001,0,0,0,0,0,0\n00001,0,0,0,0,0,1\n00002,x,0,0,0,0,0\n"
    )
    with pytest.raises(ManifestError, match=r"duplicate ids: line 3 \(00001\).*line 4 \(00002\)"):
        read_labels(tmp_path / "l.csv")


def test_duplicate_ids_in_manifest_file(tmp_path):
    rows = [{"clip_id": "a", "path": "/x.wav"}, {"clip_id": "a", "path": "/y.wav"}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ManifestError, match="duplicate clip ids: a"):
        load_manifest(path)


def test_unreadable_header_is_flagged_not_fatal(tmp_path):
    write_clip(tmp_path / "good.wav", 0.5)
    (tmp_path / "bad.mp3").write_text("this is text, not mp3\n" * 20)
    records = {r.clip_id: r for r in build_manifest(tmp_path)}
    assert records["good"].problem == ""
    assert "unreadable header" in records["bad"].problem


def test_cli_manifest_build_reports_problems(tmp_path):
    write_clip(tmp_path / "audio" / "good.wav", 0.5)
    (tmp_path / "audio" / "bad.wav").write_bytes(b"\0" * 100)
    result = run_cli("manifest", "build", tmp_path / "audio", "-o", tmp_path / "m.csv")
    assert "2 clips" in result.output
    assert "bad" in result.stderr and "unreadable header" in result.stderr
    missing = run_cli("manifest", "build", tmp_path / "nowhere", "-o", tmp_path / "m.csv", expect=2)
    assert "audio folder not found" in missing.output


def test_id_mismatches_by_a_prefix_or_an_extension_are_explained():
    from manifests.id_match import explain_id_mismatch

    stored = [f"audio/{i:05d}" for i in range(40)]
    labels = [f"{i:05d}" for i in range(30)]
    said = explain_id_mismatch(labels, stored)
    assert "the store's clip ids carry the folder prefix 'audio/'" in said
    assert "(audio/00000 against 00000)" in said and "emi extract .../audio" in said
    hidden = explain_id_mismatch(labels, stored, show_labels=False)
    assert "'audio/'" in hidden and "00000" not in hidden  # the store's text only
    deeper = explain_id_mismatch(["a/1", "a/2"], ["data/audio/a/1", "data/audio/a/2"])
    assert "'data/audio/'" in deeper
    prefixed = explain_id_mismatch([f"clips/{i:05d}" for i in range(30)], labels)
    assert "the label file's ids carry a folder prefix 'clips/'" in prefixed
    assert "'clips/'" not in explain_id_mismatch(
        [f"clips/{i:05d}" for i in range(30)], labels, show_labels=False
    )
    extension = explain_id_mismatch([f"{i:05d}.wav" for i in range(30)], labels)
    assert "end in a file extension" in extension
    # unrelated ids, or only a few that match: no explanation (the plain advice stands)
    assert explain_id_mismatch(["x", "y", "z"], stored) is None
    assert explain_id_mismatch(["00001", "q1", "q2", "q3", "q4"], stored) is None
    assert explain_id_mismatch([], stored) is None
