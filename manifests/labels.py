"""Label files in the challenge's CSV format: ``Filename,<target>,<target>,...``.

``Filename`` is kept as text (the challenge's ids are zero-padded: ``00042``). A column
named ``clip_id`` works in its place.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from manifests.records import ManifestError, format_examples

ID_COLUMNS = ("Filename", "clip_id")


@dataclass(frozen=True)
class LabelTable:
    """Targets (column order of the file) and one row of floats per clip id.

    ``lines`` gives each clip id's line number in the file; with ``show_content``
    False (a file read for a client of the service), errors about the table name those
    lines, never the file's text (ids, values or column names)."""

    path: str
    targets: tuple[str, ...]
    rows: dict[str, tuple[float, ...]]
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    show_content: bool = True

    @property
    def split(self) -> str:
        """Split name from the file name: ``train_split.csv`` -> ``train``."""
        stem = Path(self.path).stem
        return stem[: -len("_split")] if stem.endswith("_split") else stem

    def examples(self, clip_ids: list[str], limit: int = 5) -> str:
        """A few of ``clip_ids`` for an error: the ids, or (``show_content`` False) their
        line numbers."""
        if self.show_content:
            return format_examples(clip_ids, limit)
        return "lines " + format_examples([self.lines.get(c, "?") for c in clip_ids], limit)


def read_labels(path: str | Path) -> LabelTable:
    """Read a label CSV.

    Raises:
        ManifestError: no id column, no targets, duplicate ids or values that are not
            numbers, with the offending line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"label file not found: {path}")
    return parse_labels(path.read_bytes(), str(path))


def parse_labels(data: bytes, name: str, *, show_content: bool = True) -> LabelTable:
    """A label CSV's bytes as a table; ``name`` is how errors name the file.

    Args:
        show_content: False for a file read on a client's behalf: errors give line
            numbers and what was expected, never the line's text.

    Raises:
        ManifestError: as :func:`read_labels`.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(
            f"{name}: not UTF-8 text (at byte {err.start}); save it as UTF-8"
        ) from None
    shown = (lambda text: f" ({text})") if show_content else (lambda text: "")
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error:
            expected = "expected 'Filename,<targets>'"
            raise ManifestError(f"{name}: line 1 is not CSV; {expected}") from None
        if not header:
            raise ManifestError(f"{name}: empty file; expected a header 'Filename,<targets>'")
        header = [h.strip() for h in header]
        if header[0] not in ID_COLUMNS:
            found = f"first column is {header[0]!r}" if show_content else "line 1: first column"
            raise ManifestError(
                f"{name}: {found}; expected 'Filename' (the challenge format) or 'clip_id'"
            )
        targets = tuple(header[1:])
        repeated = sorted({t for t in targets if targets.count(t) > 1 or t == header[0]})
        if repeated or not all(targets):
            raise ManifestError(
                f"{name}: line 1: header columns must be distinct and named; repeated or "
                f"empty{shown(str(repeated or ['(empty)']))}"
            )
        if not targets:
            raise ManifestError(f"{name}: no target columns after {header[0]!r}")
        return _rows(reader, name, header, shown, show_content)


def _rows(reader, name: str, header: list[str], shown, show_content: bool) -> LabelTable:
    rows: dict[str, tuple[float, ...]] = {}
    lines: dict[str, int] = {}
    duplicates, bad = [], []
    try:
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            clip_id = row[0].strip()
            if len(row) != len(header):
                bad.append(
                    f"line {line}{shown(clip_id)}: {len(row)} fields, header has {len(header)}"
                )
                continue
            try:
                values = tuple(float(cell) for cell in row[1:])
            except ValueError:
                what = str(row[1:]) if show_content else "a value is not a number"
                bad.append(f"line {line}{shown(clip_id)}: {what}")
                continue
            if clip_id in rows:
                duplicates.append(f"line {line}{shown(clip_id)}")
            rows[clip_id] = values
            lines[clip_id] = line
    except csv.Error:
        raise ManifestError(f"{name}: line {reader.line_num} is not CSV") from None
    problems = []
    if duplicates:
        problems.append(f"duplicate ids: {format_examples(duplicates)}")
    if bad:
        problems.append(f"rows that are not numbers: {format_examples(bad)}")
    if problems:
        raise ManifestError(f"{name}: " + "; ".join(problems))
    return LabelTable(name, tuple(header[1:]), rows, lines, show_content)


def check_label_values(table: LabelTable, *, low: float = 0.0, high: float = 1.0) -> None:
    """Raise if any label is NaN or outside ``[low, high]``, with counts and examples
    (line numbers only where the table hides its content)."""
    nan, out = [], []
    for clip_id, values in table.rows.items():
        for target, value in zip(table.targets, values, strict=True):
            if math.isnan(value):
                nan.append(f"{clip_id}/{target}" if table.show_content else clip_id)
            elif not low <= value <= high:
                out.append(f"{clip_id}/{target}={value}" if table.show_content else clip_id)
    problems = []
    if nan:
        examples = format_examples(nan) if table.show_content else table.examples(nan)
        problems.append(f"{len(nan)} NaN labels: {examples}")
    if out:
        examples = format_examples(out) if table.show_content else table.examples(out)
        problems.append(f"{len(out)} labels outside [{low}, {high}]: {examples}")
    if problems:
        raise ManifestError(f"{table.path}: " + "; ".join(problems))
