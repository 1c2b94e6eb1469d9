"""``emi jobs``: submit to and follow an ``emi serve`` (parse, call the client, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from service.config import DEFAULT_SERVER

server_option = click.option(
    "--server",
    envvar="EMI_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="The service's URL (also EMI_SERVER).",
)
token_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="File holding the token (else EMI_TOKEN).",
)


def _client(server: str, token_file: str | None):
    from service.client import ServiceClient, token_from

    return ServiceClient(server, token=token_from(token_file))


def _call(fn):
    """Run a client call; a refusal or an unreachable service exits 2 saying why."""
    import httpx

    from service.client import ServiceError

    try:
        return fn()
    except ServiceError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    except httpx.HTTPError as err:
        click.echo(f"Error: the service cannot be reached ({err}); is emi serve running?", err=True)
        sys.exit(2)


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group()
def jobs() -> None:
    """Jobs of an emi service: submit, list, show, wait, cancel, fetch (docs: The service)."""


@jobs.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@server_option
@token_option
def upload(paths: tuple[str, ...], server: str, token_file: str | None) -> None:
    """Upload audio files (or one zip/tar archive, or a labels CSV); prints the upload,
    whose id a job names as its source."""
    with _client(server, token_file) as client:
        _echo_json(_call(lambda: client.upload(paths)))


@jobs.command()
@click.argument("kind", type=click.Choice(["score", "extract", "train"]))
@click.option("--source", help="Folder below a source root, or an upload id (score, extract).")
@click.option("--head", "heads", multiple=True, help="Registry head name (score; repeatable).")
@click.option("--store", help="Managed store name (extract, train; score: optional).")
@click.option("--feature-set", default=None, help="extract: the feature set.")
@click.option("--layers", default=None, help="extract: last, all or 0,6,12.")
@click.option("--labels", default=None, help="train: training labels CSV (path or upload id).")
@click.option("--val-labels", default=None, help="train: validation labels CSV.")
@click.option("--name", default=None, help="train: registry name of the trained heads.")
@click.option("--preset", default=None, help="train: compact, fusion, paper or mean-linear.")
@click.option("--grid", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--epochs", type=click.IntRange(1), default=None)
@click.option("--callback-url", default=None, help="POSTed (signed) when the job ends.")
@click.option("--idempotency-key", default=None, help="Submitting twice makes one job.")
@click.option("--wait", "then_wait", is_flag=True, help="Wait for the job, with a progress bar.")
@server_option
@token_option
def submit(kind: str, then_wait: bool, server: str, token_file: str | None, **fields) -> None:
    """Submit a KIND job (score, extract or train); prints the job."""
    body = {"kind": kind}
    grid = fields.pop("grid")
    if grid:
        body["grid"] = json.loads(Path(grid).read_text())
    key = fields.pop("idempotency_key")
    heads = list(fields.pop("heads"))
    if heads:
        body["heads"] = heads
    body.update({k: v for k, v in fields.items() if v is not None})
    with _client(server, token_file) as client:
        job = _call(lambda: client.submit(body, idempotency_key=key))
        if then_wait:
            job = _wait(client, job["id"])
        _echo_json(job)
        if job["state"] in ("failed", "cancelled"):
            sys.exit(3)


@jobs.command(name="list")
@click.option("--state", default=None)
@click.option("--kind", default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@server_option
@token_option
def list_jobs(state, kind, limit, server, token_file) -> None:
    """Jobs, newest first: id, kind, state, clips done of total, created."""
    with _client(server, token_file) as client:
        page = _call(lambda: client.jobs(state=state, kind=kind, limit=limit))
    for job in page["jobs"]:
        p = job["progress"]
        done = f"{p.get('clips_done', '-')}/{p.get('clips_total', '-')}"
        click.echo(
            f"{job['id']}  {job['kind']:<7} {job['state']:<10} {done:>11}  {job['created_at']}"
        )


@jobs.command()
@click.argument("job_id")
@server_option
@token_option
def show(job_id: str, server: str, token_file: str | None) -> None:
    """One job as JSON."""
    with _client(server, token_file) as client:
        _echo_json(_call(lambda: client.job(job_id)))


def progress_words(job: dict) -> str:
    """The progress bar's words: the state, and the stage where it says more
    (``running (extracting)``; a finished job's state once: ``succeeded``)."""
    stage = job["progress"].get("stage") or ""
    return job["state"] if stage in ("", job["state"]) else f"{job['state']} ({stage})"


def _wait(client, job_id: str) -> dict:
    from tqdm import tqdm

    show = sys.stderr.isatty()
    with tqdm(total=0, unit="clip", disable=not show, desc=job_id) as bar:

        def update(job: dict) -> None:
            p = job["progress"]
            if p.get("clips_total") is not None:
                bar.total = p["clips_total"]
                bar.n = p.get("clips_done", 0)
            elif p.get("epochs") is not None:
                bar.unit, bar.total, bar.n = "epoch", p["epochs"], p.get("epoch", 0)
            bar.set_postfix_str(progress_words(job))
            bar.refresh()

        return _call(lambda: client.wait(job_id, poll_s=0.5, on_update=update))


@jobs.command()
@click.argument("job_id")
@server_option
@token_option
def wait(job_id: str, server: str, token_file: str | None) -> None:
    """Wait for a job to end (a progress bar on a terminal); prints it. Exit 3 when it
    failed or was cancelled."""
    with _client(server, token_file) as client:
        job = _wait(client, job_id)
    _echo_json(job)
    if job["state"] != "succeeded":
        sys.exit(3)


@jobs.command()
@click.argument("job_id")
@server_option
@token_option
def cancel(job_id: str, server: str, token_file: str | None) -> None:
    """Cancel a job: queued, it never starts; running, it stops after its current batch
    (what it finished stays stored; a score job keeps those clips' predictions)."""
    with _client(server, token_file) as client:
        _echo_json(_call(lambda: client.cancel(job_id)))


@jobs.command()
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the CSV there (else to stdout).",
)
@click.option("--json", "as_json", is_flag=True, help="The JSON rows instead of the CSV.")
@server_option
@token_option
def fetch(job_id, output, as_json, server, token_file) -> None:
    """A score job's predictions (the CSV of emi score)."""
    with _client(server, token_file) as client:
        if as_json:
            text = json.dumps(_call(lambda: client.predictions(job_id)), indent=2) + "\n"
        else:
            text = _call(lambda: client.predictions_csv(job_id))
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
