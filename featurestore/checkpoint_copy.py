"""Put a backbone checkpoint where a cluster reads it: copied whole, checked, then
renamed into place (a reader never sees half a checkpoint)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from featurestore.errors import BackboneError


def copy_checkpoint(source: str, destination: str | os.PathLike):
    """Copy the checkpoint folder ``source`` (a local folder or an fsspec URL such as
    ``s3://bucket/models/name``) to the local folder ``destination`` and return its
    identity (:class:`~featurestore.backbone.BackboneIdentity`).

    The files go to a hidden folder beside ``destination`` first; the copy is read as a
    checkpoint there (config and weights, hashed) and only then renamed into place. A
    ``destination`` that holds the same checkpoint already is left as it is.

    Raises:
        BackboneError: ``source`` is not a checkpoint folder, or ``destination`` holds
            another checkpoint or something else (nothing is changed then).
    """
    import fsspec

    from featurestore.backbone import identify_backbone

    target = Path(destination).expanduser().absolute()
    fs, root = fsspec.core.url_to_fs(str(source))
    root = root.rstrip("/")
    if not fs.isdir(root) or not fs.exists(f"{root}/config.json"):
        raise BackboneError(
            f"{source}: not a checkpoint folder (no config.json there); give the folder "
            "holding config.json and the weights"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for path in fs.find(root):
            relative = path[len(root) :].lstrip("/")
            if not relative or any(p.startswith(".") for p in relative.split("/")):
                continue  # hidden files (caches, locks) are not the checkpoint's
            local = partial / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(local))
        identity = identify_backbone(str(partial))
        if target.exists():
            held = _identity_of(target)
            if held is None or held.checkpoint_hash != identity.checkpoint_hash:
                what = "another checkpoint" if held else "something that is not a checkpoint"
                raise BackboneError(
                    f"{target}: holds {what}; choose another folder or remove it first"
                )
            return held
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return identify_backbone(str(target))


def _identity_of(folder: Path):
    from featurestore.backbone import identify_backbone

    try:
        return identify_backbone(str(folder))
    except BackboneError:
        return None
