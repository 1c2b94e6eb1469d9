"""``emi serve`` tried as an attacker and an unlucky operator would: hostile hosts,
origins and paths, damaged job rows, FIFOs, slow and private callback targets,
compression bombs and a full upload quota, racing retries. A real server (a subprocess
on a loopback port) running real jobs on a random tiny backbone."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from manifests.synthetic import write_corpus
from service.client import ServiceError
from tests.conftest import run_cli
from tests.flipping import flipping
from tests.served import Hosted, Served
from tests.synth import write_clip

SECRET = b"callback-secret-for-guard-tests-0123"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_backbone):
    """A source root with a labelled corpus, a registry with one ridge head, and a
    service that signs callbacks (to 127.0.0.1 only, 1.5 s an attempt) with a 3 MB
    upload quota."""
    folder = tmp_path_factory.mktemp("guard")
    root = folder / "root"
    splits = write_corpus(root / "corpus", clips=12, seed=21, min_seconds=1.0, max_seconds=2.0)
    audio = root / "corpus" / "audio"
    seed = folder / "stores" / "seed.zarr"  # a managed store (train jobs read it)
    run_cli("extract", audio, seed, "--model", tiny_backbone, "--quiet")
    secret = folder / "callback.secret"
    secret.write_bytes(SECRET)
    served = Hosted(
        folder, [root],
        "--model", tiny_backbone, "--jobs", "2",
        "--callback-secret-file", secret, "--callback-backoff", "0.2",
        "--callback-allow", "127.0.0.1", "--callback-timeout", "1.5",
        "--upload-quota-gb", "0.003", "--upload-max-ratio", "20",
    )  # fmt: skip
    run_cli(
        "train", seed, "--labels", splits["train"], "--val-labels",
        splits["valid"], "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet",
    )  # fmt: skip
    with served:
        served.start()
        yield {"served": served, "root": root, "audio": audio, "folder": folder, **splits}
        assert served.stop() == 0, served.text()
    assert "Traceback" not in served.text(), served.text()


def _wait(client, job_id: str, timeout_s: float = 120.0) -> dict:
    return client.wait(job_id, poll_s=0.1, timeout_s=timeout_s)


def _score(guarded, source, **extra) -> dict:
    return {"kind": "score", "source": str(source), "heads": ["ml"], **extra}


@pytest.mark.slow
def test_a_rebinding_host_and_another_sites_page_are_refused(guarded):
    url = guarded["served"].url
    port = guarded["served"].port
    evil = {"Host": f"attacker.example:{port}"}
    answer = httpx.get(f"{url}/v1/sources", headers=evil)
    assert answer.status_code == 400 and answer.json()["error"] == "bad host"
    assert "folders" not in answer.text
    # the probes answer whatever the Host (a kubelet names the pod's address)
    assert httpx.get(f"{url}/readyz", headers=evil).status_code == 200
    assert httpx.get(f"{url}/v1/sources", headers={"Host": f"localhost:{port}"}).status_code == 200
    # another site's page: no upload, no cancel, no job
    job = guarded["served"].client().submit(_score(guarded, guarded["audio"]))
    files = {"files": ("a.wav", b"RIFF....WAVE", "audio/wav")}
    # another site, and pages on another port or scheme of this very host
    for origin in ("http://attacker.example", "null", "http://localhost:9999",
                   "http://127.0.0.1:8888", "https://localhost", "http://[::1]:3000",
                   f"http://127.0.0.1:{port}.evil", f"http://127.0.0.1:{port}@evil"):  # fmt: skip
        for method, path, kwargs in (
            ("POST", "/v1/uploads", {"files": files}),
            ("POST", f"/v1/jobs/{job['id']}/cancel", {}),
            ("POST", "/v1/jobs", {"json": _score(guarded, guarded["audio"])}),
            ("DELETE", f"/v1/jobs/{job['id']}", {}),
        ):
            refused = httpx.request(method, url + path, headers={"Origin": origin}, **kwargs)
            assert refused.status_code == 403, (origin, path, refused.text)
            assert refused.json()["error"] == "forbidden"
    # a Host that only starts like ours
    for host in (f"127.0.0.1:{port}.evil", f"127.0.0.1:{port}@evil", f"127.0.0.1 :{port}",
                 "127.0.0.1:99999"):  # fmt: skip
        answer = httpx.get(f"{url}/v1/sources", headers={"Host": host})
        assert answer.status_code == 400, (host, answer.text)
    assert guarded["served"].client().job(job["id"])["cancel_requested"] is False
    # the service's own page may
    local = {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}
    assert httpx.post(f"{url}/v1/jobs", json={}, headers=local).status_code == 422  # let in
    own = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", headers={"Origin": url})
    assert own.status_code in (202, 409), own.text  # let in: cancelled, or already ended
    page = httpx.get(f"{url}/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    _wait(guarded["served"].client(), job["id"])


def test_hostile_paths_never_answer_500(guarded):
    url = guarded["served"].url
    root = guarded["root"]
    loopy = root / "loopy"
    loopy.mkdir()
    (loopy / "self").symlink_to(loopy / "self")  # a link to itself: ELOOP
    (loopy / "a").symlink_to(loopy / "b")
    (loopy / "b").symlink_to(loopy / "a")
    os.mkfifo(loopy / "pipe.wav")
    listed = httpx.get(f"{url}/v1/sources", params={"path": str(loopy)})
    assert listed.status_code == 200, listed.text
    assert listed.json()["folders"] == []
    for params in ({"path": str(root) + "\x00/etc"}, {"path": "\x00"}):
        answer = httpx.get(f"{url}/v1/sources", params=params)
        assert answer.status_code == 400, answer.text
    answer = httpx.post(f"{url}/v1/jobs", json=_score(guarded, str(root) + "/corpus\x00x"))
    assert answer.status_code == 400 and "control characters" in answer.json()["detail"]


def test_a_fifo_among_the_audio_is_a_failed_clip_and_the_rest_is_scored(guarded):
    client = guarded["served"].client()
    folder = guarded["root"] / "with-fifo"
    folder.mkdir()
    wavs = sorted(guarded["audio"].glob("*.wav"))[:2]
    for wav in wavs:
        (folder / wav.name).write_bytes(wav.read_bytes())
    os.mkfifo(folder / "pipe.wav")  # opening it for reading would wait for a writer
    job = _wait(client, client.submit(_score(guarded, folder))["id"], timeout_s=60)
    assert job["state"] == "succeeded", job
    assert job["failures_count"] == 1 and job["result"]["predicted"] == 2
    [failed] = client.failures(job["id"])
    assert failed["clip_id"] == "pipe" and "FIFO" in failed["reason"]
    # the queue was never blocked: a job after it runs
    after = _wait(client, client.submit(_score(guarded, guarded["audio"]))["id"])
    assert after["state"] == "succeeded"


def test_a_damaged_job_row_fails_that_job_and_the_service_goes_on(guarded):
    served = guarded["served"]
    client = served.client()
    now = time.time()
    with sqlite3.connect(served.state / "jobs.sqlite", timeout=30) as db:
        db.execute(
            "INSERT INTO jobs(id, kind, state, request, created_at, updated_at, progress) "
            "VALUES(?, 'score', 'queued', '{broken', ?, ?, 'not json either')",
            ("job-damaged0000000000", now, now),
        )
    listed = httpx.get(f"{served.url}/v1/jobs", params={"limit": 500})
    assert listed.status_code == 200, listed.text
    damaged = _wait(client, "job-damaged0000000000", timeout_s=30)
    assert damaged["state"] == "failed" and "damaged" in damaged["error"]["detail"]
    job = _wait(client, client.submit(_score(guarded, guarded["audio"]))["id"])
    assert job["state"] == "succeeded"  # the job threads live on
    ready = httpx.get(f"{served.url}/readyz").json()
    assert ready["ready"] and ready["checks"]["jobs"] == "running"


def test_failures_are_counted_in_listings_and_paged_apart(guarded):
    client = guarded["served"].client()
    folder = guarded["root"] / "many-bad"
    folder.mkdir()
    for k in range(7):
        (folder / f"bad{k}.wav").write_bytes(b"RIFF\x00\x01WAVEnot audio " + bytes([k]))
    (folder / "good.wav").write_bytes(sorted(guarded["audio"].glob("*.wav"))[0].read_bytes())
    job = _wait(client, client.submit(_score(guarded, folder))["id"])
    listed = [j for j in client.jobs(limit=500)["jobs"] if j["id"] == job["id"]]
    assert listed[0]["failures_count"] == 7 and "failures" not in listed[0]
    pages, after = [], None
    while True:
        params = {"limit": 3, **({"after": after} if after else {})}
        page = client._call("GET", f"/v1/jobs/{job['id']}/failures", params=params).json()
        pages.append(page["failures"])
        assert page["total"] == 7
        after = page["next"]
        if after is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(f["clip_id"] for p in pages for f in p) == [f"bad{k}" for k in range(7)]
    for bad in ("abc", "-1", "99999999999"):
        answer = httpx.get(f"{guarded['served'].url}/v1/jobs/{job['id']}/failures?after={bad}")
        assert answer.status_code == 400


class _Trickle:
    """A receiver that reads the request, then sends its answer a byte a second."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(1.0)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


