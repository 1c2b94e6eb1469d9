"""Building a manifest from an audio folder, optionally with label files merged on."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from manifests.containers import ContainerError, is_container, probe_container
from manifests.labels import LabelTable, read_labels
from manifests.records import (
    AUDIO_EXTENSIONS,
    ClipRecord,
    ManifestError,
    count_of,
    format_examples,
)
from manifests.sources import UnsafeSource, broken_link, list_files, open_source, source_size

HASH_BLOCK_BYTES = 1 << 20


def sha256_of_file(path: str | Path, *, exact: bool = False) -> str:
    """sha256 of a local file's or a URL's bytes (``exact``: see ``open_source``)."""
    digest = hashlib.sha256()
    with open_source(path, exact=exact) as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def probe(record: ClipRecord, *, exact: bool = False) -> ClipRecord:
    """Fill duration, rate, channels and sha256 from the file; set ``problem`` if unreadable
    (a broken symbolic link, a file without read permission, a FIFO, ...). ``exact``: the
    path was resolved when listed; a link swapped in since is not followed
    (``open_source``)."""
    try:
        record.sha256 = sha256_of_file(record.path, exact=exact)
        size = source_size(record.path)
    except UnsafeSource as err:
        record.problem = str(err)
        return record
    except OSError as err:
        record.problem = broken_link(record.path) or (
            f"cannot be read ({err.strerror or type(err).__name__})"
        )
        return record
    if size == 0:
        record.problem = "empty file (0 bytes)"
        return record
    if is_container(record.path):
        return _probe_container(record, exact)
    try:
        with open_source(record.path, exact=exact) as f:
            info = sf.info(f)
    except Exception as err:  # libsndfile's errors for non-audio, empty or odd files
        record.problem = f"unreadable header: {err}"
        return record
    if info.samplerate <= 0 or info.frames <= 0:
        record.problem = f"no audio samples (header: {info.frames} frames at {info.samplerate} Hz)"
    record.sample_rate_hz = int(info.samplerate)
    record.channels = int(info.channels)
    record.duration_s = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    return record


def _probe_container(record: ClipRecord, exact: bool) -> ClipRecord:
    """A video or audio container: its first audio stream's rate, channels and
    duration, from the container."""
    try:
        with open_source(record.path, exact=exact) as f:
            info = probe_container(f)
    except (ContainerError, OSError) as err:
        record.problem = str(err)
        return record
    if info.sample_rate_hz <= 0 or info.duration_s <= 0:
        record.problem = f"no audio samples (audio stream: {info.duration_s:.3f} s)"
    record.sample_rate_hz = info.sample_rate_hz
    record.channels = info.channels
    record.duration_s = info.duration_s
    return record


def scan_folder(folder: str | Path) -> list[ClipRecord]:
    """Records for every audio file below ``folder`` (recursive), not yet probed.

    ``folder`` is a local folder or an fsspec URL (``s3://bucket/audio``). The clip id is
    the path relative to ``folder`` without its extension, with ``/``.

    Raises:
        ManifestError: the folder is missing, has no audio, or two files share an id.
    """
    try:
        files = list_files(folder, AUDIO_EXTENSIONS)
    except FileNotFoundError:
        raise ManifestError(f"audio folder not found: {folder}") from None
    return records_of_files(folder, files)


def records_of_files(folder: str | Path, files: list[tuple[str, str]]) -> list[ClipRecord]:
    """Records (not yet probed) of a folder's audio files, given as ``(path relative to
    the folder, full path)``: the clip id is the relative path without its extension.

    Raises:
        ManifestError: no files, or two files share an id.
    """
    if not files:
        raise ManifestError(
            f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found, recursively"
        )
    by_id: dict[str, list[str]] = defaultdict(list)
    for relative, full in files:
        by_id[relative.rsplit(".", 1)[0]].append(full)
    clashes = {cid: paths for cid, paths in by_id.items() if len(paths) > 1}
    if clashes:
        rows = [
            f"{cid}: {', '.join(p.rsplit('/', 1)[-1] for p in sorted(paths))}"
            for cid, paths in clashes.items()
        ]
        raise ManifestError(
            f"{folder}: {len(clashes)} clip ids have more than one file; keep one file per "
            f"clip: {format_examples(rows)}"
        )
    return [ClipRecord(clip_id=cid, path=paths[0]) for cid, paths in by_id.items()]


def merge_labels(
    records: list[ClipRecord], tables: Iterable[LabelTable], *, audio_dir: str | Path
) -> list[ClipRecord]:
    """Attach labels and split to records; labelled clips must have audio.

    Raises:
        ManifestError: a clip appears in two label files, or a labelled clip has no
            audio file under ``audio_dir``.
    """
    by_id = {r.clip_id: r for r in records}
    seen: dict[str, str] = {}
    duplicates, missing = [], []
    for table in tables:
        for clip_id, values in table.rows.items():
            if clip_id in seen:
                duplicates.append(f"{clip_id} ({seen[clip_id]} and {table.path})")
                continue
            seen[clip_id] = table.path
            record = by_id.get(clip_id)
            if record is None:
                missing.append(clip_id)
                continue
            record.labels = dict(zip(table.targets, values, strict=True))
            record.split = table.split
    problems = []
    if duplicates:
        problems.append(f"clips in more than one label file: {format_examples(duplicates)}")
    if missing:
        exts = "/".join(e.lstrip(".") for e in AUDIO_EXTENSIONS)
        problems.append(
            f"{count_of(len(missing), 'labelled clip')} {'has' if len(missing) == 1 else 'have'} "
            f"no audio file {audio_dir}/<Filename>.{{{exts}}}: {format_examples(missing)}"
        )
        with_extension = [c for c in missing if c.lower().endswith(AUDIO_EXTENSIONS)]
        if with_extension:
            problems.append(
                "the challenge's ids have no extension (00042, not 00042.wav): remove the "
                f"extension from the Filename column (e.g. {with_extension[0]} -> "
                f"{with_extension[0].rsplit('.', 1)[0]})"
            )
    if problems:
        raise ManifestError("; ".join(problems))
    return records


def build_manifest(
    audio_dir: str | Path,
    *,
    label_files: Iterable[str | Path] = (),
    only_labelled: bool = False,
    progress=None,
) -> list[ClipRecord]:
    """Scan ``audio_dir``, merge labels, probe every file (header and sha256).

    Args:
        audio_dir: folder searched recursively for wav, flac, ogg and mp3 files and for
            video and audio containers (mp4, mkv, webm, avi, mov, m4a, aac, opus).
        label_files: challenge-format CSVs; each file's name gives the split
            (``train_split.csv`` -> ``train``).
        only_labelled: keep only clips that appear in a label file.
        progress: optional callable taking an iterable and returning it (a progress bar).

    Returns:
        Records sorted by clip id. Files whose header is unreadable stay in, with
        ``problem`` set.
    """
    records = scan_folder(audio_dir)
    tables = [read_labels(f) for f in label_files]
    if tables:
        records = merge_labels(records, tables, audio_dir=audio_dir)
        if only_labelled:
            records = [r for r in records if r.labels]
    iterable = progress(records) if progress else records
    return sorted((probe(r) for r in iterable), key=lambda r: r.clip_id)


def check_unique_ids(records: list[ClipRecord], *, source: str) -> None:
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.clip_id] += 1
    duplicated = [cid for cid, n in counts.items() if n > 1]
    if duplicated:
        raise ManifestError(f"{source}: duplicate clip ids: {format_examples(duplicated)}")
