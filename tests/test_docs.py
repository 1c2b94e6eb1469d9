"""Every code block of the docs site and the README runs as written.

- Shell blocks run with bash in a folder prepared with what the page assumes (audio,
  label files, a checkpoint): the real checkpoint's hub id resolves offline to a
  random backbone placed in a Hugging Face cache, a cluster page runs against a real
  dask scheduler and an S3-compatible server on loopback, the service's pages against
  a real ``emi serve``. A few command lines run elsewhere (installing, CI itself):
  :data:`ELSEWHERE` names where, and the test checks that place holds them.
- Python blocks are executed: the Python API page by ``tests/test_python_api.py``, the
  store page's reading without emi by ``tests/test_trust.py`` (:data:`PYTHON_RUN_BY`).
- JSON blocks are parsed (a grid is read with the grid's rules); unlabelled blocks are
  listings and outputs, not code.
- ``./run docs`` builds the site with ``--strict`` (broken links and references fail)
  and serves it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from featurestore.random_backbone import write_random_backbone
from manifests.synthetic import write_corpus
from tests.cluster import dask_cluster
from tests.conftest import run_cli
from tests.docs_blocks import REPO, Block, all_blocks, page_blocks
from tests.emi_here import run_bash
from tests.s3 import s3_server
from tests.served import free_port

HUB_ID = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
# Command lines run by CI or by the `run` script rather than here: the file that runs
# them and a text it must hold.
ELSEWHERE = {
    "./run demo": (".ci/run", "./run demo"),
    "./run test": (".ci/run", "./run test"),
    "./run serve        # then open the address it prints, http://127.0.0.1:8000/": (
        "tests/test_run_script.py",
        "def test_run_serve_serves_a_demo_folder_and_prints_its_command_and_address",
    ),
    "./run docs build   # checks every page and link (--strict), writes the site to site/": (
        ".ci/run",
        "./run docs build",
    ),
    "./run docs         # the same checks, then serves it at http://127.0.0.1:8000 as you edit": (
        "tests/test_docs.py",
        "def test_run_docs_serves_the_site",
    ),
    "./run test                                               # the suite, two processes": (
        ".ci/run",
        "./run test",
    ),
    ".venv/bin/ruff check . && .venv/bin/ruff format --check .   # lint": (
        ".ci/run",
        ".venv/bin/ruff format --check .",
    ),
    "bash .ci/run                                             # what CI runs on a clean clone": (
        ".ci/run",
        "./run test",
    ),
    "python3 -m venv .venv && . .venv/bin/activate": ("run", '-m venv "$venv"'),
    "pip install -c constraints-cpu.txt -e .": ("run", '-c "$here/constraints-cpu.txt" -e'),
    'pip install -c constraints-cpu.txt -e ".[test,docs]"': ("run", '-e "$here[test,docs]"'),
    "apt-get update && apt-get install -y espeak-ng chromium chromium-driver   # as root "
    "(else sudo)": ("run", "apt-get install"),
    "python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder   # as ./run test; -n 0: "
    "one process": (
        "run",
        "-m pytest -q -n 3 --dist loadfile --no-loadscope-reorder",
    ),
    "mkdocs build --strict                      # the docs, into site/": (
        "run",
        'mkdocs" build --strict',
    ),
    # docs/slurm.md's image variant: run against the image ./run image --check built
    'DASK_JOBQUEUE__SLURM__PYTHON="podman run --rm --network host --user $(id -u):$(id -g) '
    '--volume $SHARED:$SHARED localhost/emi:0.1.0 python" emi extract $SHARED/audio '
    "$SHARED/features.zarr --model $SHARED/models/backbone --cluster slurm --cluster-jobs 2 "
    "--cluster-queue $PARTITION --device $DEVICE": (
        "deploy/image/check.sh",
        'DASK_JOBQUEUE__SLURM__PYTHON="podman run --rm --network host --user $(id -u):$(id -g) '
        '--volume $SHARED:$SHARED localhost/emi:0.1.0 python" emi extract $SHARED/audio '
        "$SHARED/features.zarr --model $SHARED/models/backbone --cluster slurm --cluster-jobs 2 "
        "--cluster-queue $PARTITION --device $DEVICE",
    ),
}
# The pages whose shell blocks the tests below run, each block whole.
SHELL_RUN_BY = {
    "README.md": "test_the_real_checkpoint_tour_runs",
    "docs/getting-started.md": "test_the_real_checkpoint_tour_runs",
    "docs/service.md": "test_the_service_pages_blocks_run_against_a_real_service",
    "docs/cluster.md": "test_the_cluster_pages_blocks_run_on_a_scheduler_and_s3",
    "docs/slurm.md": "tests/test_slurm.py::test_the_slurm_pages_blocks_run_as_written",
}
PYTHON_RUN_BY = {
    "docs/python-api.md": ("tests/test_python_api.py", "def test_the_python_api_page_runs"),
    "docs/store.md": ("tests/test_trust.py", "def test_the_docs_plain_reading_works_for_"),
}


def runnable(page: str) -> list[Block]:
    """The shell blocks of ``page`` that the tests here run (not all ELSEWHERE)."""
    return [b for b in page_blocks(page, "bash") if not all(c in ELSEWHERE for c in b.commands())]


def test_every_block_is_run_somewhere():
    blocks = all_blocks()
    assert {b.page for b in blocks} >= {"README.md", "docs/service.md", "docs/store.md"}
    for block in blocks:
        where = f"{block.page}:{block.line}"
        assert block.lang in ("", "bash", "python", "json"), f"{where}: a {block.lang} block"
        if block.lang == "bash":
            commands = block.commands()
            elsewhere = [c for c in commands if c in ELSEWHERE]
            # a block runs here whole, or is run elsewhere whole
            assert elsewhere in ([], commands), f"{where}: {elsewhere} beside runnable lines"
            if not elsewhere:
                assert block.page in SHELL_RUN_BY, f"{where}: no test runs this block"
        elif block.lang == "python":
            test_file, test_name = PYTHON_RUN_BY[block.page]
            assert test_name in (REPO / test_file).read_text(), where
        elif block.lang == "json":
            json.loads(block.text)
    for file, text in ELSEWHERE.values():
        assert text in (REPO / file).read_text(), (file, text)
    for page, test_name in SHELL_RUN_BY.items():
        assert runnable(page), f"{page}: {test_name} would run nothing"
        test_file, _, name = test_name.rpartition("::")
        assert f"def {name}(" in (REPO / test_file if test_file else Path(__file__)).read_text()


def test_the_grid_on_the_heads_page_follows_the_grid_rules():
    from models.options import TrainSettings
    from models.training import plans_from_grid

    [block] = page_blocks("docs/heads.md", "json")
    plans = plans_from_grid(json.loads(block.text), defaults=TrainSettings())
    assert {p.name for p in plans} >= {"baseline", "seed2-max_seconds12"}


@pytest.mark.slow
def test_run_docs_serves_the_site():
    """``./run docs``: MkDocs with ``--strict`` (a broken link, anchor, page or API
    reference fails), served; the references generated from this checkout's code."""
    port = free_port()
    proc = subprocess.Popen(
        ["bash", str(REPO / "run"), "docs"],
        cwd=REPO,
        env={**os.environ, "EMI_DOCS_PORT": str(port), "EMI_PYTHON": sys.executable},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    site = f"http://127.0.0.1:{port}/"
    try:
        page = _wait_for(site, proc, seconds=240)
        assert "Emotional Mimicry Intensity" in page.text
        cli = httpx.get(f"{site}reference/cli.html", timeout=30).text
        api = httpx.get(f"{site}reference/featurestore.html", timeout=30).text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert 'id="emi-extract"' in cli and "--part-seconds" in cli  # generated from click
    assert "FeatureStore" in api and "read_clips" in api  # generated from docstrings


# -- running shell blocks ---------------------------------------------------------------


def _wait_for(url: str, proc: subprocess.Popen, *, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(url, timeout=5)
            if answer.status_code == 200:
                return answer
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.3)


def _bash(script: str, cwd: Path, env: dict, where: str, processes: tuple[str, ...]) -> None:
    """bash runs ``script``; its ``emi`` commands run in this process, but those named
    in ``processes`` (``tests/emi_here.py``)."""
    done = run_bash(script, cwd, env, processes=processes)
    assert done.returncode == 0, f"{where}:\n{script}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


@contextlib.contextmanager
def _serving(command: str, cwd: Path, env: dict, where: str):
    """Run an ``emi serve`` line in the background until the body is done, then stop
    it as an operator would (SIGTERM: it must exit 0)."""
    log = cwd / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=out, stderr=out
        )
    try:
        _wait_for(f"http://127.0.0.1:{env['EMI_PORT']}/healthz", proc, seconds=120)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
    assert status == 0, f"{where}: emi serve exited {status}: {log.read_text()[-3000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()


