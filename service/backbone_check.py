"""Which backbone a service's extract jobs into new stores use (``--model``, else emi's
default checkpoint), and whether it can be loaded now: said at start-up, and checked
when such a job is submitted, so a job is refused with what the operator must do
instead of failing later with advice its submitter cannot follow."""

from __future__ import annotations

import os
from pathlib import Path

from service.config import ServiceConfig


def extract_backbone(config: ServiceConfig) -> tuple[str, str, bool]:
    """``(ref, how, usable)``: the backbone of extract jobs into new stores, where it
    comes from (or why it cannot be loaded), and whether it can be loaded."""
    from featurestore.options import DEFAULT_MODEL

    ref = config.model or DEFAULT_MODEL
    path = Path(ref).expanduser()
    if path.is_dir():
        return ref, "a local checkpoint folder", True
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        return ref, "not a checkpoint folder (nor a hub id)", False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return ref, "in the Hugging Face cache", True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return ref, "not in the Hugging Face cache, and HF_HUB_OFFLINE=1 is set", False
    return ref, "fetched from the Hugging Face hub by the first job that needs it", True


def start_up_line(config: ServiceConfig) -> str:
    """What ``emi serve`` says about extract jobs when it starts."""
    ref, how, usable = extract_backbone(config)
    given = "--model" if config.model else "emi's default, no --model given"
    if usable:
        return f"extract jobs into new stores use backbone {ref} ({given}; {how})"
    return (
        f"extract jobs into new stores are refused: backbone {ref} ({given}) is {how}. "
        "Restart with --model FOLDER (a local checkpoint folder) to allow them; extract "
        "jobs into existing stores use their store's backbone"
    )


def unusable_for_new_stores(config: ServiceConfig) -> str | None:
    """Why an extract job into a new store cannot run (None: it can)."""
    ref, how, usable = extract_backbone(config)
    if usable:
        return None
    return (
        f"extract jobs into a new store need a backbone, and this service's ({ref}) is "
        f"{how}. Ask the operator to restart emi serve with --model FOLDER (a local "
        "checkpoint folder), or extract into an existing store (GET /v1/stores): it "
        "uses that store's backbone"
    )
