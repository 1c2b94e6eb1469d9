"""``./run serve [FOLDER] [emi serve options]``: ``emi serve`` on what ``emi demo``
made in FOLDER (default ``emi-demo``), the command the demo's closing lines print."""

from __future__ import annotations

import shlex
import sys

import click


def main(argv: list[str] | None = None) -> None:
    """Print the ``emi serve`` command for the demo folder, then run it (options after
    the folder are added to it: ``--port 8001``); exit 2 where the folder holds no
    demo run."""
    from manifests import ManifestError
    from service.demo import serve_arguments

    args = list(sys.argv[1:] if argv is None else argv)
    folder = args.pop(0) if args and not args[0].startswith("-") else "emi-demo"
    try:
        options = [*serve_arguments(folder), *args]
    except ManifestError as err:
        click.echo(f"[run] {err}", err=True)
        sys.exit(2)
    click.echo(f"[run] {shlex.join(['emi', 'serve', *options])}", err=True)
    from cli.main import emi

    emi.main(["serve", *options], prog_name="emi")


if __name__ == "__main__":
    main()
