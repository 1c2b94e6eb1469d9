"""``emi serve`` over HTTP: a real server (uvicorn, a subprocess on a loopback port)
running real jobs on a random tiny backbone."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import shutil
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from featurestore.store import FeatureStore
from manifests.synthetic import write_corpus
from service.client import ServiceError
from tests.conftest import run_cli
from tests.served import Hosted, Served

SECRET = b"callback-secret-for-tests-0123456789"


def _corpus(folder: Path, clips: int, seed: int, max_seconds: float = 2.0) -> dict:
    return write_corpus(folder, clips=clips, seed=seed, min_seconds=1.0, max_seconds=max_seconds)


def _wait(client, job_id: str, timeout_s: float = 180.0) -> dict:
    return client.wait(job_id, poll_s=0.1, timeout_s=timeout_s)


def _score_cli(audio: Path, heads: list[Path], out: Path, cache: Path) -> str:
    """``emi score`` as a user runs it, with its own cache (``EMI_CACHE``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMI_CACHE", str(cache))
        run_cli("score", audio, "-o", out, "--quiet", *[a for h in heads for a in ("--head", h)])
    return out.read_bytes().decode()  # as written (the csv module's \r\n line ends)


def _same_predictions(got_csv: str, want_csv: str) -> None:
    """The same CSV: header, clip ids and line ends exactly; values to 2e-5 (a head's
    float32 sums over frames may differ in the 6th decimal between two processes)."""
    got, want = (list(csv.reader(io.StringIO(t))) for t in (got_csv, want_csv))
    assert got_csv.count("\r\n") == want_csv.count("\r\n")
    assert [r[0] for r in got] == [r[0] for r in want] and got[0] == want[0]
    values = np.array([[float(v) for v in r[1:]] for r in got[1:]])
    assert np.allclose(values, [[float(v) for v in r[1:]] for r in want[1:]], atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_backbone):
    """A source root with a labelled corpus, a registry with one ridge head, and a
    running service (callbacks signed; small upload limits)."""
    folder = tmp_path_factory.mktemp("service")
    root = folder / "root"
    splits = _corpus(root / "corpus", clips=24, seed=3)
    audio = root / "corpus" / "audio"
    run_cli("extract", audio, folder / "seed.zarr", "--model", tiny_backbone, "--quiet")
    served = Hosted(
        folder, [root],
        "--model", tiny_backbone, "--jobs", "2",
        "--callback-secret-file", _secret_file(folder), "--callback-backoff", "0.2",
        "--callback-allow", "127.0.0.1", "--callback-timeout", "2",
        "--upload-max-files", "8", "--upload-max-file-mb", "1",
    )  # fmt: skip
    run_cli(
        "train", folder / "seed.zarr", "--labels", splits["train"], "--val-labels",
        splits["valid"], "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet",
    )  # fmt: skip
    with served:
        served.start()
        yield {"served": served, "root": root, "audio": audio, "folder": folder, **splits}
        assert served.stop() == 0, served.text()
    assert "Traceback" not in served.text(), served.text()


def _secret_file(folder: Path) -> Path:
    path = folder / "callback.secret"
    path.write_bytes(SECRET)
    return path


@pytest.mark.slow
def test_a_score_job_predicts_what_emi_score_does(lab, tmp_path):
    client = lab["served"].client()
    job = client.submit({"kind": "score", "source": str(lab["audio"]), "heads": ["ml"]})
    assert job["state"] in ("queued", "running") and job["kind"] == "score"
    done = _wait(client, job["id"])
    assert done["state"] == "succeeded", done
    progress = done["progress"]
    assert progress["clips_total"] == progress["clips_done"] == 24
    assert progress["clips_failed"] == 0 and done["failures_count"] == 0
    expected = _score_cli(
        lab["audio"],
        [lab["served"].heads / "ml"],
        tmp_path / "cli.csv",
        tmp_path / "c",
    )
    _same_predictions(client.predictions_csv(job["id"]), expected)
    rows = client.predictions(job["id"])["predictions"]
    cli_rows = list(csv.DictReader(io.StringIO(expected)))
    assert [r["clip_id"] for r in rows] == [r["clip_id"] for r in cli_rows]
    assert abs(rows[3]["Joy"] - float(cli_rows[3]["Joy"])) < 2e-5
    [store] = [s for s in client.stores() if s["kind"] == "score"]
    assert store["clips"] == 24 and store["feature_sets"][0]["fingerprint"]
    [head] = client.heads()
    assert head["name"] == "ml" and head["preset"] == "mean-linear"
    assert head["features"][0]["fingerprint"] == store["feature_sets"][0]["fingerprint"]
    metrics = httpx.get(f"{lab['served'].url}/metrics").text
    assert 'emi_jobs{kind="score",state="succeeded"}' in metrics
    assert "emi_job_duration_seconds_bucket" in metrics and "emi_queue_length" in metrics

    # the same audio in another job, from another folder: nothing computed again
    again = lab["root"] / "again"
    shutil.copytree(lab["audio"], again)
    second = _wait(
        client, client.submit({"kind": "score", "source": str(again), "heads": ["ml"]})["id"]
    )
    assert second["result"]["extracted"] == 0 and second["result"]["reused"] == 24
    _same_predictions(client.predictions_csv(second["id"]), expected)


@pytest.mark.slow
def test_extract_and_train_jobs_put_a_head_in_the_registry_that_scores(lab):
    client = lab["served"].client()
    extract = client.submit(
        {"kind": "extract", "source": str(lab["audio"]), "store": "lab", "layers": "all"}
    )
    done = _wait(client, extract["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["extracted"] == 24
    stored = FeatureStore.open(str(lab["served"].stores / "lab.zarr"))
    assert len(stored) == 24 and len(stored.layers) > 1
    body = {
        "kind": "train", "store": "lab", "labels": str(lab["train"]),
        "val_labels": str(lab["valid"]), "name": "trained", "preset": "compact", "epochs": 2,
    }  # fmt: skip
    trained = _wait(client, client.submit(body)["id"])
    assert trained["state"] == "succeeded", trained
    assert trained["progress"]["epochs_done"] == 2
    assert trained["progress"]["best_val_pearson"] == trained["result"]["best"]["val_pearson_mean"]
    listed = {h["name"]: h for h in client.heads()}
    assert listed["trained"]["preset"] == "compact" and listed["trained"]["best_epoch"] in (1, 2)
    # a name in use is refused before work
    with pytest.raises(ServiceError) as taken:
        client.submit(body)
    assert taken.value.status == 409
    score = _wait(
        client,
        client.submit({"kind": "score", "source": str(lab["audio"]), "heads": ["trained"],
                       "store": "lab"})["id"],
    )  # fmt: skip
    assert score["state"] == "succeeded" and score["result"]["extracted"] == 0
    assert len(client.predictions(score["id"])["predictions"]) == 24
    # a grid: one head per entry, registry names GRID/HEAD
    grid = {"defaults": {"epochs": 1}, "heads": [{"name": "ridge", "preset": "mean-linear"}],
            "grid": {"seed": [1, 2]}}  # fmt: skip
    swept = _wait(client, client.submit({**body, "name": "sweep", "grid": grid, "preset": None,
                                         "epochs": None})["id"])  # fmt: skip
    assert swept["state"] == "succeeded", swept
    names = {h["name"] for h in client.heads()}
    assert set(swept["result"]["heads"]) <= names and len(swept["result"]["heads"]) == 3
    assert all(n.startswith("sweep/") for n in swept["result"]["heads"])


def test_idempotency_key_gives_one_job_and_refuses_another_body(lab):
    client = lab["served"].client()
    body = {"kind": "score", "source": str(lab["audio"]), "heads": ["ml"]}
    earlier = client.submit(body)  # the list has two pages of one, whatever ran before
    first = client.submit(body, idempotency_key="key-1")
    again = client.submit(body, idempotency_key="key-1")
    assert again["id"] == first["id"]
    with pytest.raises(ServiceError) as other:
        client.submit({**body, "heads": ["ml", "ml"]}, idempotency_key="key-1")
    assert other.value.status == 409 and "Idempotency-Key" in str(other.value)
    ids = [j["id"] for j in client.jobs(limit=500)["jobs"]]
    assert ids.count(first["id"]) == 1 and ids[:2] == [first["id"], earlier["id"]]
    _wait(client, first["id"])
    # pages, newest first
    one = client.jobs(limit=1)
    two = client.jobs(limit=1, before=one["next"])
    assert [one["jobs"][0]["id"], two["jobs"][0]["id"]] == ids[:2]
    assert client.jobs(kind="train", limit=500)["jobs"] == [
        j for j in client.jobs(limit=500)["jobs"] if j["kind"] == "train"
    ]
    # delete: the job and its results go, the store's features stay
    [store] = [s for s in client.stores() if s["kind"] == "score"]
    client.delete(first["id"])
    for gone in (lambda: client.job(first["id"]), lambda: client.predictions_csv(first["id"])):
        with pytest.raises(ServiceError) as missing:
            gone()
        assert missing.value.status == 404
    assert not (lab["served"].state / "results" / first["id"]).exists()
    assert [s for s in client.stores() if s["kind"] == "score"] == [store]


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    got: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_callback_is_signed_and_retried_after_a_500(lab):
    _Receiver.answers, _Receiver.got = [500], []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        client = lab["served"].client()
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = client.submit({"kind": "score", "source": str(lab["audio"]), "heads": ["ml"],
                             "callback_url": url})  # fmt: skip
        _wait(client, job["id"])
        deadline = time.monotonic() + 30
        while len(_Receiver.got) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.shutdown()
    assert len(_Receiver.got) == 2  # the 500, then the retry
    for headers, body in _Receiver.got:
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Emi-Signature"], expected)
        sent = json.loads(body)
        assert sent["id"] == job["id"] and sent["state"] == "succeeded"
        assert sent["counts"]["clips_total"] == 24
    deadline = time.monotonic() + 10
    while client.job(job["id"])["callback"]["status"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.job(job["id"])["callback"]["attempts"] == 2


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as t:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            t.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_uploads_of_files_and_archives_score_and_hostile_archives_are_refused(lab, tmp_path):
    client = lab["served"].client()
    wavs = sorted(lab["audio"].glob("*.wav"))[:3]
    upload = client.upload(wavs)
    assert upload["files"] == 3 and upload["id"].startswith("upload-")
    job = _wait(
        client, client.submit({"kind": "score", "source": upload["id"], "heads": ["ml"]})["id"]
    )
    assert job["state"] == "succeeded" and job["result"]["predicted"] == 3
    archive = _zip(tmp_path / "clips.zip", {f"inner/{w.name}": w.read_bytes() for w in wavs})
    packed = client.upload([archive])
    assert packed["files"] == 3
    scored = _wait(
        client, client.submit({"kind": "score", "source": packed["id"], "heads": ["ml"]})["id"]
    )
    assert [r["clip_id"] for r in client.predictions(scored["id"])["predictions"]] == [
        f"inner/{w.stem}" for w in wavs
    ]
    wav = wavs[0].read_bytes()
    link = tarfile.TarInfo("inner/evil.wav")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hostile = {
        "climbs out": _zip(tmp_path / "up.zip", {"../escaped.wav": wav}),
        "absolute": _tar(tmp_path / "abs.tar", [tarfile.TarInfo("/tmp/abs-escaped.wav")],
                         {"/tmp/abs-escaped.wav": wav}),
        "link": _tar(tmp_path / "link.tar", [link], {}),
        "too many": _zip(tmp_path / "many.zip", {f"c{i}.wav": wav for i in range(9)}),
        "too large": _zip(tmp_path / "big.zip", {"big.wav": b"\0" * (2 * 2**20)}),
        "too many folders": _tar(tmp_path / "dirs.tar", [_folder(f"d{i}") for i in range(50)]
                                 + [tarfile.TarInfo("a.wav")], {"a.wav": wav}),
    }  # fmt: skip
    uploads = lab["served"].state / "uploads"
    before = sorted(p.name for p in uploads.iterdir())
    for what, path in hostile.items():
        with pytest.raises(ServiceError) as refused:
            client.upload([path])
        expected = 413 if what.startswith("too") else 400
        assert refused.value.status == expected, (what, refused.value)
        if what.startswith("too many"):
            assert "--upload-max-files" in str(refused.value)
        if what == "too large":
            assert "--upload-max-file-mb" in str(refused.value)
    assert sorted(p.name for p in uploads.iterdir()) == before  # nothing left behind
    assert not (uploads / "escaped.wav").exists() and not Path("/tmp/abs-escaped.wav").exists()
    assert not list(lab["served"].state.rglob("escaped.wav"))
    # a single file over the limit, streamed: refused as it arrives
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ServiceError) as over:
        client.upload([big])
    assert over.value.status == 413 and "--upload-max-file-mb" in str(over.value)


def test_sources_outside_the_roots_are_refused_before_any_work(lab, tmp_path):
    client = lab["served"].client()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(sorted(lab["audio"].glob("*.wav"))[0], outside / "secret.wav")
    (lab["root"] / "link-out").symlink_to(outside, target_is_directory=True)
    mixed = lab["root"] / "mixed"
    mixed.mkdir()
    shutil.copy(sorted(lab["audio"].glob("*.wav"))[1], mixed / "fine.wav")
    (mixed / "secret.wav").symlink_to(outside / "secret.wav")
    (mixed / "broken.wav").write_bytes(b"RIFF\x00\x01WAVEnot audio at all")
    before = len(client.jobs(limit=500)["jobs"])
    for source in (
        str(lab["root"] / ".." / "outside"),
        str(lab["root"] / "link-out"),
        str(outside),
        "/etc",
    ):
        with pytest.raises(ServiceError) as refused:
            client.submit({"kind": "score", "source": source, "heads": ["ml"]})
        assert refused.value.status == 403, source
        assert str(lab["root"]) in str(refused.value)  # names the allowed roots
    assert len(client.jobs(limit=500)["jobs"]) == before  # no job made
    # the folder listing shows the roots and what is below them, nothing else
    url = lab["served"].url
    roots = httpx.get(f"{url}/v1/sources").json()
    assert [f["path"] for f in roots["folders"]] == [str(lab["root"].resolve())]
    inside = httpx.get(f"{url}/v1/sources", params={"path": str(lab["root"])}).json()
    names = [f["name"] for f in inside["folders"]]
    assert "corpus" in names and "link-out" not in names  # a link pointing out: not listed
    for path in (str(outside), str(lab["root"] / "link-out"), str(lab["root"] / "..")):
        answer = httpx.get(f"{url}/v1/sources", params={"path": path})
        assert answer.status_code == 403, path
    # a link inside a root pointing out is never read: a failed clip saying so
    job = _wait(
        client, client.submit({"kind": "score", "source": str(mixed), "heads": ["ml"]})["id"]
    )
    assert job["state"] == "succeeded"
    assert job["failures_count"] == 2
    listed = {f["clip_id"]: f for f in client.failures(job["id"], page_size=1)}
    reasons = {clip: f["reason"] for clip, f in listed.items()}
    assert listed["broken"]["path"] == str((mixed / "broken.wav").resolve())
    assert sorted(reasons) == ["broken", "secret"] and job["progress"]["clips_failed"] == 2
    assert "outside the service's source roots" in reasons["secret"]
    assert "unreadable as audio (Format not recognised" in reasons["broken"]
    predictions = client.predictions(job["id"])
    assert [r["clip_id"] for r in predictions["predictions"]] == ["fine"]


@pytest.mark.slow
def test_bad_requests_get_json_errors_without_a_traceback(lab):
    url = lab["served"].url
    body = {"kind": "score", "source": str(lab["audio"]), "heads": ["ml"]}
    as_json = {"content-type": "application/json"}
    cases = [
        ("POST", "/v1/jobs", {"content": b"{not json", "headers": as_json}, 422),
        ("POST", "/v1/jobs", {"json": {"kind": "score", "source": 3, "heads": "ml"}}, 422),
        ("POST", "/v1/jobs", {"json": {"kind": "dance"}}, 422),
        ("POST", "/v1/jobs", {"json": {**body, "extra": 1}}, 422),
        ("POST", "/v1/jobs", {"json": {**body, "heads": ["nope"]}}, 404),
        ("POST", "/v1/jobs", {"content": b"[" + b"1," * 600_000 + b"1]", "headers": as_json}, 413),
        ("POST", "/v1/jobs", {"json": {**body, "callback_url": "http://[::1"}}, 400),
        ("POST", "/v1/jobs", {"content": (b"[1," * 100 for _ in range(4_000)),
                              "headers": as_json}, 413),  # chunked: no Content-Length
        ("GET", "/v1/jobs?before=99999999999999999999999", {}, 400),
        ("GET", "/v1/jobs/job-missing", {}, 404),
        ("GET", "/v1/jobs?state=dancing", {}, 422),
        ("GET", "/v1/nothing-here", {}, 404),
        ("DELETE", "/v1/uploads/upload-0000", {}, 404),
        ("DELETE", "/v1/uploads/..%2F..%2Fresults", {}, 404),
        ("GET", "/v1/jobs/..%2F..%2Fjobs.sqlite/predictions.csv", {}, 404),
        ("DELETE", "/v1/jobs/..%2Fresults", {}, 404),
    ]  # fmt: skip
    for method, path, kwargs, status in cases:
        answer = httpx.request(method, url + path, timeout=30, **kwargs)
        assert answer.status_code == status, (path, answer.text)
        body = answer.json()
        assert set(body) == {"error", "detail"} and body["detail"], body
        assert "Traceback" not in answer.text
    assert "Traceback" not in lab["served"].text()


def test_two_jobs_over_overlapping_folders_extract_each_clip_once(lab, tmp_path):
    client = lab["served"].client()
    fresh = _corpus(lab["root"] / "fresh", clips=10, seed=11)
    del fresh
    audio = lab["root"] / "fresh" / "audio"
    wavs = sorted(audio.glob("*.wav"))
    left, right = lab["root"] / "left", lab["root"] / "right"
    for folder, picked in ((left, wavs[:7]), (right, wavs[3:])):
        folder.mkdir()
        for wav in picked:
            shutil.copy(wav, folder / wav.name)
    jobs = [
        client.submit({"kind": "score", "source": str(f), "heads": ["ml"]}) for f in (left, right)
    ]
    done = [_wait(client, j["id"]) for j in jobs]
    assert all(d["state"] == "succeeded" for d in done), done
    assert sum(d["result"]["extracted"] for d in done) == 10  # each clip once
    assert sum(d["result"]["reused"] for d in done) == 4
    assert [d["result"]["predicted"] for d in done] == [7, 7]


def test_emi_jobs_commands_submit_wait_list_show_fetch(lab, tmp_path, monkeypatch):
    url = lab["served"].url
    monkeypatch.chdir(lab["audio"].parent)  # a --source relative to here is sent absolute
    shown = run_cli("jobs", "submit", "score", "--source", lab["audio"].name, "--head", "ml",
                    "--wait", "--server", url)  # fmt: skip
    job = json.loads(shown.stdout)
    assert job["state"] == "succeeded" and job["request"]["source"] == str(lab["audio"])
    # not a terminal: plain progress lines, the last one the job's end
    assert shown.stderr.splitlines()[-1] == f"{job['id']}: succeeded; 24 of 24 clips"
    listed = run_cli("jobs", "list", "--server", url, "--kind", "score").output
    assert job["id"] in listed
    assert json.loads(run_cli("jobs", "show", job["id"], "--server", url).output)["id"] == job["id"]
    run_cli("jobs", "fetch", job["id"], "-o", tmp_path / "p.csv", "--server", url)
    fetched = (tmp_path / "p.csv").read_bytes().decode()
    assert fetched == lab["served"].client().predictions_csv(job["id"])
    refused = run_cli("jobs", "show", "job-none", "--server", url, expect=2)
    assert "404" in refused.output and "not found" in refused.output
    away = run_cli("jobs", "list", "--server", "http://127.0.0.1:9", expect=2)
    assert "the service at http://127.0.0.1:9 cannot be reached" in away.stderr
    # a failed job: its reason, and the failed job's exit status (not 3, "some clips failed")
    labels = lab["root"] / "labels-of-no-stored-clip.csv"
    labels.write_text("Filename,Joy\nnot-a-clip,0.5\n")
    store = next(s["name"] for s in lab["served"].client().stores() if s["kind"] == "score")
    failed = run_cli("jobs", "submit", "train", "--store", store, "--name", "x", "--labels",
                     labels, "--val-labels", labels, "--wait", "--server", url,
                     expect=4)  # fmt: skip
    ended = json.loads(failed.stdout)
    assert ended["state"] == "failed"
    assert f"job {ended['id']} failed: {ended['error']['detail']}" in failed.stderr
    # the training options emi train takes, through the job's request into the head
    shutil.copytree(lab["folder"] / "seed.zarr", lab["served"].stores / "seeded.zarr")
    tuned = run_cli("jobs", "submit", "train", "--store", "seeded", "--name", "tuned",
                    "--labels", lab["train"], "--val-labels", lab["valid"], "--preset", "compact",
                    "--epochs", "4", "--patience", "1", "--lr", "0.02", "--batch-size", "8",
                    "--no-standardize", "--max-seconds", "1.5", "--wait",
                    "--server", url)  # fmt: skip
    assert json.loads(tuned.stdout)["state"] == "succeeded"
    training = json.loads((lab["served"].heads / "tuned" / "config.json").read_text())["training"]
    assert (training["patience"], training["lr"], training["batch_size"]) == (1, 0.02, 8)
    assert training["standardize"] is False and training["max_frames"] == 75
    with pytest.raises(ServiceError) as wrong:  # the rule of emi train --lr, written once
        lab["served"].client().submit({"kind": "train", "store": "seeded", "name": "bad",
                                       "labels": str(lab["train"]),
                                       "val_labels": str(lab["valid"]), "lr": 0})  # fmt: skip
    assert wrong.value.status == 400 and "lr: 0" in str(wrong.value)


@pytest.fixture
def stopped_at_teardown():
    """Registers servers to kill when the test ends, however it ends."""
    made: list[Served] = []

    def register(served: Served) -> Served:
        made.append(served)
        return served

    yield register
    for served in made:
        served.__exit__(None, None, None)


@pytest.mark.slow
def test_a_killed_service_resumes_its_job_and_keeps_what_was_committed(
    tmp_path, tiny_backbone, stopped_at_teardown, monkeypatch
):
    root = tmp_path / "root"
    _corpus(root / "corpus", clips=20, seed=5, max_seconds=2.0)
    audio = root / "corpus" / "audio"
    heads = tmp_path / "heads"
    made = tmp_path / "made"
    run_cli("extract", audio, made / "f.zarr", "--model", tiny_backbone, "--quiet")
    run_cli("train", made / "f.zarr", "--labels", root / "corpus" / "train_split.csv",
            "--val-labels", root / "corpus" / "valid_split.csv", "--out", heads / "ml",
            "--preset", "mean-linear", "--quiet")  # fmt: skip
    served = stopped_at_teardown(Served(tmp_path, [root], "--part-seconds", "1", "--jobs", "1"))
    served.start()
    client = served.client()
    job = client.submit({"kind": "score", "source": str(audio), "heads": ["ml"]})
    deadline = time.monotonic() + 120
    while True:
        progress = client.job(job["id"])["progress"]
        if progress.get("clips_done", 0) >= 5:
            break
        assert time.monotonic() < deadline, served.text()
        time.sleep(0.02)
    served.kill()
    [location] = [p for p in served.stores.iterdir() if p.name.startswith("score-")]
    before = FeatureStore.open(str(location))
    committed = set(before.clip_ids)
    parts = set(before.complete_parts)
    assert 0 < len(committed) < 20, "the kill came before the first or after the last part"

    # emi jobs wait keeps asking while the service is down, and sees the job resume
    waited: dict = {}
    waiter = threading.Thread(
        target=lambda: waited.update(client.wait(job["id"], poll_s=0.2, timeout_s=180))
    )
    waiter.start()
    time.sleep(1.0)  # the waiter meets a refused connection first
    served.process = None
    served.start()
    done = _wait(client, job["id"])
    waiter.join(60)
    assert waited.get("state") == "succeeded", waited
    assert done["state"] == "succeeded" and done["runs"] == 2, done
    assert done["result"]["reused"] >= len(committed)
    assert done["result"]["extracted"] + done["result"]["reused"] == 20
    after = FeatureStore.open(str(location))
    assert parts <= set(after.complete_parts)  # the parts of before the kill, kept
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "c"))  # an uninterrupted emi score
    run_cli("score", audio, "--head", heads / "ml", "-o", tmp_path / "cli.csv", "--quiet")
    expected = (tmp_path / "cli.csv").read_bytes().decode()
    # every clip's stored features equal an uninterrupted run's, bit for bit
    [uninterrupted] = (tmp_path / "c" / "score").glob("*.zarr")
    reference = FeatureStore.open(str(uninterrupted))
    assert sorted(after.clip_ids) == sorted(reference.clip_ids)
    for clip in reference.clip_ids:
        assert np.array_equal(after.hidden(clip), reference.hidden(clip)), clip
    _same_predictions(client.predictions_csv(job["id"]), expected)

    _cancel_a_queued_and_a_running_job(client, root, audio, location)
    _kill_right_after_a_cancel(served, client, root)
    _sigterm_mid_job_then_resume(served, client, root, heads, location)
    assert "Traceback" not in served.text(), served.text()


def _cancel_a_queued_and_a_running_job(client, root: Path, audio: Path, location: Path) -> None:
    """A queued job never starts; a running one ends cancelled, its parts kept and the
    predictions of the clips it finished downloadable, marked partial."""
    other = _corpus(root / "other", clips=20, seed=9)
    del other
    running = client.submit(
        {"kind": "score", "source": str(root / "other" / "audio"), "heads": ["ml"]}
    )
    queued = client.submit({"kind": "score", "source": str(audio), "heads": ["ml"]})
    assert client.cancel(queued["id"])["state"] == "cancelled"
    while client.job(running["id"])["progress"].get("clips_done", 0) < 3:
        time.sleep(0.02)
    client.cancel(running["id"])
    ended = _wait(client, running["id"])
    assert ended["state"] == "cancelled"
    assert 0 < ended["progress"]["clips_done"] < 20
    never = client.job(queued["id"])
    assert never["state"] == "cancelled" and never["started_at"] is None and never["runs"] == 0
    partial = client.predictions(running["id"])  # the clips it finished, marked partial
    assert partial["partial"] and ended["result"]["partial"]
    assert 0 < len(partial["predictions"]) == ended["result"]["predicted"] < 20
    kept = FeatureStore.open(str(location))
    assert len(kept) >= 20 + 3  # the cancelled job's committed clips stay stored


def _kill_right_after_a_cancel(served, client, root: Path) -> None:
    """SIGKILL just after a cancel: started again, the job ends ``cancelled`` with the
    predictions of the clips it finished (they are in the store), marked partial."""
    _corpus(root / "fourth", clips=20, seed=17)
    job = client.submit({"kind": "score", "source": str(root / "fourth" / "audio"),
                         "heads": ["ml"]})  # fmt: skip
    while client.job(job["id"])["progress"].get("clips_done", 0) < 3:
        time.sleep(0.02)
    client.cancel(job["id"])
    served.kill()
    served.process = None
    served.start()
    ended = _wait(client, job["id"])
    assert ended["state"] == "cancelled" and ended["result"] is not None, ended
    assert ended["result"]["partial"] and 0 < ended["result"]["predicted"] < 20, ended
    partial = client.predictions(job["id"])
    assert partial["partial"] and len(partial["predictions"]) == ended["result"]["predicted"]


def _sigterm_mid_job_then_resume(served, client, root: Path, heads: Path, location: Path) -> None:
    """SIGTERM mid-job: the running part commits, the job waits in the queue, exit 0;
    started again, the job finishes from where it was."""
    third = _corpus(root / "third", clips=16, seed=13)
    del third
    last = client.submit(
        {"kind": "score", "source": str(root / "third" / "audio"), "heads": ["ml"]}
    )
    # a train job queued behind it, whose registry name a user then takes by hand
    mine = client.submit({"kind": "train", "store": location.name.removesuffix(".zarr"),
                          "labels": str(root / "corpus" / "train_split.csv"),
                          "val_labels": str(root / "corpus" / "valid_split.csv"),
                          "name": "mine", "preset": "mean-linear"})  # fmt: skip
    (heads / "mine").mkdir()
    (heads / "mine" / "notes.txt").write_text("the user's")
    while client.job(last["id"])["progress"].get("clips_done", 0) < 2:
        time.sleep(0.02)
    assert served.stop() == 0
    served.process = None
    served.start()
    resumed = _wait(client, last["id"])
    assert resumed["state"] == "succeeded" and resumed["runs"] == 2
    assert resumed["result"]["reused"] >= 2 and resumed["result"]["predicted"] == 16
    refused = _wait(client, mine["id"])  # it never writes over, nor removes, their folder
    assert refused["state"] == "failed" and "mine" in refused["error"]["detail"]
    assert (heads / "mine" / "notes.txt").read_text() == "the user's"
    assert served.stop() == 0  # SIGTERM: exit 0


@pytest.mark.slow
def test_tokens_and_loopback(tmp_path, stopped_at_teardown):
    tokens = tmp_path / "tokens"
    good = "a-long-random-token-0123456789"
    tokens.write_text(f"# the lab's tokens\n{good}\n")
    root = tmp_path / "root"
    root.mkdir()
    refused = run_cli("serve", "--stores", tmp_path / "s", "--heads", tmp_path / "h",
                      "--state", tmp_path / "st", "--source-root", root, "--host", "0.0.0.0",
                      expect=2)  # fmt: skip
    assert "--token-file" in refused.output
    served = stopped_at_teardown(Hosted(tmp_path, [root], "--token-file", tokens, token=good))
    served.start()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": good}):  # fmt: skip
            answer = httpx.get(f"{served.url}/v1/jobs", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json()["error"] == "unauthorized" and "jobs" not in answer.json()
        assert httpx.get(f"{served.url}/healthz").status_code == 200  # open
        ok = httpx.get(f"{served.url}/v1/jobs", headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200 and ok.json()["jobs"] == []
    finally:
        assert served.stop() == 0


def test_a_state_folder_with_other_things_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "thesis.tex").write_text("mine")
    root = tmp_path / "root"
    root.mkdir()
    refused = run_cli("serve", "--stores", tmp_path / "s", "--heads", tmp_path / "h",
                      "--state", state, "--source-root", root, expect=2)  # fmt: skip
    assert "thesis.tex" in refused.output and "not an emi service's" in refused.output
    assert (state / "thesis.tex").read_text() == "mine" and len(list(state.iterdir())) == 1


def test_metrics_show_the_process_and_each_route_by_template(lab):
    """/metrics: the process (resident memory, CPU, open files), every request counted
    and timed by route template and status (a job's id never becomes a label), and job
    durations resolved from 50 ms."""
    from prometheus_client.parser import text_string_to_metric_families

    served, client = lab["served"], lab["served"].client()
    for _ in range(3):
        with pytest.raises(ServiceError):
            client.job("job-00000000000000000000")  # 404, through the route's template
    httpx.get(f"{served.url}/no/such/route")
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{served.url}/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("process_resident_memory_bytes", ())] > 10e6
    assert samples[("process_open_fds", ())] > 0 and ("process_cpu_seconds_total", ()) in samples

    def requests(route: str, status: str) -> float:
        key = (("method", "GET"), ("route", route), ("status", status))
        return samples.get(("emi_http_request_duration_seconds_count", key), 0)

    assert requests("/v1/jobs/{job_id}", "404") >= 3
    assert requests("unmatched", "404") >= 1
    assert not any("job-0000" in str(labels) for _, labels in samples)
    buckets = {dict(labels)["le"] for name, labels in samples
               if name == "emi_job_duration_seconds_bucket"}  # fmt: skip
    assert "0.05" in buckets and "86400.0" in buckets


def test_ids_that_differ_by_a_folder_prefix_are_named_with_the_fix(lab, tmp_path, tiny_backbone):
    """A store extracted from the folder above the audio (ids ``audio/00001``) against
    label files naming ``00001``: emi train, emi evaluate and a train job say so, and
    how to fix it; none says to extract audio that is already stored."""
    above = lab["served"].stores / "above.zarr"
    run_cli("extract", lab["audio"].parent, above, "--model", tiny_backbone, "--quiet")
    trained = run_cli("train", above, "--labels", lab["train"], "--val-labels", lab["valid"],
                      "--out", tmp_path / "h", expect=2)  # fmt: skip
    evaluated = run_cli("evaluate", above, "--head", lab["served"].heads / "ml", "--labels",
                        lab["valid"], expect=2)  # fmt: skip
    client = lab["served"].client()
    job = _wait(client, client.submit({"kind": "train", "store": "above", "name": "above",
                                       "labels": str(lab["train"]),
                                       "val_labels": str(lab["valid"])})["id"])  # fmt: skip
    assert job["state"] == "failed"
    for said in (trained.stderr, evaluated.stderr, job["error"]["detail"]):
        assert "the store's clip ids carry the folder prefix 'audio/'" in said, said
        assert "emi extract .../audio" in said and "into this store first" not in said
    assert "00001" not in job["error"]["detail"]  # a client's label file: no ids shown


def test_predictions_by_page_and_a_clip_with_its_audio_and_curves(lab, tmp_path):
    """GET /v1/jobs/{id}/predictions (paged, sorted, filtered; distributions as numpy
    computes them), GET .../clip (the store's frame VAD) and .../clip/audio (the file's
    bytes, and a range of them), only for the job's own clips, never outside a root."""
    served, client = lab["served"], lab["served"].client()
    job = _wait(client, client.submit({"kind": "score", "source": str(lab["audio"]),
                                       "heads": ["ml"]})["id"])  # fmt: skip
    rows = client.predictions(job["id"])["predictions"]
    web = httpx.Client(base_url=served.url, timeout=30)
    asked = {"sort": "Joy", "order": "desc", "limit": 5, "offset": 2}
    page = web.get(f"/v1/jobs/{job['id']}/predictions", params=asked).json()
    by_joy = sorted(rows, key=lambda r: (r["Joy"], r["clip_id"]), reverse=True)
    assert [r["clip_id"] for r in page["rows"]] == [r["clip_id"] for r in by_joy[2:7]]
    assert page["total"] == page["clips"] == len(rows) == 24 and page["head"] == "ml"
    joy = np.array([r["Joy"] for r in rows])
    spread = page["distribution"]["Joy"]
    assert spread["median"] == pytest.approx(np.median(joy)) and spread["count"] == 24
    assert spread["q1"] == pytest.approx(np.percentile(joy, 25))
    assert spread["histogram"] == np.histogram(joy, bins=10, range=(0, 1))[0].tolist()
    wanted = rows[5]["clip_id"]
    found = web.get(f"/v1/jobs/{job['id']}/predictions", params={"clip": wanted.upper()}).json()
    assert [r["clip_id"] for r in found["rows"]] == [
        r["clip_id"] for r in rows if wanted in r["clip_id"]
    ]
    for bad in ({"head": "nope"}, {"sort": "Sadness"}):
        assert web.get(f"/v1/jobs/{job['id']}/predictions", params=bad).status_code == 400
    # one clip: its curves are the store's frame VAD, its intensities the job's
    clip = web.get(f"/v1/jobs/{job['id']}/clip", params={"clip_id": wanted}).json()
    store = FeatureStore.open(str(served.stores / f"{job['result']['store']}.zarr"))
    frames = store.frame_vad(_clip_key(lab, wanted))
    assert clip["vad_labels"] == ["arousal", "dominance", "valence"]
    assert np.allclose(clip["frame_vad"]["valence"], frames[:, 2], atol=1e-4)  # short: no blocks
    assert clip["predictions"]["ml"]["Joy"] == pytest.approx(rows[5]["Joy"])
    assert clip["file"] == str(lab["audio"] / f"{wanted}.wav")
    audio = web.get(clip["audio"])
    original = (lab["audio"] / f"{wanted}.wav").read_bytes()
    assert audio.status_code == 200 and audio.content == original
    assert audio.headers["content-type"] == "audio/wav"
    part = web.get(clip["audio"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == original[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(original)}"
    tail = web.get(clip["audio"], headers={"Range": "bytes=-10"})
    assert tail.content == original[-10:]
    past = web.get(clip["audio"], headers={"Range": f"bytes={len(original)}-"})
    assert past.status_code == 416
    # another job's clip, or a file that now leads outside its root: refused
    other = web.get(f"/v1/jobs/{job['id']}/clip/audio", params={"clip_id": "../../etc/passwd"})
    assert other.status_code == 404
    moved = lab["root"] / "moved"
    moved.mkdir(exist_ok=True)
    shutil.copytree(lab["audio"], moved / "audio")
    second = _wait(client, client.submit({"kind": "score", "source": str(moved / "audio"),
                                          "heads": ["ml"]})["id"])  # fmt: skip
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"not for clients")
    victim = moved / "audio" / f"{wanted}.wav"
    victim.unlink()
    victim.symlink_to(outside)
    refused = web.get(f"/v1/jobs/{second['id']}/clip/audio", params={"clip_id": wanted})
    assert refused.status_code == 403 and b"not for clients" not in refused.content


def _clip_key(lab, clip_id: str) -> str:
    """A clip's key in a score job's own store: its file's sha256."""
    return hashlib.sha256((lab["audio"] / f"{clip_id}.wav").read_bytes()).hexdigest()


def test_an_upload_is_named_by_its_files(lab, tmp_path):
    wavs = sorted(lab["audio"].glob("*.wav"))[:2]
    note = tmp_path / "notes.txt"
    note.write_text("not audio")
    upload = lab["served"].client().upload([*wavs, note])
    assert upload["names"] == [w.name for w in wavs] and upload["skipped"] == ["notes.txt"]
    again = httpx.get(f"{lab['served'].url}/v1/uploads/{upload['id']}", timeout=30).json()
    assert again == upload
    missing = httpx.get(f"{lab['served'].url}/v1/uploads/upload-{'0' * 20}", timeout=30)
    assert missing.status_code == 404
