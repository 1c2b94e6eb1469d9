"""The service's named things: heads in the registry (``--heads``) and stores under
``--stores``. Clients name them; their paths never leave the server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from models.compare import is_head
from service.config import SCORE_STORE_PREFIX, ServiceConfig
from service.errors import RequestError, conflict, not_found

log = logging.getLogger("emi.service")


def head_names(config: ServiceConfig) -> list[str]:
    """Registry names: ``NAME`` for a head folder, ``GRID/NAME`` for one in a grid's folder."""
    root = config.heads
    names = []
    for top in sorted(root.iterdir()) if root.is_dir() else []:
        if top.name.startswith(".") or not top.is_dir():
            continue
        if is_head(top):
            names.append(top.name)
            continue
        names += [
            f"{top.name}/{inner.name}"
            for inner in sorted(top.iterdir())
            if inner.is_dir() and not inner.name.startswith(".") and is_head(inner)
        ]
    return names


def head_folder(config: ServiceConfig, name: str) -> Path:
    """The folder of the registry head ``name``.

    Raises:
        RequestError: 404 naming the registry's heads.
    """
    names = head_names(config)
    if name not in names:
        shown = ", ".join(names[:20]) or "none yet"
        raise not_found(f"head {name!r} is not in the registry (heads: {shown}); GET /v1/heads")
    return config.heads / name


RESERVED = ".reserved"  # registry names claimed by train jobs: heads/.reserved/<name>


def _taken(name: str) -> RequestError:
    return conflict(
        f"the registry already holds {name!r}; choose another name for the trained heads"
    )