class _Quick(BaseHTTPRequestHandler):
    got: list[bytes] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        type(self).got.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_slow_receivers_never_hold_up_other_callbacks(guarded):
    client = guarded["served"].client()
    trickles = [_Trickle() for _ in range(8)]  # twice the sender threads there once were
    quick = ThreadingHTTPServer(("127.0.0.1", 0), _Quick)
    threading.Thread(target=quick.serve_forever, daemon=True).start()
    try:
        slow_jobs = [
            client.submit(
                _score(guarded, guarded["audio"], callback_url=f"http://127.0.0.1:{t.port}/hook")
            )  # fmt: skip
            for t in trickles
        ]
        for job in slow_jobs:
            _wait(client, job["id"])
        fast = client.submit(
            _score(guarded, guarded["audio"],
                   callback_url=f"http://127.0.0.1:{quick.server_address[1]}/hook")
        )  # fmt: skip
        _wait(client, fast["id"])
        ended = time.monotonic()
        # delivered before any slow attempt could have ended (each takes 1.5 s)
        while client.job(fast["id"])["callback"]["status"] != "delivered":
            assert time.monotonic() - ended < 1.4, client.job(fast["id"])["callback"]
            time.sleep(0.05)
        assert json.loads(_Quick.got[-1])["id"] == fast["id"]
        slow = client.job(slow_jobs[0]["id"])["callback"]
        deadline = time.monotonic() + 20
        while slow.get("last_error") is None:
            assert time.monotonic() < deadline, slow
            time.sleep(0.1)
            slow = client.job(slow_jobs[0]["id"])["callback"]
        assert slow["last_error"].startswith("failed: no whole answer within 1.5 s")
        assert "X-Slow" not in slow["last_error"]
    finally:
        for trickle in trickles:
            trickle.close()
        quick.shutdown()


