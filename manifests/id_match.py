"""Why a label file's ids miss a store's clip ids, where the two differ only by a folder
prefix (``audio/00001`` against ``00001``) or a file extension (``00001.wav``).

A store's clip ids are the files' paths relative to the folder that was extracted,
without their extension (``emi extract data/ ...`` gives ``audio/00001``,
``emi extract data/audio ...`` gives ``00001``); a label file's ``Filename`` is taken
as written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath

SAMPLE = 500  # label ids looked at; a mismatch of a whole file shows in any sample
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".mp4", ".webm")


def _tails(clip_id: str) -> Iterable[tuple[str, str]]:
    """``(prefix, rest)`` for each folder boundary of ``clip_id``: ``a/b/c`` gives
    ``("a/", "b/c")`` and ``("a/b/", "c")``."""
    parts = clip_id.split("/")
    for cut in range(1, len(parts)):
        yield "/".join(parts[:cut]) + "/", "/".join(parts[cut:])


def _common_prefix(ids: list[str], other: set[str]) -> tuple[str, int] | None:
    """The prefix most often found on ``ids`` whose removal gives an id of ``other``,
    with how many of ``ids`` it matches; None if no id matches that way."""
    found = Counter()
    for clip_id in ids:
        for prefix, rest in _tails(clip_id):
            if rest in other:
                found[prefix] += 1
                break
    return found.most_common(1)[0] if found else None


def explain_id_mismatch(
    label_ids: Iterable[str], store_ids: Iterable[str], *, show_labels: bool = True
) -> str | None:
    """One sentence on why ``label_ids`` are not found among ``store_ids``, naming the
    fix, where most of the labels match once a folder prefix or an extension is taken
    off one side; None where no such pattern explains them.

    ``show_labels`` False: the sentence names no text of the label file (its prefix),
    only the store's (a label file read for a client of the service).
    """
    labels = [c for c in list(label_ids)[:SAMPLE] if c]
    stored = set(store_ids)
    if not labels or not stored:
        return None
    enough = max(1, len(labels) // 2)
    by_rest: dict[str, str] = {}  # a store id's part after a prefix -> that prefix
    counted = Counter()
    for clip_id in stored:
        for prefix, rest in _tails(clip_id):
            by_rest.setdefault(rest, prefix)
    for clip_id in labels:
        if clip_id in by_rest:
            counted[by_rest[clip_id]] += 1
    if counted:
        prefix, hits = counted.most_common(1)[0]
        if hits >= enough:
            return (
                f"the store's clip ids carry the folder prefix {prefix!r} that the label "
                f"file's ids do not ({prefix}{labels[0]} against {labels[0]})"
                if show_labels
                else f"the store's clip ids carry the folder prefix {prefix!r} that the "
                "label file's ids do not"
            ) + (
                ": the store was extracted from the folder above the audio. Extract from "
                f"the audio folder itself (emi extract .../{prefix.rstrip('/')} ...), or "
                f"write the label file's ids with the prefix ({prefix}<id>)"
            )
    matched = _common_prefix(labels, stored)
    if matched and matched[1] >= enough:
        prefix = matched[0]
        shown = f" {prefix!r}" if show_labels else ""
        return (
            f"the label file's ids carry a folder prefix{shown} that the store's clip ids "
            "do not: write the label file's ids without it (the store's ids are paths "
            "relative to the folder that was extracted), or extract from the folder above "
            "the audio"
        )
    stems = sum(
        1
        for c in labels
        if PurePosixPath(c).suffix.lower() in AUDIO_SUFFIXES
        and str(PurePosixPath(c).with_suffix("")) in stored
    )
    if stems >= enough:
        return (
            "the label file's ids end in a file extension (.wav, ...) that the store's clip "
            "ids do not: write the ids without their extension"
        )
    return None
