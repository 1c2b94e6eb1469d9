"""``emi serve``: the job service (parse, build the settings, run uvicorn)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.cluster_options import cluster_options
from cli.shared_options import device_option, scheduler_option, workers_option
from service.config import (
    DEFAULT_CALLBACK_BACKOFF_S,
    DEFAULT_CALLBACK_TIMEOUT_S,
    DEFAULT_CONCURRENT_JOBS,
    DEFAULT_HOST,
    DEFAULT_KEEP_DAYS,
    DEFAULT_MAX_ARCHIVE_RATIO,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PORT,
    MiB,
)

if TYPE_CHECKING:
    from service.config import ServiceConfig
    from service.state import StateFolder


@click.command()
@click.option("--stores", required=True, help="Folder or s3:// prefix of the managed stores.")
@click.option(
    "--heads", required=True, type=click.Path(file_okay=False), help="The head registry folder."
)
@click.option(
    "--state",
    required=True,
    type=click.Path(file_okay=False),
    help="State folder: job table, uploads, results (made if new; one service per folder).",
)
@click.option(
    "--source-root",
    "source_roots",
    multiple=True,
    required=True,
    help="A folder or s3:// prefix jobs may read audio and labels from (repeatable).",
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="EMI_PORT",
    show_envvar=True,
    help="Port to listen on (also EMI_PORT, as container platforms set it).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Bearer tokens, one per line; required beyond loopback.",
)
@workers_option()
@scheduler_option("Run jobs on this dask scheduler instead.")
@cluster_options(on_demand=True)
@click.option("--model", default=None, help="Backbone of extract jobs into new stores.")
@device_option(
    "The dask workers' device (extraction); the service's own work runs on this "
    "machine's GPU if any, else its CPU."
)
@click.option(
    "--jobs",
    "concurrent_jobs",
    default=DEFAULT_CONCURRENT_JOBS,
    show_default=True,
    type=click.IntRange(1),
    help="Jobs run at once (jobs writing one store take turns).",
)
@click.option(
    "--part-seconds",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Audio seconds per extraction part: the unit of resume and cancel.",
)
@click.option(
    "--upload-max-file-mb",
    default=DEFAULT_MAX_FILE_BYTES // MiB,
    show_default=True,
    type=click.IntRange(1),
)
@click.option(
    "--upload-max-request-mb",
    default=DEFAULT_MAX_REQUEST_BYTES // MiB,
    show_default=True,
    type=click.IntRange(1),
)
@click.option(
    "--upload-max-files", default=DEFAULT_MAX_FILES, show_default=True, type=click.IntRange(1)
)
@click.option(
    "--callback-secret-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Key that signs job callbacks (HMAC-SHA256); without it jobs cannot ask for one.",
)
@click.option(
    "--callback-backoff",
    default=DEFAULT_CALLBACK_BACKOFF_S,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds before a callback's first retry (doubling after).",
)
@click.option(
    "--callback-allow",
    "callback_allow",
    multiple=True,
    metavar="HOST[,HOST..]",
    help="Hosts, addresses or networks (10.0.0.0/8) callbacks may reach although not "
    "public (loopback, private, link-local are refused otherwise); repeatable.",
)
@click.option(
    "--callback-timeout",
    default=DEFAULT_CALLBACK_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds one callback attempt may take, all of it (connect to answer).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME[,NAME..]",
    help="Further names requests may give as Host (a proxy's name); without tokens only "
    "the loopback names are answered otherwise; repeatable.",
)
@click.option(
    "--upload-quota-gb",
    type=click.FloatRange(min=0.001),
    default=None,
    help="All uploads kept at once, in GB (an upload past it gets 413); default: no quota.",
)
@click.option(
    "--upload-max-ratio",
    default=DEFAULT_MAX_ARCHIVE_RATIO,
    show_default=True,
    type=click.FloatRange(min=1),
    help="An archive's unpacked size over its packed size, at most.",
)
@click.option(
    "--keep-days",
    default=DEFAULT_KEEP_DAYS,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Uploads and finished jobs' results are removed after this many days (0: kept).",
)
def serve(**options) -> None:
    """Run the job service: score, extract and train jobs over HTTP (docs: The service).

    --device is the dask workers' device: with --scheduler or --cluster slurm, the
    service's own work (heads predicting, training) runs on this machine's GPU if it
    has one, else its CPU, so the service needs no GPU of its own. With --cluster slurm
    the workers are SLURM jobs submitted from here, started when jobs arrive (up to
    --cluster-max-jobs) and released when idle.

    Binds 127.0.0.1 by default; another --host needs --token-file. Jobs survive a
    restart: a job running when the service was killed resumes, and recomputes nothing
    committed. SIGTERM stops taking jobs, lets running parts commit and exits 0.
    """
    from service.errors import ServiceSetupError
    from service.memory_limits import limit_onednn_cache

    limit_onednn_cache()  # before torch is imported: memory bounded over thousands of jobs
    _service_logs()
    try:
        listener, config, state = prepare_service(options)
    except ServiceSetupError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    from service.app import create_app
    from service.backbone_check import start_up_line

    app = create_app(config, state)
    host = f"[{config.host}]" if ":" in config.host else config.host
    click.echo(
        f"emi serve: the page is at http://{host}:{config.port}/ (state {config.state}; "
        f"{'tokens required' if config.tokens else 'no tokens: loopback only'})",
        err=True,
    )
    click.echo(f"emi serve: {start_up_line(config)}", err=True)
    server_for(app, config).run(sockets=[listener])
    state.release()


def prepare_service(options: dict) -> tuple[socket.socket, ServiceConfig, StateFolder]:
    """What ``emi serve`` makes before it serves, from its parsed options (``serve``'s
    parameters, as ``serve.make_context("serve", args).params`` gives them): the
    listening socket (the address first: a taken port is refused before anything is
    made), the :class:`~service.config.ServiceConfig`, and the state folder, held.

    Returns:
        ``(listener, config, state)``.

    Raises:
        ServiceSetupError: a taken port, a bad option, a refused cluster or state folder.
    """
    from service.state import StateFolder

    listener = _listen(options["host"], options["port"])
    try:
        config = _config(options, port=listener.getsockname()[1])
        _check_cluster(config)
        state = StateFolder.open(config.state)
        config.state = state.root
        state.hold()
    except BaseException:
        listener.close()
        raise
    return listener, config, state


def _check_cluster(config) -> None:
    """Refused at start, not by every job: without --scheduler the workers run here, so
    --device cuda needs this machine's GPU; with --cluster slurm, sbatch must accept
    the worker jobs (partition, account, resources)."""
    from featurestore.devices import require_device
    from featurestore.errors import DeviceError, SlurmError
    from service.errors import ServiceSetupError

    if config.slurm is not None:
        from featurestore.slurm import check_submits, make_cluster

        try:
            cluster = make_cluster(config.slurm, device=config.device)
            try:
                check_submits(cluster)
            finally:
                cluster.close()
        except SlurmError as err:
            raise ServiceSetupError(str(err)) from None
    elif config.scheduler is None:
        try:
            require_device(config.device)
        except DeviceError as err:
            raise ServiceSetupError(str(err)) from None


def _service_logs() -> None:
    """One log line per job transition, not per connection or dask event."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for noisy in ("distributed", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening: a browser opening the address
    printed at start waits in the backlog until uvicorn accepts, never refused.

    Raises:
        ServiceSetupError: the port is taken, or the address cannot be used.
    """
    from service.errors import ServiceSetupError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        if err.errno == errno.EADDRINUSE:
            raise ServiceSetupError(
                f"--port {port}: the port is taken on {host} (another emi serve, or ./run "
                "docs?); choose another with --port (or EMI_PORT). Nothing was started"
            ) from None
        raise ServiceSetupError(
            f"--host {host} --port {port}: cannot listen there ({err.strerror or err})"
        ) from None
    listener.listen(2048)  # uvicorn's backlog
    return listener


def _config(options: dict, *, port: int):
    """The service's settings from the command line's options."""
    from service.config import ServiceConfig, is_placeholder, read_tokens
    from service.errors import ServiceSetupError

    secret = None
    if options["callback_secret_file"]:
        secret = Path(options["callback_secret_file"]).read_bytes().strip()
        if len(secret) < 16:
            raise ServiceSetupError("--callback-secret-file: use a secret of 16+ bytes")
        if is_placeholder(secret):
            raise ServiceSetupError(
                f"--callback-secret-file {options['callback_secret_file']}: holds the "
                "deployment template's placeholder; put a long random secret there"
            )
    quota = options["upload_quota_gb"]
    return ServiceConfig(
        stores=options["stores"],
        heads=Path(options["heads"]),
        state=Path(options["state"]),
        source_roots=list(options["source_roots"]),
        host=options["host"],
        port=port,
        tokens=read_tokens(options["token_file"]) if options["token_file"] else [],
        workers=options["workers"],
        scheduler=options["scheduler"],
        slurm=options["slurm"],
        model=options["model"],
        device=options["device"],
        concurrent_jobs=options["concurrent_jobs"],
        part_seconds=options["part_seconds"],
        max_file_bytes=options["upload_max_file_mb"] * MiB,
        max_request_bytes=options["upload_max_request_mb"] * MiB,
        max_files=options["upload_max_files"],
        callback_secret=secret,
        callback_backoff_s=options["callback_backoff"],
        callback_allow=_listed(options["callback_allow"]),
        callback_timeout_s=options["callback_timeout"],
        allowed_hosts=_listed(options["allowed_hosts"]),
        upload_quota_bytes=int(quota * 1e9) if quota else None,
        max_archive_ratio=options["upload_max_ratio"],
        keep_days=options["keep_days"] or None,
    )


def server_for(app, config):
    """The uvicorn server of ``app`` at ``config``'s address; ``.run(sockets=[listener])``
    serves until SIGTERM or SIGINT (a graceful stop, exit 0) or, run on another thread,
    until its ``should_exit`` is set."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """SIGTERM and SIGINT are a graceful stop (the jobs' parts committed, the
            queue kept) that exits 0: uvicorn's own would raise the signal again once
            stopped."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stops = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(
        uvicorn.Config(
            app, host=config.host, port=config.port, log_level="warning", access_log=False
        )
    )


def _listed(values: tuple[str, ...]) -> list[str]:
    """A repeatable option's values, each also split at commas."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