def _run_block(block: Block, cwd: Path, env: dict, processes: tuple[str, ...] = ()):
    """Run a shell block (its ``emi`` commands in this process, but ``processes``); a
    last ``emi serve`` line serves, as a process, while the caller goes on."""
    commands = block.commands()
    where = f"{block.page}:{block.line}"
    if commands[-1].startswith("emi serve"):
        head = block.text[: block.text.rindex("emi serve")]
        if head.strip():
            _bash(head, cwd, env, where, processes)
        return _serving(commands[-1], cwd, env, where)
    _bash(block.text, cwd, env, where, processes)
    return contextlib.nullcontext()


def _environment(**extra) -> dict:
    bin_dir = str(Path(sys.executable).parent)  # emi, dask and python3 of this venv
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **extra}


def _hub_stand_in(tmp_path: Path) -> str:
    """A Hugging Face cache (``HF_HOME``) holding a random tiny backbone under the real
    checkpoint's hub id, so ``--model`` with that id (and a service's default model)
    resolves offline (the tests run with ``HF_HUB_OFFLINE=1``)."""
    home = tmp_path / "hf"
    hub = home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    revision = "0" * 40
    write_random_backbone(hub / "snapshots" / revision, size="tiny")
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(revision)
    return str(home)


def _corpus(folder: Path, clips: int, seed: int) -> dict[str, Path]:
    return write_corpus(folder, clips=clips, seed=seed, min_seconds=1.0, max_seconds=2.0)


