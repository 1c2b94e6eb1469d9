"""The ``emi`` command: wires manifests, featurestore and models together.

Exit status: 0 done; 1 unexpected error; 2 usage error (bad option, missing file,
mismatched store or backbone); 3 the run finished but some clips failed (listed).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

# Each subcommand's module is imported when that command runs (or --help lists it), so
# `emi extract` never pays for what `emi store` or `emi serve` import: name -> module:attr.
COMMANDS = {
    "manifest": "cli.manifest_cmd:manifest",
    "extract": "cli.extract_cmd:extract",
    "store": "cli.store_cmd:store",
    "model": "cli.model_cmd:model",
    "train": "cli.models_cmd:train",
    "predict": "cli.models_cmd:predict",
    "evaluate": "cli.evaluate_cmd:evaluate",
    "heads": "cli.heads_cmd:heads",
    "score": "cli.models_cmd:score",
    "demo": "cli.demo_cmd:demo",
    "serve": "cli.serve_cmd:serve",
    "worker": "cli.worker_cmd:worker",
    "jobs": "cli.jobs_cmd:jobs",
}


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can fix: one line and exit status 2 (imported when one is raised)."""
    from featurestore.errors import (
        ArgumentError,
        BackboneError,
        ClusterLost,
        DeviceError,
        LayerError,
        SlurmError,
        StoreError,
    )
    from manifests.records import ManifestError
    from models.errors import HeadError, SettingsError

    return (
        ArgumentError,
        ManifestError,
        StoreError,
        BackboneError,
        HeadError,
        DeviceError,
        SettingsError,
        LayerError,
        ClusterLost,
        SlurmError,
    )


class EmiGroup(click.Group):
    """Subcommands loaded on first use; the errors a user can fix become a one-line
    message and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: --help, usage errors, Ctrl-C
        except Exception as err:
            if isinstance(err, user_errors()):
                from featurestore.errors import as_flag

                click.echo(f"Error: {as_flag(err)}", err=True)
                ctx.exit(2)
            raise


@click.group(cls=EmiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="emi")
def emi() -> None:
    """Emotional Mimicry Intensity from audio: extract features once, train heads, score."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def main() -> None:
    sys.exit(emi.main(standalone_mode=True))


if __name__ == "__main__":
    main()
