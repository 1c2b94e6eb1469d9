"""Scoring a folder of audio: manifest, extraction of what is missing, prediction.

Composes the feature store's extractor with the heads (``models`` reads stores only);
``emi score`` and the service's score jobs both run :func:`score_folder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featurestore.options import ComputeSettings, ExtractOptions, RunHooks, user_cache_dir
from featurestore.records import ClipFailure
from featurestore.store import FeatureStore, set_name_of
from manifests import ClipRecord, build_manifest
from models.errors import HeadError
from models.head_files import LoadedHead, sets_for_head
from models.prediction import Predictions, load_heads, predict_store

LOCK_WAIT_S = 6 * 3600.0  # how long a score waits for another writer of its store


def default_score_store(fingerprint: str) -> Path:
    """The cache store for features of one spec, under the user cache
    (``$EMI_CACHE`` or ``~/.cache/emi``).

    Its clips are keyed by the sha256 of the file's bytes, not by path: a file whose
    content changes is a new clip, so the cache never serves features of other audio.
    """
    return user_cache_dir() / "score" / f"{fingerprint[:16]}.zarr"


@dataclass
class ScoreResult:
    """What ``score_folder`` did.

    Attributes:
        predictions: per clip id of the folder (sorted), for the clips that are stored.
        store: where the features are.
        extracted: clips computed by this run.
        reused: clips whose features were already stored.
        failed: clips of the folder that could not be extracted, left out of the
            predictions.
        stopped: ``should_stop`` answered True: what was finished is stored, and the
            predictions are of those clips only (partial; ``output`` is not written).
        features_at: per clip id predicted, (the store its features were read from,
            its id there).
    """

    predictions: Predictions
    store: str
    extracted: int
    reused: int
    failed: list[ClipFailure] = field(default_factory=list)
    stopped: bool = False
    features_at: dict[str, tuple[str, str]] = field(default_factory=dict)


def score_folder(
    audio_dir: str | os.PathLike | list[ClipRecord],
    heads: Sequence[str | os.PathLike | LoadedHead],
    *,
    output: str | os.PathLike | None = None,
    store: str | None = None,
    model: str | None = None,
    compute: ComputeSettings | None = None,
    head_device: str | None = None,
    quiet: bool = False,
    cache_store_for: Callable[[str], str] | None = None,
    hooks: RunHooks | None = None,
    resolved_paths: bool = False,
    on_partial: Callable[[Predictions], None] | None = None,
    on_predicting: Callable[[], None] | None = None,
    reuse_from: Callable[[str], list[str]] | None = None,
) -> ScoreResult:
    """Score every audio file below ``audio_dir`` with ``heads`` (``emi score``).

    Features are extracted with the backbone and settings recorded in the heads, into
    ``store`` or a cache store keyed by file content (:func:`default_score_store`); a
    stored clip whose file changed is recomputed, so a prediction always comes from the
    file's current content. The backbone is checked against the heads before anything
    is extracted.

    Args:
        audio_dir: a local folder or a URL (``s3://bucket/audio``), or its manifest.
        heads: head folders (or loaded heads) trained on one feature spec.
        output: also write the predictions CSV there.
        store: the store to extract into; None: the cache.
        model: backbone folder or hub id; None: the heads' own.
        compute: where the extraction runs (workers, scheduler, the workers' device);
            None: the defaults, one local worker.
        head_device: where the heads predict (this process); None: the workers'
            device where they run here, else ``auto`` (a login node may have no GPU).
        cache_store_for: where the content-keyed store of features of a fingerprint is
            (used when ``store`` is None); None: :func:`default_score_store`.
        hooks: the extraction's client, progress and stop (:class:`RunHooks`).
        resolved_paths: the folder's paths were resolved when it was listed
            (:class:`WritePolicy`).
        on_partial: where the extraction fails, called with the predictions of the
            clips stored before it failed (then the error is raised).
        on_predicting: called once the features are stored, before the heads run.
        reuse_from: for the cache store (``store`` None) and heads of one feature set:
            given its fingerprint, further stores whose features of it are read where
            they hold a file's content (the same sha256), instead of computing them
            again (a service's managed stores); counted as reused.

    Raises:
        HeadError: heads of different feature specs, or not heads.
        StoreError: ``model`` does not make the heads' features; ``store`` is not an
            emi store, is damaged or is being written.

    Examples:
        >>> from service import score_folder  # doctest: +SKIP
        >>> result = score_folder("new", ["heads/paper"], output="s.csv")  # doctest: +SKIP
        >>> result.failed  # doctest: +SKIP
        []
    """
    compute = compute or ComputeSettings()
    head_device = head_device or (compute.device if compute.local else "auto")
    loaded = load_heads(heads, device=head_device)
    _same_features(loaded)
    refs = loaded[0].config.feature_refs
    wanted = [ref.fingerprint for ref in refs]
    folder = list(audio_dir) if isinstance(audio_dir, list) else build_manifest(audio_dir)
    cached = store is None
    # one set: its fingerprint (as before sets); several: a hash of them all
    joined = hashlib.sha256("+".join(wanted).encode()).hexdigest()
    cache_for = cache_store_for or (lambda key: str(default_score_store(key)))
    location = cache_for(wanted[0] if len(wanted) == 1 else joined) if cached else store
    if cached and "://" not in location:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    records = _content_keyed(folder) if cached else folder

    def key(record: ClipRecord) -> str:
        return content_key(record) if cached else record.clip_id

    # features another store holds for a file's content: read there, not computed again
    elsewhere = (
        stored_elsewhere(records, wanted[0], reuse_from(wanted[0]))
        if cached and reuse_from is not None and len(refs) == 1 and model is None
        else {}
    )
    records = [r for r in records if r.clip_id not in elsewhere]
    sources = [(location, key), *_sources_elsewhere(elsewhere)]
    summaries: list = []
    run = ExtractOptions(compute=compute, quiet=quiet).but(resolved_paths=resolved_paths)
    try:
        for index, ref in enumerate(refs):  # every feature set the heads read
            summary = _extract_set(records, location, loaded, index, ref, model, run, hooks)
            summaries.append(summary)
            if summary.stopped:
                break
    except Exception:
        if on_partial is not None:  # what was stored before the failure still predicts
            with contextlib.suppress(Exception):
                on_partial(_predict_stored(folder, loaded, sources, head_device)[0])
        raise
    if on_predicting is not None:
        on_predicting()
    predictions, where = _predict_stored(folder, loaded, sources, head_device)
    if output is not None and not summaries[-1].stopped:
        predictions.write_csv(output)
    return ScoreResult(
        predictions,
        location,
        max(s.extracted for s in summaries),
        min(s.already_stored for s in summaries) + len(elsewhere),
        _failures(folder, key, summaries),
        stopped=summaries[-1].stopped,
        features_at=where,
    )


def _same_features(loaded: list[LoadedHead]) -> None:
    """Refuse heads trained on different features, naming which read which.

    Raises:
        HeadError: ``compact, paper: 1a2b3c4d5e6f; mean-linear: 9f8e7d6c5b4a``.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for head in loaded:
        key = tuple(ref.fingerprint for ref in head.config.feature_refs)
        groups.setdefault(key, []).append(head.name)
    if len(groups) > 1:
        described = "; ".join(
            f"{', '.join(names)}: features {' + '.join(f[:12] for f in key)}"
            for key, names in groups.items()
        )
        raise HeadError(
            f"the heads were trained on different features ({described}); score with "
            "heads of one feature spec (or one list of joined feature sets) at a time"
        )


def _set_options(
    loaded: list[LoadedHead], index: int, ref, model: str | None, run: ExtractOptions
) -> ExtractOptions:
    """``run`` (where and how to extract) with the settings of the heads' ``index``-th
    feature set (``ref``): its spec's, into the set holding these features or a new one
    of the head's name."""
    spec = loaded[0].spec if index == 0 else ref.spec
    if spec is None:
        raise HeadError(f"{loaded[0].folder}: its config.json records no feature spec")
    return run.but(
        model=(model if index == 0 and model else None) or spec.backbone.ref,
        revision=spec.backbone.revision,
        compute_dtype=spec.compute_dtype,
        max_seconds=spec.max_seconds,
        window_seconds=spec.window_seconds,
        layers=spec.layers,
        # the set holding these features, else a new one of the head's set name
        # (chosen under the writer lock: two scores waiting never take one name)
        new_set_name=ref.feature_set or (set_name_of(ref.spec) if ref.spec else None),
        refresh_changed=True,  # never serve features of a file's earlier content
        # another score (or extract) writing the store: wait for it, saying so
        wait_for_lock_s=LOCK_WAIT_S,
        expect_fingerprint=ref.fingerprint,
    )


def _extract_set(records, location: str, loaded, index: int, ref, model, run, hooks):
    """Extract what is missing of the heads' ``index``-th feature set (``ref``); an
    :class:`ExtractSummary` of nothing to do where the store holds it all."""
    from featurestore.extraction import ExtractSummary, extract

    if not records:  # every clip read from another store: nothing to extract here
        return ExtractSummary(store=location, fingerprint=ref.fingerprint)
    # nothing to extract: no writer lock taken (with another --model, extract checks
    # that it makes the heads' features first)
    stored = None if model else _all_stored(location, ref.fingerprint, records)
    if stored is not None:
        return stored
    return extract(records, location, _set_options(loaded, index, ref, model, run), hooks)


def stored_elsewhere(
    records: list[ClipRecord], fingerprint: str, locations: list[str]
) -> dict[str, tuple[str, str]]:
    """For the content-keyed ``records`` (ids: sha256), those whose content a store of
    ``locations`` holds in its set of features ``fingerprint``: sha256 -> (that store's
    location, the clip's id there). A store that cannot be read is passed over."""
    from featurestore.errors import StoreError

    wanted = {r.clip_id for r in records if r.sha256 and not r.problem}
    found: dict[str, tuple[str, str]] = {}
    for location in locations:
        try:
            held = FeatureStore.open(location).set_for_fingerprint(fingerprint)
            by_clip = held.sha256_by_clip() if held is not None else {}
        except (StoreError, OSError, ValueError, KeyError):
            continue
        for clip_id, sha256 in by_clip.items():
            if sha256 in wanted and sha256 not in found:
                found[sha256] = (location, clip_id)
    return found


def _sources_elsewhere(elsewhere: dict[str, tuple[str, str]]) -> list[tuple[str, Callable]]:
    """One (location, key) per further store, the key giving a record its id there."""
    by_location: dict[str, dict[str, str]] = {}
    for sha256, (location, clip_id) in elsewhere.items():
        by_location.setdefault(location, {})[sha256] = clip_id
    return [
        (location, lambda r, ids=ids: ids.get(content_key(r), ""))
        for location, ids in by_location.items()
    ]


def _predict_stored(
    folder: list[ClipRecord], loaded: list[LoadedHead], sources: list[tuple[str, Callable]], device
) -> tuple[Predictions, dict[str, tuple[str, str]]]:
    """The heads' predictions for the clips of ``folder`` whose features every set the
    heads read holds, of the file's current content (by the folder's clip ids, sorted),
    each read from the first of ``sources`` (a store's location and the key giving a
    record its id there) that holds it; and per clip id, (that location, its key)."""
    from featurestore.errors import StoreError

    picked: dict[str, tuple[int, int]] = {}  # clip id -> (source, row in its values)
    values_of, where = [], {}
    for index, (location, key) in enumerate(sources):
        try:
            opened = FeatureStore.open(location)
            held = [s.sha256_by_clip() for s in sets_for_head(opened, loaded[0])]
        except (StoreError, HeadError):  # nothing stored yet (a run stopped at once)
            held = []
        todo = [r for r in folder if r.clip_id not in picked and key(r)]
        ids = sorted({key(r) for r in todo if all(s.get(key(r)) == r.sha256 for s in held)})
        if not held or not ids:
            values_of.append({})
            continue
        ids, values = predict_store(opened, loaded, clip_ids=ids, device=device)
        values_of.append(values)
        row_of = {cid: i for i, cid in enumerate(ids)}
        for r in todo:
            if key(r) in row_of:
                picked[r.clip_id] = (index, row_of[key(r)])
                where[r.clip_id] = (location, key(r))
    clip_ids = sorted(picked)
    if not clip_ids:
        empty = {h.name: np.zeros((0, len(h.targets))) for h in loaded}
        return Predictions([], loaded, empty), {}
    columns = {
        h.name: np.stack([values_of[picked[c][0]][h.name][picked[c][1]] for c in clip_ids])
        for h in loaded
    }
    return Predictions(clip_ids, loaded, columns), where


def _failures(folder: list[ClipRecord], key: Callable, summaries: list) -> list[ClipFailure]:
    """The failed clips, by the folder's clip ids (a content key may stand for several)."""
    names: dict[str, list[str]] = {}
    for r in folder:
        names.setdefault(key(r), []).append(r.clip_id)
    reasons = {f.clip_id: f for summary in summaries for f in summary.failed}
    return [
        replace(f, clip_id=cid)
        for f in reasons.values()
        for cid in names.get(f.clip_id, [f.clip_id])
    ]


def _all_stored(location: str, wanted: str, records: list[ClipRecord]):
    """An :class:`ExtractSummary` of nothing to do where the store's set of features
    ``wanted`` holds every record with the file's current content; else None."""
    from featurestore.errors import StoreError
    from featurestore.extraction import ExtractSummary

    try:
        opened = FeatureStore.open(location)
    except StoreError:
        return None  # absent (or damaged: extract says so)
    held = opened.set_for_fingerprint(wanted)
    if held is None or any(r.problem or not r.sha256 for r in records):
        return None
    stored = held.sha256_by_clip()
    if any(stored.get(r.clip_id) != r.sha256 for r in records):
        return None
    return ExtractSummary(
        store=location,
        fingerprint=wanted,
        feature_set=held.feature_set,
        already_stored=len(records),
    )


def _content_keyed(folder: list[ClipRecord]) -> list[ClipRecord]:
    """One record per distinct file content, its id the content's sha256."""
    unique: dict[str, ClipRecord] = {}
    for r in folder:
        unique.setdefault(content_key(r), replace(r, clip_id=content_key(r), labels={}))
    return list(unique.values())


def content_key(record: ClipRecord) -> str:
    """A clip's id in the cache store: its content's sha256; a file that could not be
    read (no sha256) is keyed by its path, so each such file fails on its own."""
    return record.sha256 or f"unreadable:{record.path}"