def reserve_head(config: ServiceConfig, name: str, job_id: str) -> None:
    """Claim the registry name ``name`` for the train job ``job_id`` (a note made
    atomically: of two jobs naming it, one gets it).

    Raises:
        RequestError: 409 where the name is taken (by a head or another job).
    """
    if (config.heads / name).exists():
        raise _taken(name)
    notes = config.heads / RESERVED
    notes.mkdir(exist_ok=True)
    try:
        handle = os.open(notes / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _taken(name) from None
    with os.fdopen(handle, "w") as note:
        note.write(job_id)


def release_head(config: ServiceConfig, name: str, job_id: str) -> None:
    """Drop ``job_id``'s claim on ``name`` (once its heads are written, or it ended
    without them)."""
    note = config.heads / RESERVED / name
    with contextlib.suppress(OSError):
        if note.read_text() == job_id:
            note.unlink()


def check_new_head(config: ServiceConfig, name: str, *, reserved_by: str) -> Path:
    """The folder the train job ``reserved_by`` writes ``name`` to (claimed by it).

    Raises:
        RequestError: 409 where another job or head holds the name.
    """
    note = config.heads / RESERVED / name
    try:
        owner = note.read_text()
    except OSError:
        owner = None
    if owner != reserved_by:
        raise _taken(name)
    return config.heads / name


def list_heads(config: ServiceConfig) -> dict:
    """``GET /v1/heads``: every registry head with its features, preset, layers,
    validation mean Pearson (and what it rests on: clips, interval, flagged targets) and
    training seconds, best first; the recommended head where their validation scores
    compare (:func:`models.compare.recommendation`), else why not."""
    from dataclasses import replace

    from models.compare import compare_heads, recommendation
    from models.errors import HeadError

    rows, readable = [], []
    for name in head_names(config):
        try:
            [row] = compare_heads([config.heads / name])
            card = _card(config.heads / name)
        except (HeadError, ValueError, OSError) as err:
            log.warning("registry head %s is unreadable: %s", name, err)
            rows.append({"name": name, "error": config.public_text(str(err))})
            continue
        readable.append(replace(row, name=name))
        rows.append(
            {
                "name": name,
                "preset": row.preset,
                "layer": row.layer,
                "features": [
                    {
                        "feature_set": ref.get("feature_set"),
                        "fingerprint": ref.get("fingerprint"),
                        "backbone": _public_ref((ref.get("spec") or {}).get("backbone", {})),
                        "random_backbone": is_random_backbone(
                            (ref.get("spec") or {}).get("backbone", {}).get("ref")
                        ),
                    }
                    for ref in card
                ],
                "targets": list(row.val_pearson),
                "val_pearson_mean": row.val_pearson_mean,
                "val_pearson": row.val_pearson,
                "best_epoch": row.best_epoch,
                "parameters": row.parameters,
                "train_seconds": row.train_seconds,
                "preset_summary": _preset_summary(row.preset),
                "val_clips": row.val_clips,
                "val_set": row.val_set and row.val_set[:16],
                "val_interval": row.val_interval,
                "nearly_constant": list(row.nearly_constant),
                "negative": list(row.negative),
            }
        )
    readable.sort(key=lambda r: (-r.val_pearson_mean, r.name))
    chosen = recommendation(readable)
    return {
        "heads": sorted(rows, key=lambda r: (-(r.get("val_pearson_mean") or -2.0), r["name"])),
        "recommended": chosen.head,
        "comparable": chosen.comparable,
        "comparison": chosen.reason,
    }


def is_random_backbone(ref: str | None) -> bool | None:
    """Whether the checkpoint folder ``ref`` is a random stand-in (True: its config.json
    carries the mark ``write_random_backbone`` leaves), a real one (False), or cannot be
    told (None: a hub id, or a folder that is gone)."""
    from featurestore.options import RANDOM_MARK

    if not ref or not os.path.isdir(ref):
        return None if not ref or "/" not in ref or ref.startswith("/") else False
    try:
        return RANDOM_MARK in json.loads((Path(ref) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _public_ref(backbone: dict) -> str | None:
    """A backbone as a client may see it: its hub id, or a local folder's name only."""
    ref = backbone.get("ref")
    if isinstance(ref, str) and (ref.startswith("/") or os.sep in ref and os.path.exists(ref)):
        return os.path.basename(ref.rstrip("/"))
    return ref


def _card(folder: Path) -> list[dict]:
    data = json.loads((folder / "config.json").read_text())
    return [data.get("store") or {}, *(data.get("joined") or [])]


def store_exists(location: str) -> bool:
    from featurestore.location import StoreLocation

    where = StoreLocation.of(location)
    return where.fs.exists(where.key("zarr.json"))


def store_names(config: ServiceConfig, *, refresh: bool = False) -> list[str]:
    """The managed stores' names; ``refresh``: ask the object store again, not a
    listing cached by the file system layer (the readiness check)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(config.stores)
    try:
        entries = fs.ls(root, detail=False, **({"refresh": True} if refresh else {}))
    except FileNotFoundError:
        return []
    names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return sorted(n.removesuffix(".zarr") for n in names if n.endswith(".zarr"))


def managed_stores(config: ServiceConfig) -> list[str]:
    """The locations of the named managed stores (not the score jobs' own)."""
    return [
        config.store_location(n)
        for n in store_names(config)
        if not n.startswith(SCORE_STORE_PREFIX)
    ]


def list_stores(config: ServiceConfig) -> list[dict]:
    """``GET /v1/stores``: each managed store's name, feature sets, clips, hours, size."""
    from featurestore.errors import StoreError
    from featurestore.report import store_info
    from featurestore.store import FeatureStore

    rows = []
    for name in store_names(config):
        location = config.store_location(name)
        try:
            info = store_info(FeatureStore.open(location))
        except StoreError as err:
            rows.append({"name": name, "error": config.public_text(str(err))})
            continue
        sets = [
            {
                k: s.get(k)
                for k in (
                    "feature_set",
                    "fingerprint",
                    "backbone",
                    "layers",
                    "clips",
                    "hours_audio",
                    "set_size_bytes",
                    "damaged",
                )
                if k in s
            }
            for s in info["feature_sets"]
        ]
        for one in sets:  # a local backbone folder: its name only
            one["backbone"] = _public_ref({"ref": one.get("backbone")})
        rows.append(
            {
                "name": name,
                "kind": "score" if name.startswith(SCORE_STORE_PREFIX) else "named",
                "feature_sets": sets,
                # every set holds the store's clips (or some of them)
                "clips": max((s.get("clips") or 0 for s in sets), default=0),
                "hours": round(max((s.get("hours_audio") or 0.0 for s in sets), default=0), 4),
                "size_bytes": info["size_bytes"],
            }
        )
    return rows


def check_store_name(name: str) -> None:
    if name.startswith(SCORE_STORE_PREFIX):
        raise RequestError(
            400,
            "bad request",
            f"store {name!r}: names starting {SCORE_STORE_PREFIX!r} are the score jobs' own "
            "stores; choose another name",
        )


def _preset_summary(preset: str | None) -> str | None:
    from models.options import PRESET_RECORDS

    found = PRESET_RECORDS.get(preset or "")
    return found.summary if found else None
