"""Saving and loading manifests as CSV or JSONL (chosen by the file extension)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from manifests.atomic import atomic_file
from manifests.build import check_unique_ids
from manifests.records import ClipRecord, ManifestError


def save_manifest(records: list[ClipRecord], path: str | Path) -> Path:
    """Write ``records`` to ``.csv`` (label columns after the fixed ones) or ``.jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ManifestError(f"{path}: manifest must end in .csv or .jsonl")
    records = sorted(records, key=lambda r: r.clip_id)  # every CSV emi writes: by clip id
    with atomic_file(path) as temporary:
        _write_manifest(records, temporary, path.suffix.lower())
    return path


def _write_manifest(records: list[ClipRecord], path: Path, suffix: str) -> None:
    if suffix == ".jsonl":
        with path.open("w") as f:
            for r in records:
                f.write(json.dumps(r.to_dict()) + "\n")
        return
    targets: list[str] = []
    for r in records:
        targets += [t for t in r.labels if t not in targets]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*ClipRecord.FIELDS, *targets])
        for r in records:
            d = r.to_dict()
            row = ["" if d[k] is None else d[k] for k in ClipRecord.FIELDS]
            writer.writerow(row + [r.labels.get(t, "") for t in targets])


def _read_text(path: Path) -> str:
    """A text file as UTF-8 (a byte-order mark is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from err


def load_manifest(path: str | Path) -> list[ClipRecord]:
    """Read a manifest written by :func:`save_manifest`.

    Raises:
        ManifestError: missing file or columns, unparsable rows or duplicate ids, with
            the offending line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    records, bad = [], []
    if path.suffix.lower() == ".jsonl":
        for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                records.append(ClipRecord.from_dict(data))
            except (ValueError, KeyError, TypeError) as err:
                bad.append(f"line {line_no}: {err}")
    elif path.suffix.lower() == ".csv":
        with io.StringIO(_read_text(path), newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            lacking = [c for c in ("clip_id", "path") if c not in columns]
            if lacking:
                raise ManifestError(f"{path}: no column {', '.join(lacking)}; is it a manifest?")
            targets = [c for c in columns if c not in ClipRecord.FIELDS]
            for line_no, row in enumerate(reader, start=2):
                labels = {t: row[t] for t in targets if row.get(t) not in (None, "")}
                try:
                    records.append(ClipRecord.from_dict({**row, "labels": labels}))
                except (ValueError, KeyError) as err:
                    bad.append(f"line {line_no} ({row.get('clip_id')}): {err}")
    else:
        raise ManifestError(f"{path}: manifest must end in .csv or .jsonl")
    if bad:
        raise ManifestError(f"{path}: unreadable rows: " + "; ".join(bad[:5]))
    check_unique_ids(records, source=str(path))
    return records


def load_source(source: str | Path, *, label_files=()) -> list[ClipRecord]:
    """The clips of ``source``: a manifest file (``.csv``/``.jsonl``), or an audio folder
    (local or a URL such as ``s3://bucket/audio``) scanned with :func:`build_manifest`
    (then ``label_files`` are merged on).

    Raises:
        ManifestError: no such file or folder, labels given with a manifest file, or a
            bad manifest.
    """
    from manifests.build import build_manifest
    from manifests.sources import is_url

    if is_url(source) or Path(source).is_dir():
        return build_manifest(source, label_files=label_files)
    if not Path(source).is_file():
        raise ManifestError(f"{source}: no such manifest file or audio folder")
    if label_files:
        raise ManifestError(f"{source}: labels apply to an audio folder; a manifest has them")
    return load_manifest(source)