def test_callback_targets_that_are_not_public_or_not_urls_are_refused_at_submit(guarded):
    client = guarded["served"].client()
    for url in ("http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data",
                "http://localhost:9/hook", "http://[::1]:9/hook", "http://a b/",
                "http://user:pw@example.org/", "ftp://example.org/",
                # IPv6 forms carrying a loopback or private IPv4 address
                "http://[::7f00:1]:9/hook", "http://[64:ff9b::7f00:1]:9/hook",
                "http://[64:ff9b::a00:7]/hook", "http://[2002:7f00:1::1]/hook",
                "http://[::ffff:10.0.0.7]/hook",
                "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook"):  # fmt: skip
        with pytest.raises(ServiceError) as refused:
            client.submit(_score(guarded, guarded["audio"], callback_url=url))
        assert refused.value.status in (400, 422), url
        if refused.value.status == 400 and "public" in str(refused.value):
            assert "--callback-allow" in str(refused.value)


def test_a_compression_bomb_and_a_full_quota_are_refused_and_leave_nothing(guarded, tmp_path):
    client = guarded["served"].client()
    uploads = guarded["served"].state / "uploads"
    before = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("quiet.wav", b"\0" * (900 * 1024))  # ~1 KiB packed: ratio ~900
    with pytest.raises(ServiceError) as refused:
        client.upload([bomb])
    assert refused.value.status == 413 and "--upload-max-ratio" in str(refused.value)
    assert sorted(p.name for p in uploads.iterdir()) == before
    # the quota (3 MB): two uploads of 1.2 MB fit, a third does not, until one is deleted
    blob = tmp_path / "noise.wav"
    blob.write_bytes(os.urandom(1_200_000))
    kept = [client.upload([blob]), client.upload([blob])]
    with pytest.raises(ServiceError) as full:
        client.upload([blob])
    assert full.value.status == 413 and "--upload-quota-gb" in str(full.value)
    assert len(list(uploads.glob("upload-*"))) == len(before) + 2
    about = httpx.get(f"{guarded['served'].url}/v1/service").json()
    assert about["limits"]["uploads_kept_bytes"] >= 2_400_000 and about["keep_days"] == 30
    client._call("DELETE", f"/v1/uploads/{kept[0]['id']}")
    client._call("DELETE", f"/v1/uploads/{client.upload([blob])['id']}")
    client._call("DELETE", f"/v1/uploads/{kept[1]['id']}")


