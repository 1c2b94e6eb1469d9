"""The OpenAPI document is a product: a client generated from a running service's
``/openapi.json`` by a tool no one here wrote (openapi-python-client) uploads, submits,
polls, downloads and reads an error without a hand edit; schemathesis, bounded, finds no
failing check; the API's pages are served from the package, with no outside request."""

from __future__ import annotations

import datetime
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from manifests.synthetic import write_corpus
from tests.conftest import run_cli
from tests.served import Hosted

TOKEN = "a-long-random-token-for-clients-0123"


@pytest.fixture(scope="module")
def documented(tmp_path_factory, tiny_backbone):
    """A service with a token, a corpus below its root and one ridge head."""
    folder = tmp_path_factory.mktemp("openapi")
    root = folder / "root"
    splits = write_corpus(root / "corpus", clips=10, seed=31, min_seconds=1.0, max_seconds=2.0)
    audio = root / "corpus" / "audio"
    seed = folder / "stores" / "seed.zarr"
    run_cli("extract", audio, seed, "--model", tiny_backbone, "--quiet")
    tokens = folder / "tokens"
    tokens.write_text(TOKEN + "\n")
    served = Hosted(folder, [root], "--model", tiny_backbone, "--token-file", tokens, token=TOKEN)
    run_cli("train", seed, "--labels", splits["train"], "--val-labels", splits["valid"],
            "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet")  # fmt: skip
    with served:
        served.start()
        yield {"served": served, "audio": audio, "folder": folder}
        assert served.stop() == 0, served.text()
    assert "Traceback" not in served.text(), served.text()


def _generate(url: str, into: Path) -> Path:
    """openapi-python-client's package for the document at ``url`` (no hand edits)."""
    document = into / "openapi.json"
    document.write_bytes(httpx.get(f"{url}/openapi.json").content)  # needs no token
    bin_dir = str(Path(sys.executable).parent)  # its ruff hooks
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    made = subprocess.run(
        [os.path.join(bin_dir, "openapi-python-client"), "generate", "--path", str(document),
         "--meta", "none", "--output-path", str(into / "emi_client")],
        capture_output=True, text=True, env=env, cwd=into, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Warning" not in made.stdout + made.stderr, made.stdout + made.stderr
    return into


@pytest.mark.slow
def test_a_generated_client_uploads_submits_polls_downloads_and_reads_errors(
    documented, tmp_path, monkeypatch
):
    served = documented["served"]
    monkeypatch.syspath_prepend(str(_generate(served.url, tmp_path)))
    for loaded in [m for m in sys.modules if m == "emi_client" or m.startswith("emi_client.")]:
        del sys.modules[loaded]
    client_module = importlib.import_module("emi_client")
    from emi_client.api.jobs import get_job, list_jobs, predictions_csv, submit_job
    from emi_client.api.uploads import upload_files
    from emi_client.models import (
        ClipProgress,
        ErrorBody,
        JobState,
        ScoreJob,
        ScoreJobRequest,
        ScoreResult,
        UploadFilesUploadFiles,
        UploadView,
    )
    from emi_client.types import File

    client = client_module.AuthenticatedClient(base_url=served.url, token=TOKEN)
    wavs = sorted(documented["audio"].glob("*.wav"))[:3]
    handles = [open(w, "rb") for w in wavs]  # noqa: SIM115 (closed below)
    try:
        files = [
            File(payload=h, file_name=w.name, mime_type="audio/wav")
            for h, w in zip(handles, wavs, strict=True)
        ]
        upload = upload_files.sync(client=client, body=UploadFilesUploadFiles(files=files))
    finally:
        for handle in handles:
            handle.close()
    assert isinstance(upload, UploadView) and upload.files == 3
    assert isinstance(upload.created_at, datetime.datetime) and upload.created_at.tzinfo
    job = submit_job.sync(client=client, body=ScoreJobRequest(kind="score", source=upload.id,
                                                               heads=["ml"]))  # fmt: skip
    assert isinstance(job, ScoreJob), job
    deadline = time.monotonic() + 120
    while job.state.value not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        job = get_job.sync(job.id, client=client)
    assert job.state == JobState.SUCCEEDED and job.failures_count == 0
    # typed all through: the progress, the result and the times are the kind's models
    assert isinstance(job.progress, ClipProgress) and job.progress.clips_done == 3
    assert isinstance(job.result, ScoreResult) and job.result.predicted == 3
    assert job.finished_at >= job.started_at >= job.created_at
    csv_text = predictions_csv.sync(job.id, client=client)
    assert csv_text == served.client().predictions_csv(job.id)
    assert csv_text.splitlines()[0].startswith("clip_id,")
    listed = list_jobs.sync(client=client, state=JobState.SUCCEEDED)
    assert job.id in [j.id for j in listed.jobs]
    # an error, read as the service's model
    missing = get_job.sync("job-none", client=client)
    assert isinstance(missing, ErrorBody) and missing.error == "not found"
    refused = submit_job.sync(client=client, body=ScoreJobRequest(kind="score", source="/etc",
                                                                   heads=["ml"]))  # fmt: skip
    assert isinstance(refused, ErrorBody) and "source roots" in refused.detail
    anonymous = client_module.Client(base_url=served.url)
    unauthorized = get_job.sync_detailed(job.id, client=anonymous)
    assert unauthorized.status_code == 401 and isinstance(unauthorized.parsed, ErrorBody)


def test_the_api_pages_work_offline_and_behind_a_token(documented):
    url = documented["served"].url
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200
    assert "http://" not in page.text.replace(url, "") and "https://" not in page.text
    assets = [a for a in page.text.split('"') if a.startswith("/docs-assets/")]
    assert assets and all(httpx.get(url + a).status_code == 200 for a in assets)
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
    assert "HTTPValidationError" not in str(document)
    csv = document["paths"]["/v1/jobs/{job_id}/predictions.csv"]["get"]["responses"]
    assert list(csv["200"]["content"]) == ["text/csv"]
    assert list(csv["404"]["content"]) == ["application/json"]
    wrong = httpx.put(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"


@pytest.mark.slow
def test_schemathesis_finds_no_failing_check(documented):
    """Every operation, bounded (a few examples each), with the token; the checks that
    hold for this API: no 5xx, answers match their schemas and status codes, content
    types as declared."""
    served = documented["served"]
    command = [
        os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run",
        f"{served.url}/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance",
        "--max-examples", "6", "--phases", "examples,coverage,fuzzing",
        "--exclude-method", "DELETE", "--request-timeout", "20", "--suppress-health-check", "all",
        "--seed", "7", "--no-color",
    ]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]
    import re

    counts = re.search(r"(\d+) generated, (\d+) passed", ran.stdout)
    assert counts and int(counts[1]) == int(counts[2]) >= 100, ran.stdout[-3000:]
    assert "Tested: 19" in ran.stdout  # every operation but the two DELETEs
    assert "Traceback" not in served.text()
