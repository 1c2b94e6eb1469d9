"""``emi jobs``: submit to and follow an ``emi serve`` (parse, call the client, print)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from cli.shared_options import TRAINING_HELP, standardize_option, training_option
from featurestore.errors import EXIT_CLIPS_FAILED, EXIT_USAGE
from service.config import DEFAULT_SERVER, is_url

server_option = click.option(
    "--server",
    envvar="EMI_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="The service's URL (also EMI_SERVER).",
)
# Exit statuses of the commands that wait for a job (documented on the service's page),
# beside featurestore.errors' EXIT_USAGE (a refusal, an unreachable service) and
# EXIT_CLIPS_FAILED (the job succeeded, but some clips failed).
EXIT_JOB_FAILED = 4  # the job failed: the reason is printed
EXIT_JOB_CANCELLED = 5

token_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="File holding the token (else EMI_TOKEN).",
)


def _client(server: str, token_file: str | None):
    from service.client import ServiceClient, token_from

    return ServiceClient(server, token=token_from(token_file))


def _call(fn, server: str):
    """Run a client call; a refusal or an unreachable service exits 2 saying why (the
    service named by its URL)."""
    import httpx

    from service.client import ServiceError

    try:
        return fn()
    except ServiceError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except httpx.HTTPError as err:
        click.echo(
            f"Error: the service at {server} cannot be reached ({err}); is emi serve running "
            "there? (--server or EMI_SERVER names another)",
            err=True,
        )
        sys.exit(EXIT_USAGE)


def _exit_for(job: dict) -> None:
    """Exit with the job's status (:data:`EXIT_JOB_FAILED`, ...), saying why a job did
    not succeed; return where it succeeded with every clip."""
    if job["state"] == "failed":
        error = job.get("error") or {}
        reason = error.get("detail") or error.get("error") or "no reason was recorded"
        click.echo(f"Error: job {job['id']} failed: {reason}", err=True)
        sys.exit(EXIT_JOB_FAILED)
    if job["state"] == "cancelled":
        click.echo(f"job {job['id']} was cancelled", err=True)
        sys.exit(EXIT_JOB_CANCELLED)
    if job.get("failures_count"):
        click.echo(
            f"job {job['id']}: {job['failures_count']} clips failed (each with its reason: "
            f"GET /v1/jobs/{job['id']}/failures)",
            err=True,
        )
        sys.exit(EXIT_CLIPS_FAILED)


def _absolute(value: str | None) -> str | None:
    """A local path given relative to here, made absolute (the service does not know
    this folder); an upload id or a URL as given."""
    from service.sources import UPLOAD_ID

    if value is None or UPLOAD_ID.match(value) or is_url(value):
        return value
    return os.path.abspath(value)


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
        _echo_json(_call(lambda: client.upload(paths), server))


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
@click.option(
    "--grid",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="train: a grid file (as emi train --grid's).",
)
@click.option("--layer", default=None, help="train: a stored layer number, last or weighted.")
@click.option("--features", default=None, help="train: the store's feature set(s) (a or a,b).")
@training_option("epochs", help="train:", unset=True)
@training_option("batch_size", help="train:", unset=True)
@training_option("lr", help="train: the learning rate.", unset=True)
@training_option("weight_decay", help="train:", unset=True)
@training_option("warmup_epochs", help="train:", unset=True)
@training_option("clip_value", help=f"train: {TRAINING_HELP['clip_value']}", unset=True)
@training_option("patience", help=f"train: {TRAINING_HELP['patience']}", unset=True)
@standardize_option(prefix="train: ")
@training_option("seed", help="train:", unset=True)
@training_option("max_seconds", help=f"train: {TRAINING_HELP['max_seconds']}", unset=True)
@click.option("--callback-url", default=None, help="POSTed (signed) when the job ends.")
@click.option("--idempotency-key", default=None, help="Submitting twice makes one job.")
@click.option("--wait", "then_wait", is_flag=True, help="Wait for the job, with a progress bar.")
@server_option
@token_option
def submit(kind: str, then_wait: bool, server: str, token_file: str | None, **fields) -> None:
    """Submit a KIND job (score, extract or train); prints the job. A --source, --labels
    or --val-labels path relative to here is sent as an absolute path. With --wait, the
    exit status is the job's (see emi jobs wait); without, 0 unless the job has already
    ended otherwise (an earlier submission's, through --idempotency-key)."""
    body = {"kind": kind}
    grid = fields.pop("grid")
    if grid:
        body["grid"] = json.loads(Path(grid).read_text())
    key = fields.pop("idempotency_key")
    heads = list(fields.pop("heads"))
    if heads:
        body["heads"] = heads
    for name in ("source", "labels", "val_labels"):
        fields[name] = _absolute(fields[name])
    body.update({k: v for k, v in fields.items() if v is not None})
    with _client(server, token_file) as client:
        job = _call(lambda: client.submit(body, idempotency_key=key), server)
        if then_wait:
            job = _wait(client, job["id"], server)
    _echo_json(job)
    _exit_for(job)


@jobs.command(name="list")
@click.option("--state", default=None)
@click.option("--kind", default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@server_option
@token_option
def list_jobs(state, kind, limit, server, token_file) -> None:
    """Jobs, newest first: id, kind, state, clips done of total, created."""
    with _client(server, token_file) as client:
        page = _call(lambda: client.jobs(state=state, kind=kind, limit=limit), server)
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
        _echo_json(_call(lambda: client.job(job_id), server))


def progress_words(job: dict) -> str:
    """The progress bar's words: the state, and the stage where it says more
    (``running (extracting)``; a finished job's state once: ``succeeded``)."""
    stage = job["progress"].get("stage") or ""
    return job["state"] if stage in ("", job["state"]) else f"{job['state']} ({stage})"


def _wait(client, job_id: str, server: str) -> dict:
    """Poll the job to its end: a progress bar on a terminal, else a progress line on
    stderr when the state or stage changes and at most every 10 s while clips advance."""
    from tqdm import tqdm

    show = sys.stderr.isatty()
    said = {"words": None, "at": 0.0}
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
            if not show:
                _progress_line(job, said)

        return _call(lambda: client.wait(job_id, poll_s=0.5, on_update=update), server)


def _progress_line(job: dict, said: dict) -> None:
    """One plain progress line (for logs and pipes), when there is news to say."""
    words, p = progress_words(job), job["progress"]
    if p.get("clips_total") is not None:
        counted = f"{p.get('clips_done', 0)} of {p['clips_total']} clips"
    elif p.get("epochs") is not None:
        counted = f"epoch {p.get('epoch', 0)} of {p['epochs']}"
    else:
        counted = ""
    now = time.monotonic()
    if words == said["words"] and (now - said["at"] < 10 or counted == said.get("counted")):
        return
    said.update(words=words, at=now, counted=counted)
    click.echo(f"{job['id']}: {words}{'; ' + counted if counted else ''}", err=True)


@jobs.command()
@click.argument("job_id")
@server_option
@token_option
def wait(job_id: str, server: str, token_file: str | None) -> None:
    """Wait for a job to end (a progress bar on a terminal, progress lines otherwise);
    prints it. Exit 0 when it succeeded, 3 when it succeeded but some clips failed, 4
    when it failed (the reason is printed), 5 when it was cancelled; 2 when the service
    refused or cannot be reached."""
    with _client(server, token_file) as client:
        job = _wait(client, job_id, server)
    _echo_json(job)
    _exit_for(job)


@jobs.command()
@click.argument("job_id")
@server_option
@token_option
def cancel(job_id: str, server: str, token_file: str | None) -> None:
    """Cancel a job: queued, it never starts; running, it stops after its current batch
    (what it finished stays stored; a score job keeps those clips' predictions)."""
    with _client(server, token_file) as client:
        _echo_json(_call(lambda: client.cancel(job_id), server))


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
            text = json.dumps(_call(lambda: client.predictions(job_id), server), indent=2) + "\n"
        else:
            text = _call(lambda: client.predictions_csv(job_id), server)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