def test_retries_of_one_train_job_at_once_get_one_job(guarded):
    served = guarded["served"]
    body = {"kind": "train", "store": "seed", "labels": str(guarded["train"]), "name": "raced",
            "val_labels": str(guarded["valid"]), "preset": "mean-linear"}  # fmt: skip
    key = f"train-{uuid.uuid4().hex}"
    leftover = served.heads / ".raced.partial-0123abcd"  # a killed earlier run's half write
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")

    def post(_):
        return httpx.post(f"{served.url}/v1/jobs", json=body,
                          headers={"Idempotency-Key": key}, timeout=30)  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    done = _wait(served.client(), ids.pop())
    assert done["state"] == "succeeded", done
    # nothing half-written is left in the registry, and no server path in the heads list
    assert not [p.name for p in served.heads.rglob("*partial*")]
    heads = httpx.get(f"{served.url}/v1/heads").text
    assert str(served.heads) not in heads and str(guarded["folder"]) not in heads
    metrics = httpx.get(f"{served.url}/metrics").text
    assert "_created" not in metrics
    assert 'emi_job_duration_seconds_count{kind="train",state="succeeded"}' in metrics


@pytest.mark.slow
def test_the_deployments_probes_answer_a_service_with_a_token(tmp_path, tiny_backbone):
    """The probes of deploy/kubernetes/service.yaml, sent as a kubelet sends them (the
    manifest's path and headers, the pod's address as Host), against a service started
    with a token file as the manifest starts it."""
    from tests.test_deploy import named

    deployment = named("Deployment")["emi-service"]  # as kubectl apply -k makes it
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--token-file" in container["command"]
    tokens = tmp_path / "tokens"
    good = "a-long-random-token-for-probes-0123"
    # saved on Windows: a byte order mark and CRLF line ends (once a silent 401)
    tokens.write_bytes(b"\xef\xbb\xbf# probes\r\n" + good.encode() + b"\r\n")
    root = tmp_path / "root"
    root.mkdir()
    with Hosted(tmp_path, [root], "--token-file", tokens, token=good) as served:
        served.start()
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            headers["Host"] = f"10.1.2.3:{served.port}"  # the pod's address
            answer = httpx.get(f"{served.url}{get['path']}", headers=headers)
            assert answer.status_code == 200, (probe, answer.text)
            assert str(tmp_path) not in answer.text
        ready = httpx.get(f"{served.url}/readyz").json()
        assert set(ready) == {"ready", "checks"} and ready["ready"] is True
        assert httpx.get(f"{served.url}/v1/jobs").status_code == 401  # the rest needs one
        with_token = {"Authorization": f"Bearer {good}"}
        assert httpx.get(f"{served.url}/v1/jobs", headers=with_token).status_code == 200
        assert served.stop() == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_job_threads_make_the_service_not_ready(tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import ServiceConfig
    from service.state import StateFolder

    root = tmp_path / "root"
    root.mkdir()
    config = ServiceConfig(stores=str(tmp_path / "s"), heads=tmp_path / "h",
                           state=tmp_path / "state", source_roots=[str(root)])  # fmt: skip
    state = StateFolder.open(config.state)
    config.state = state.root
    app = create_app(config, state)
    with TestClient(app, base_url="http://127.0.0.1") as web:
        service = app.app.app.state.service  # behind the request metrics and the guard
        assert web.get("/healthz").json() == {"status": "ok"}

        def crash():
            raise SystemExit("a job thread dies")  # not an Exception: the thread ends

        service.table.claim_next = crash
        deadline = time.monotonic() + 10
        while service.runner.threads_alive():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answer = web.get("/readyz")
        assert answer.status_code == 503 and answer.json()["checks"]["jobs"] == "stopped"
        alive = web.get("/healthz")  # it cannot recover by itself: the pod is restarted
        assert alive.status_code == 503 and alive.json() == {"status": "unrecoverable"}


def test_expired_uploads_and_results_are_removed_and_in_use_ones_kept(tmp_path):
    from service.config import ServiceConfig
    from service.jobs import JobState, JobTable
    from service.kinds import KINDS
    from service.retention import DAY_S, sweep_expired

    root = tmp_path / "root"
    root.mkdir()
    config = ServiceConfig(stores=str(tmp_path / "s"), heads=tmp_path / "h", keep_days=2,
                           state=tmp_path / "state", source_roots=[str(root)])  # fmt: skip
    table = JobTable(_state_db(config), KINDS)
    old = time.time() - 3 * DAY_S
    for name in ("upload-" + "a" * 20, "upload-" + "b" * 20, "upload-" + "c" * 20):
        files = config.state / "uploads" / name / "files"
        files.mkdir(parents=True)
        made = old if name != "upload-" + "c" * 20 else time.time()
        (files.parent / "upload.json").write_text(json.dumps({"created_at": made, "bytes": 1}))
    in_use = {"kind": "score", "source": "upload-" + "b" * 20, "heads": ["x"]}
    table.add("score", in_use)  # queued: in use
    done, _ = table.add("score", {"kind": "score", "source": "/x", "heads": ["x"]})
    assert table.claim_next().id != done.id  # the older one
    assert table.claim_next().id == done.id
    assert table.transition(done.id, JobState.succeeded, expect=[JobState.running])
    (config.state / "results" / done.id).mkdir(parents=True)
    assert sweep_expired(config, table) == ["upload-" + "a" * 20]  # the job ended just now
    later = time.time() + 3 * DAY_S
    assert sweep_expired(config, table, now=later) == [
        "upload-" + "c" * 20, f"results/{done.id}"
    ]  # fmt: skip
    assert (config.state / "uploads" / ("upload-" + "b" * 20)).is_dir()
    table.close()


def _state_db(config) -> Path:
    config.state.mkdir(parents=True, exist_ok=True)
    return config.state / "jobs.sqlite"


def test_a_name_resolving_to_a_private_address_is_refused_when_sent(monkeypatch):
    from service import callbacks

    def resolve(host, port, type=0):  # noqa: A002 (socket's name)
        address = {"hooks.example.org": "10.1.2.3", "public.example.org": "93.184.216.34"}[host]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    _, _, why = callbacks.resolve_target("https://hooks.example.org/h", [])
    assert why.startswith("refused") and "--callback-allow" in why
    target, extensions, why = callbacks.resolve_target(
        "https://hooks.example.org/h", ["10.0.0.0/8"]
    )
    assert why is None and target == "https://10.1.2.3/h"
    assert extensions == {"sni_hostname": "hooks.example.org"}  # TLS checks the name
    target, _, why = callbacks.resolve_target("http://public.example.org:8080/h", [])
    assert why is None and target == "http://93.184.216.34:8080/h"  # pinned to the checked address


def test_serve_on_a_taken_port_is_one_line_exit_2_and_makes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_cli("serve", "--stores", tmp_path / "stores", "--heads", tmp_path / "heads",
                          "--state", tmp_path / "state", "--source-root", root,
                          "--port", port, expect=2)  # fmt: skip
    assert f"--port {port}: the port is taken" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no state, stores, heads


@pytest.mark.slow
def test_extract_jobs_need_a_backbone_the_service_can_load(tmp_path, monkeypatch):
    """Without --model and without the default checkpoint (offline, not cached), emi
    serve says so at start and refuses an extract job into a new store at submit."""
    root = tmp_path / "root"
    write_corpus(root / "c", clips=2, seed=1, min_seconds=1.0, max_seconds=1.5)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with Served(tmp_path, [root]) as served:
        served.start()
        answer = httpx.post(f"{served.url}/v1/jobs", json={
            "kind": "extract", "source": str(root / "c" / "audio"), "store": "fresh"})  # fmt: skip
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert "--model" in detail and "operator" in detail
        assert served.client().jobs()["jobs"] == []  # no job made
        assert served.stop() == 0
    assert "extract jobs into new stores are refused" in served.text()


def test_an_upload_leaves_out_what_is_not_audio_as_a_folder_listing_does(guarded, tmp_path):
    client = guarded["served"].client()
    wav = sorted(guarded["audio"].glob("*.wav"))[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("recorded on tuesday")
    upload = client.upload([wav, notes])
    assert upload["files"] == 1 and upload["skipped"] == ["notes.txt"]
    files = guarded["served"].state / "uploads" / upload["id"] / "files"
    assert sorted(p.name for p in files.iterdir()) == [wav.name]
    with pytest.raises(ServiceError) as refused:
        client.upload([notes])
    assert refused.value.status == 400 and "left out: notes.txt" in str(refused.value)
    client._call("DELETE", f"/v1/uploads/{upload['id']}")


def _slow_upload(url: str, name: str, size: int, pause_s: float = 0.02) -> httpx.Response:
    """A multipart upload of ``size`` bytes sent in 64 KiB pieces with pauses (uploads
    sent at once overlap in the service)."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: audio/wav\r\n\r\n").encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        sent = 0
        while sent < size:
            piece = min(65536, size - sent)
            yield os.urandom(piece)
            sent += piece
            time.sleep(pause_s)
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return httpx.post(f"{url}/v1/uploads", content=body(), headers=headers, timeout=60)


def test_concurrent_uploads_never_share_the_quota_twice(guarded):
    """Four uploads at once, each under the quota (3 MB) but together 2.7 times it:
    the bytes kept stay within the quota (each counted as it arrives)."""
    url = guarded["served"].url
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda k: _slow_upload(url, f"n{k}.wav", 2_000_000), range(4)))
    kept = [a.json() for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert all(a.status_code == 413 and "--upload-quota-gb" in a.text for a in refused)
    assert 0 < len(kept) <= 1 and sum(k["bytes"] for k in kept) <= 3_000_000, answers
    about = httpx.get(f"{url}/v1/service").json()["limits"]
    assert about["uploads_kept_bytes"] == sum(k["bytes"] for k in kept)
    for upload in kept:
        assert httpx.delete(f"{url}/v1/uploads/{upload['id']}").status_code == 204


def test_a_tar_members_stated_size_is_refused_before_its_bytes_are_read(tmp_path, monkeypatch):
    """A .tar.gz whose first member states 2 GiB of zeros: refused at that member's
    header, having decompressed next to nothing (it once read the whole stream first)."""
    import gzip
    import tarfile

    from service import uploads
    from service.config import ServiceConfig
    from service.errors import RequestError

    info = tarfile.TarInfo("huge.wav")
    info.size = 2 * 2**30
    archive = tmp_path / "stated.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as out:
        out.write(info.tobuf())
        zeros = b"\0" * 2**20
        for _ in range(64):  # 64 MiB of the stated 2 GiB: a few hundred KiB packed
            out.write(zeros)
    read = {"bytes": 0}

    class Counted(gzip.GzipFile):
        def read(self, size=-1):
            data = super().read(size)
            read["bytes"] += len(data)
            return data

    real_open = tarfile.open

    def counted_open(name, mode="r", *args, **kwargs):
        return real_open(fileobj=Counted(name, "rb"), mode="r:")

    monkeypatch.setattr(uploads.tarfile, "open", counted_open)
    config = ServiceConfig(stores=str(tmp_path / "s"), heads=tmp_path / "h", state=tmp_path / "st",
                           source_roots=[str(tmp_path)], max_file_bytes=2**30)  # fmt: skip
    with pytest.raises(RequestError) as refused:
        uploads.unpack_archive(archive, tmp_path / "into", config)
    assert refused.value.status == 413 and "--upload-max-file-mb" in refused.value.detail
    assert read["bytes"] < 2**20, read  # the header block, not the 64 MiB behind it


@pytest.mark.slow
def test_a_flipping_link_under_a_root_never_gets_an_outside_file_into_a_job(guarded, tmp_path):
    """100 score jobs over a folder whose link flips between a clip inside the root and
    one outside, 100 submissions naming a folder link that flips out, and 100 train
    submissions whose label link flips to an outside file: nothing outside is read,
    listed or named (a flipped clip's prediction is the inside clip's; the links flip
    thousands of times a second, so each kind of request meets both sides)."""
    client = guarded["served"].client()
    root = guarded["root"]
    inside = root / "flips" / "inside"
    write_clip(inside / "clip.wav", 0.6, seed=31)
    (inside / "labels.csv").write_text("Joy,Filename\nclip,0.5\n")  # a parse error
    outside = tmp_path / "outside"
    write_clip(outside / "secret_name.wav", 0.6, seed=32)
    (outside / "labels.csv").write_text("SECRET_KEY=abc,x\nsecret_name,0.1\n")
    folder = root / "flips" / "folder"
    folder.mkdir()
    os.link(inside / "clip.wav", folder / "clip.wav")
    stop = threading.Event()
    flippers = [
        flipping(
            folder / "flip.wav", "../inside/clip.wav", str(outside / "secret_name.wav"), stop
        ),  # fmt: skip
        flipping(root / "flips" / "dir", "inside", str(outside), stop),
        flipping(
            root / "flips" / "labels.csv", "inside/labels.csv", str(outside / "labels.csv"), stop
        ),  # fmt: skip
    ]
    said, jobs = [], []
    try:
        for _ in range(100):
            jobs.append(client.submit(_score(guarded, folder))["id"])
            for body in (
                _score(guarded, root / "flips" / "dir"),
                {"kind": "train", "store": "seed", "name": "flipped", "preset": "mean-linear",
                 "labels": str(root / "flips" / "labels.csv"), "val_labels": str(guarded["valid"])},
            ):  # fmt: skip
                try:
                    jobs.append(client.submit(body)["id"])
                except ServiceError as err:
                    assert err.status in (400, 403, 404), err  # 404: mid-swap
                    said.append(str(err))
    finally:
        stop.set()
        for flipper in flippers:
            flipper.join()
    outcomes = _outcomes(client, jobs)
    text = "\n".join(said) + json.dumps(outcomes)
    assert "SECRET" not in text and "secret_name" not in text and str(outside) not in text
    assert "line 1: first column" in text and "outside the source roots" in text
    rows = [row for o in outcomes for row in o["predictions"]]
    assert {r["clip_id"] for r in rows} <= {"clip", "flip"} and any(
        r["clip_id"] == "flip" for r in rows
    )
    scored = {json.dumps({k: v for k, v in r.items() if k != "clip_id"}) for r in rows}
    assert len(scored) == 1  # every row is the inside clip's prediction


def _outcomes(client, job_ids: list[str]) -> list[dict]:
    """Each job's end, failures and predictions (score jobs)."""
    ended = []
    for job_id in job_ids:
        job = _wait(client, job_id, timeout_s=300)
        assert job["state"] in ("succeeded", "failed"), job
        failures = client.failures(job_id, page_size=100) if job["failures_count"] else []
        predictions = []
        if job["kind"] == "score" and job["state"] == "succeeded":
            predictions = client.predictions(job_id)["predictions"]
        ended.append({"job": job, "failures": failures, "predictions": predictions})
    return ended


def test_upload_errors_name_no_server_path(guarded):
    url = guarded["served"].url
    state = str(guarded["served"].state)
    for name in ("a" * 300 + ".wav", "b" * 250 + ".wav"):
        answer = httpx.post(f"{url}/v1/uploads", files={"files": (name, b"RIFF", "audio/wav")})
        assert answer.status_code in (201, 400), answer.text
        assert state not in answer.text and "uploads/" not in answer.text
        if answer.status_code == 201:
            httpx.delete(f"{url}/v1/uploads/{answer.json()['id']}")
        else:
            assert "file name is over 255 bytes" in answer.json()["detail"]


@pytest.fixture
def small_disks(tmp_path):
    """Two 24 MiB tmpfs made for the test (unmounted after it)."""
    import subprocess

    disks = [tmp_path / "disk-a", tmp_path / "disk-b"]
    for disk in disks:
        disk.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                              capture_output=True, text=True)  # fmt: skip
        if made.returncode != 0:
            pytest.skip(f"a tmpfs cannot be mounted here ({made.stderr.strip()}): needs root")
    yield disks
    for disk in disks:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file that did it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (2**20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_fails_a_job_and_never_wedges_it(small_disks, tmp_path, tiny_backbone):
    """Stores and state on small file systems, both filled: a score job ends ``failed``
    saying the disk is full (never ``running`` for good, never ``succeeded`` with no
    rows), its end recorded from the state's reserve; /readyz says the state cannot be
    written and an upload gets 507; once there is room again the service is ready and
    scores."""
    stores, state = small_disks
    root = tmp_path / "root"
    splits = write_corpus(root / "corpus", clips=6, seed=41, min_seconds=1.0, max_seconds=1.5)
    audio = root / "corpus" / "audio"
    seed = tmp_path / "seed.zarr"
    run_cli("extract", audio, seed, "--model", tiny_backbone, "--quiet")
    served = Hosted(tmp_path, [root], "--model", tiny_backbone, state=state / "state",
                    stores=str(stores / "stores"))  # fmt: skip
    run_cli("train", seed, "--labels", splits["train"], "--val-labels", splits["valid"],
            "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet")  # fmt: skip
    with served:
        served.start()
        client = served.client()
        fillers = [_fill(stores), _fill(state)]
        job = client.submit({"kind": "score", "source": str(audio), "heads": ["ml"]})
        ended = _wait(client, job["id"], timeout_s=120)
        assert ended["state"] == "failed", json.dumps(ended)
        assert "no space left" in ended["error"]["detail"].lower(), ended["error"]
        assert str(stores) not in json.dumps(ended) and str(state) not in json.dumps(ended)
        deadline = time.monotonic() + 10  # the state's check runs every 2 s
        while (ready := httpx.get(f"{served.url}/readyz")).status_code == 200:
            assert time.monotonic() < deadline, served.text()
            time.sleep(0.2)
        assert ready.status_code == 503 and ready.json()["checks"]["state"] == "full"
        big = os.urandom(9 * 2**20)  # more than the whole reserve
        answer = httpx.post(f"{served.url}/v1/uploads", files={"files": ("a.wav", big)})
        assert answer.status_code == 507, answer.text
        assert "disk is full" in answer.json()["detail"]
        with pytest.raises(ServiceError, match="409"):  # a finished job stays as it is
            client.cancel(job["id"])
        assert client.job(job["id"])["state"] == "failed"
        for filler in fillers:  # room again: the reserve is made again, jobs run
            filler.unlink()
        deadline = time.monotonic() + 30
        while httpx.get(f"{served.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, served.text()
            time.sleep(0.2)
        again = _wait(client, client.submit({"kind": "score", "source": str(audio),
                                             "heads": ["ml"]})["id"])  # fmt: skip
        assert again["state"] == "succeeded" and again["result"]["predicted"] == 6, again
        assert served.stop() == 0, served.text()
    assert "Traceback" not in served.text(), served.text()


def test_a_job_none_of_whose_clips_was_kept_for_a_full_disk_fails():
    from featurestore.records import ClipFailure
    from service.kinds.clips import DiskFull, fail_on_a_full_disk

    full = ClipFailure("a", "/x/a.wav", "could not write the part ([Errno 28] No space left on "
                       "device)")  # fmt: skip
    other = ClipFailure("b", "/x/b.wav", "unreadable as audio (Format not recognised)")
    with pytest.raises(DiskFull, match="1 of 2 clips failed for it and none was kept"):
        fail_on_a_full_disk([full, other], kept=0)
    fail_on_a_full_disk([full, other], kept=1)  # some kept: succeeded, failures listed
    fail_on_a_full_disk([other], kept=0)  # bad audio alone: as before