@pytest.mark.slow
def test_the_real_checkpoint_tour_runs(tmp_path):
    """The README's tour (the same block as on the getting-started page), with the
    checkpoint's hub id served offline from a Hugging Face cache that holds a random
    backbone under that id."""
    [tour] = runnable("README.md")
    assert [b.text for b in runnable("docs/getting-started.md")] == [tour.text]
    work = tmp_path / "work"
    splits = _corpus(work / "corpus", clips=20, seed=5)
    (work / "data").mkdir()
    shutil.move(work / "corpus" / "audio", work / "data" / "audio")
    for name in ("train", "valid"):
        shutil.copy(splits[name], work / f"{name}_split.csv")
    _corpus(work / "new", clips=3, seed=6)
    shutil.move(work / "new" / "audio", work / "test_audio")
    env = _environment(
        HF_HOME=_hub_stand_in(tmp_path), EMI_PORT=str(free_port()), EMI_CACHE=str(tmp_path / "c")
    )
    with _run_block(tour, work, env, processes=("extract", "score")):  # they read HF_HOME
        heads = httpx.get(f"http://127.0.0.1:{env['EMI_PORT']}/v1/heads", timeout=10).json()
        assert {h["name"] for h in heads["heads"]} == {"compact", "paper"}
    for output in ("clips.csv", "predictions.csv", "test_predictions.csv"):
        assert (work / output).stat().st_size > 0
    assert len((work / "test_predictions.csv").read_text().splitlines()) == 1 + 3
    assert json.loads((work / "heads" / "paper" / "config.json").read_text())["preset"] == "paper"


