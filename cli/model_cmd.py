"""``emi model``: offline stand-in backbones and backbone identity."""

from __future__ import annotations

import json

import click

from featurestore.families import DEFAULT_FAMILY, FAMILIES
from featurestore.options import BACKBONE_SIZES

SIZES = tuple(BACKBONE_SIZES)  # read from the library's table, not a copy


@click.group()
def model() -> None:
    """Backbones: write a random one, copy one where a cluster reads it, show hashes."""


@model.command("init-random")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--size",
    type=click.Choice(SIZES),
    default="tiny",
    show_default=True,
    help="tiny/small: layer norm; base: group norm (wav2vec2-base); "
    "large-robust-12: the real checkpoint's shape.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--norm",
    type=click.Choice(["layer", "group"]),
    default=None,
    help="Override the feature encoder's norm (default: the size's).",
)
@click.option(
    "--family",
    type=click.Choice(list(FAMILIES)),
    default=DEFAULT_FAMILY,
    show_default=True,
    help="wav2vec2: the audeering layout with its VAD head; hubert, wavlm: a plain "
    "transformers checkpoint of that family (hidden states only, no VAD head).",
)
def init_random(folder: str, size: str, seed: int, norm: str | None, family: str) -> None:
    """Write a seeded random checkpoint to FOLDER (see --family).

    Its scores mean nothing: it exercises the pipeline offline.
    """
    from featurestore.backbone import identify_backbone
    from featurestore.random_backbone import write_random_backbone

    write_random_backbone(folder, size=size, seed=seed, norm=norm, family=family)
    identity = identify_backbone(folder)
    click.echo(
        f"random {size} {family} backbone (seed {seed}) -> {folder}; checkpoint hash "
        f"{identity.checkpoint_hash[:12]}"
    )


@model.command("copy")
@click.argument("source")
@click.argument("destination", type=click.Path(file_okay=False))
def copy(source: str, destination: str) -> None:
    """Put the checkpoint SOURCE where a cluster reads it: DESTINATION.

    SOURCE is a checkpoint folder here or in object storage (s3://bucket/models/name);
    DESTINATION a folder on the model volume (deploy/README.md). The copy is checked
    (config and weights read and hashed) before it is renamed into place, so workers
    never read half a checkpoint; a DESTINATION holding the same checkpoint is kept.
    Prints the identity a store's fingerprint records."""
    from featurestore.checkpoint_copy import copy_checkpoint

    identity = copy_checkpoint(source, destination)
    click.echo(
        json.dumps(
            {
                "ref": identity.ref,
                "checkpoint_hash": identity.checkpoint_hash,
                "weights_sha256": identity.weights_sha256,
                "family": identity.config.model_type,
            },
            indent=2,
        )
    )


@model.command("info")
@click.argument("ref")
@click.option("--revision", default=None, help="Hub revision (hub ids only).")
def info(ref: str, revision: str | None) -> None:
    """Show a checkpoint's config summary and hashes (REF: folder or hub id).

    checkpoint_hash identifies the weights and config; a store's fingerprint is another
    hash, of the whole feature spec (backbone, layer, crop, dtype...)."""
    from featurestore.backbone import has_vad_head, identify_backbone

    identity = identify_backbone(ref, revision=revision)
    c = identity.config
    click.echo(
        json.dumps(
            {
                "ref": identity.ref,
                "family": c.model_type,
                "vad_head": has_vad_head(c),
                "revision": identity.revision,
                "checkpoint_hash": identity.checkpoint_hash,
                "weights_sha256": identity.weights_sha256,
                "hidden_size": c.hidden_size,
                "layers": c.num_hidden_layers,
                "feat_extract_norm": c.feat_extract_norm,
            },
            indent=2,
        )
    )
