"""The ``emi`` command: wires manifests, featurestore and models together.

Exit status: 0 done; 1 unexpected error; 2 usage error (bad option, missing file,
mismatched store or backbone); 3 the run finished but some clips failed (listed).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from cli import (
    demo_cmd,
    evaluate_cmd,
    extract_cmd,
    heads_cmd,
    jobs_cmd,
    manifest_cmd,
    model_cmd,
    models_cmd,
    serve_cmd,
    store_cmd,
)
from featurestore.errors import (
    ArgumentError,
    BackboneError,
    DeviceError,
    LayerError,
    StoreError,
)
from manifests.records import ManifestError
from models.errors import HeadError, SettingsError

USER_ERRORS = (
    ArgumentError,
    ManifestError,
    StoreError,
    BackboneError,
    HeadError,
    DeviceError,
    SettingsError,
    LayerError,
)


class EmiGroup(click.Group):
    """Turns the errors a user can fix into a one-line message and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=EmiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="emi")
def emi() -> None:
    """Emotional Mimicry Intensity from audio: extract features once, train heads, score."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)


emi.add_command(manifest_cmd.manifest)
emi.add_command(extract_cmd.extract)
emi.add_command(store_cmd.store)
emi.add_command(model_cmd.model)
emi.add_command(models_cmd.train)
emi.add_command(models_cmd.predict)
emi.add_command(evaluate_cmd.evaluate)
emi.add_command(heads_cmd.heads)
emi.add_command(models_cmd.score)
emi.add_command(demo_cmd.demo)
emi.add_command(serve_cmd.serve)
emi.add_command(jobs_cmd.jobs)


def main() -> None:
    sys.exit(emi.main(standalone_mode=True))


if __name__ == "__main__":
    main()