@pytest.mark.slow
def test_the_service_pages_blocks_run_against_a_real_service(tmp_path):
    """``emi serve`` as the page starts it, over the head registry ``emi demo`` makes,
    then the curl block and the ``emi jobs`` block against it, with the variables the
    page names ($EMI, $TOKEN, $AUDIO)."""
    serve, curl, jobs = runnable("docs/service.md")
    assert serve.commands()[0].startswith("emi serve") and "curl" in curl.text
    work = tmp_path / "work"
    splits = _corpus(tmp_path / "corpus", clips=12, seed=3)
    audio = work / "audio"  # below the source root: the clips and their label files
    shutil.move(tmp_path / "corpus" / "audio", audio)
    for name in ("train", "valid"):
        shutil.move(splits[name], audio)
    # the registry the demo makes (the docs' examples name its default head, compact)
    run_cli("demo", "--out", tmp_path / "demo", "--clips", "20", "--size", "tiny",
            "--epochs", "1")  # fmt: skip
    shutil.copytree(tmp_path / "demo" / "heads", work / "heads")
    token = "a-token-of-the-token-file-0123456789"
    (work / "tokens.txt").write_text(token + "\n")
    for name in ("clip1.wav", "clip2.wav"):
        shutil.copy(sorted(audio.glob("*.wav"))[0], work / name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _environment(
        EMI_PORT=str(port), EMI=url, TOKEN=token, AUDIO=str(audio), EMI_SERVER=url,
        EMI_TOKEN=token, HF_HOME=_hub_stand_in(tmp_path), EMI_CACHE=str(tmp_path / "c"),
    )  # fmt: skip
    with _run_block(serve, work, env):
        _run_block(curl, work, env)
        _run_block(jobs, work, env)
        auth = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{url}/v1/jobs?limit=50", headers=auth, timeout=10).json()["jobs"]
        kinds = sorted(j["kind"] for j in listed)
        assert kinds == ["extract", "score", "score", "score", "train"]
        assert all(j["state"] == "succeeded" for j in listed), listed
        last = max((j for j in listed if j["kind"] == "score"), key=lambda j: j["created_at"])
        fetched = httpx.get(f"{url}/v1/jobs/{last['id']}/predictions.csv", headers=auth).text
        assert (work / "scores.csv").read_bytes().decode() == fetched  # emi jobs fetch wrote it
        heads = httpx.get(f"{url}/v1/heads", headers=auth, timeout=10).json()["heads"]
        assert {h["name"] for h in heads} == {"compact", "mean-linear", "compact-v2"}
    upload_id = (work / "upload-id.txt").read_text().strip()
    assert (work / "state" / "uploads" / upload_id / "files" / "clip2.wav").is_file()


@pytest.mark.slow
def test_the_cluster_pages_blocks_run_on_a_scheduler_and_s3(tmp_path, tiny_backbone):
    """The cluster page's blocks against a real dask scheduler with two worker
    processes and a moto S3 server on loopback, $SHARED a folder both see."""
    extract, train_and_score = runnable("docs/cluster.md")
    shared = tmp_path / "shared"
    _corpus(shared / "audio-corpus", clips=16, seed=8)
    shutil.move(shared / "audio-corpus" / "audio", shared / "audio")
    for name in ("train", "valid"):
        shutil.move(shared / "audio-corpus" / f"{name}_split.csv", shared / "audio")
    _corpus(shared / "new", clips=3, seed=9)
    (shared / "new_audio").mkdir()
    for wav in (shared / "new" / "audio").glob("*.wav"):  # new recordings, new names
        shutil.move(wav, shared / "new_audio" / f"new-{wav.name}")
    shutil.copytree(tiny_backbone, shared / "models" / "emi-ckpt")
    work = tmp_path / "work"
    work.mkdir()
    grid = {
        "defaults": {"epochs": 2},
        "heads": [
            {"name": "ridge", "preset": "mean-linear"},
            {"name": "compact", "preset": "compact"},
        ],
    }
    (work / "sweep.json").write_text(json.dumps(grid))
    with s3_server("emi-features"), dask_cluster(tmp_path / "cluster", [{}, {}]) as (address, _):
        env = _environment(SHARED=str(shared), SCHEDULER=address, EMI_CACHE=str(tmp_path / "c"))
        _run_block(extract, work, env)
        _run_block(train_and_score, work, env)
        from featurestore import FeatureStore

        assert len(FeatureStore.open("s3://emi-features/feats.zarr")) == 16 + 3  # + scored
    assert sorted(p.name for p in (shared / "heads").iterdir() if not p.name.startswith("summ"))[
        :2
    ] == ["compact", "ridge"]
    assert len((work / "scores.csv").read_text().splitlines()) == 1 + 3


def test_a_blocks_emi_lines_run_here_with_the_shells_words_and_status(tmp_path, monkeypatch):
    """The blocks' ``emi`` commands run in this process (``tests/emi_here.py``) with the
    words bash made of them, their output and exit status handed back to bash; those
    named as processes run the ``emi`` program (here a stand-in that fails silently)."""
    import tests.emi_here

    monkeypatch.setattr(tests.emi_here, "EMI", Path("/bin/false"))
    script = 'PLACE="$WHERE/no such.zarr"; emi store info "$PLACE" || echo "status $?"'
    env = _environment(WHERE=str(tmp_path))
    here = run_bash(script, tmp_path, env)
    assert here.returncode == 0 and here.stdout == "status 2\n", here
    assert f"{tmp_path}/no such.zarr: no feature store there" in here.stderr
    apart = run_bash(script, tmp_path, env, processes=("store",))
    assert apart.stdout == "status 1\n" and apart.stderr == "", apart
    assert run_bash("emi store info nowhere.zarr", tmp_path, env).returncode == 2  # set -e


@pytest.mark.parametrize("page", sorted(SHELL_RUN_BY))
def test_pages_with_shell_blocks_name_their_variables(page):
    """A block that uses a variable ($AUDIO, $SHARED, ...) sits on a page that says what
    it is."""
    import re

    text = (REPO / page).read_text()
    for block in runnable(page):
        for name in set(re.findall(r"\$\{?([A-Z][A-Z_]+)", block.text)):
            assert f"${name}" in text.replace(block.text, ""), (page, name)
