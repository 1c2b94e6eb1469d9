"""Label files in the challenge's CSV format: ``Filename,<target>,<target>,...``.

``Filename`` is kept as text (the challenge's ids are zero-padded: ``00042``). A column
named ``clip_id`` works in its place.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from manifests.records import ManifestError, format_examples

ID_COLUMNS = ("Filename", "clip_id")


@dataclass(frozen=True)
class LabelTable:
    """Targets (column order of the file) and one row of floats per clip id."""

    path: str
    targets: tuple[str, ...]
    rows: dict[str, tuple[float, ...]]

    @property
    def split(self) -> str:
        """Split name from the file name: ``train_split.csv`` -> ``train``."""
        stem = Path(self.path).stem
        return stem[: -len("_split")] if stem.endswith("_split") else stem


def read_labels(path: str | Path) -> LabelTable:
    """Read a label CSV.

    Raises:
        ManifestError: no id column, no targets, duplicate ids or values that are not
            numbers, with the offending line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"label file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from err
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ManifestError(f"{path}: empty file; expected a header 'Filename,<targets>'")
        header = [h.strip() for h in header]
        if header[0] not in ID_COLUMNS:
            raise ManifestError(
                f"{path}: first column is {header[0]!r}; expected 'Filename' (the challenge "
                "format) or 'clip_id'"
            )
        targets = tuple(header[1:])
        repeated = sorted({t for t in targets if targets.count(t) > 1 or t == header[0]})
        if repeated or not all(targets):
            raise ManifestError(
                f"{path}: header columns must be distinct and named; repeated or empty: "
                f"{repeated or ['(empty)']}"
            )
        if not targets:
            raise ManifestError(f"{path}: no target columns after {header[0]!r}")
        rows: dict[str, tuple[float, ...]] = {}
        duplicates, bad = [], []
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            clip_id = row[0].strip()
            if len(row) != len(header):
                bad.append(f"line {line} ({clip_id}): {len(row)} fields, header has {len(header)}")
                continue
            try:
                values = tuple(float(cell) for cell in row[1:])
            except ValueError:
                bad.append(f"line {line} ({clip_id}): {row[1:]}")
                continue
            if clip_id in rows:
                duplicates.append(f"line {line} ({clip_id})")
            rows[clip_id] = values
    problems = []
    if duplicates:
        problems.append(f"duplicate ids: {format_examples(duplicates)}")
    if bad:
        problems.append(f"rows that are not numbers: {format_examples(bad)}")
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))
    return LabelTable(str(path), targets, rows)


def check_label_values(table: LabelTable, *, low: float = 0.0, high: float = 1.0) -> None:
    """Raise if any label is NaN or outside ``[low, high]``, with counts and examples."""
    nan, out = [], []
    for clip_id, values in table.rows.items():
        for target, value in zip(table.targets, values, strict=True):
            if math.isnan(value):
                nan.append(f"{clip_id}/{target}")
            elif not low <= value <= high:
                out.append(f"{clip_id}/{target}={value}")
    problems = []
    if nan:
        problems.append(f"{len(nan)} NaN labels: {format_examples(nan)}")
    if out:
        problems.append(f"{len(out)} labels outside [{low}, {high}]: {format_examples(out)}")
    if problems:
        raise ManifestError(f"{table.path}: " + "; ".join(problems))
