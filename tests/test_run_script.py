"""`./run`: the README's two commands set up what is missing, once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("run", "pyproject.toml", "constraints-cpu.txt"):
        shutil.copy2(REPO / name, project / name)
    return project


def _run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(project / "run"), *args],
        env={**os.environ, "EMI_PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_up_to_date_environment_is_reused_and_a_changed_project_reinstalls(tmp_path):
    project = _project(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    env = {"EMI_VENV": str(venv), "EMI_TORCH_BUILD": "cpu"}

    fresh = _run(project, "env", "--dry-run", **env)
    assert fresh.returncode == 0 and "would install" in fresh.stderr  # no stamp yet

    (venv / ".emi-stamp").write_text(_run(project, "stamp", **env).stdout)
    again = _run(project, "env", "--dry-run", **env)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr

    other_build = _run(project, "env", "--dry-run", EMI_VENV=str(venv), EMI_TORCH_BUILD="cuda")
    assert "would install" in other_build.stderr  # another torch build is another env

    with (project / "pyproject.toml").open("a") as f:
        f.write("\n# a new requirement\n")
    changed = _run(project, "env", "--dry-run", **env)
    assert "would install" in changed.stderr


def test_unknown_verbs_print_the_usage(tmp_path):
    result = _run(_project(tmp_path), "frobnicate")
    assert (
        result.returncode == 2 and "./run demo" in result.stderr and "./run test" in result.stderr
    )


def test_set_up_says_what_it_installs_without_pips_banners(tmp_path):
    project = _project(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"  # stands in for the venv's python -m pip
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo "Collecting torch==2.13.0"\n'
        'echo "  BuildBackendWarning: Editable installation." >&2\n'
        'echo "  ********************************************" >&2\n'
        'echo "Collecting zarr>=3.1"\n'
        'echo "Successfully installed emi-0.1.0 torch-2.13.0 zarr-3.1.0"\n'
    )
    fake.chmod(0o755)
    done = _run(project, "env", EMI_VENV=str(venv), EMI_TORCH_BUILD="cpu")
    assert done.returncode == 0, done.stderr
    assert "fetching torch==2.13.0" in done.stderr and "installed 3 packages" in done.stderr
    assert "BuildBackendWarning" not in done.stderr and "*****" not in done.stderr
    fake.write_text('#!/usr/bin/env bash\necho "ERROR: no matching distribution"\nexit 1\n')
    (venv / ".emi-stamp").unlink()
    failed = _run(project, "env", EMI_VENV=str(venv), EMI_TORCH_BUILD="cpu")
    assert failed.returncode == 1 and "no matching distribution" in failed.stderr


def test_docs_on_a_taken_port_is_one_line_and_builds_nothing(tmp_path):
    import socket

    project = _project(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    env = {"EMI_VENV": str(venv), "EMI_TORCH_BUILD": "cpu"}
    (venv / ".emi-stamp").write_text(_run(project, "stamp", **env).stdout)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = _run(project, "docs", EMI_DOCS_PORT=port, **env)
    assert result.returncode == 2, result.stderr
    assert f"port {port} is taken" in result.stderr and "EMI_DOCS_PORT" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 2
    assert not (project / "site").exists()  # nothing built


def test_run_serve_serves_a_demo_folder_and_prints_its_command_and_address(tmp_path):
    import httpx

    from featurestore.random_backbone import write_random_backbone
    from tests.served import free_port

    project = _project(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # this environment's Python, its packages included
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {"EMI_VENV": str(venv), "EMI_TORCH_BUILD": "cpu"}
    (venv / ".emi-stamp").write_text(_run(project, "stamp", **env).stdout)
    demo = tmp_path / "my demo"  # a folder name with a space: one argument throughout
    write_random_backbone(demo / "backbone-tiny", size="tiny")
    shutil.copytree(REPO / "tests/data/heads_c95217d/mean-linear-last", demo / "heads/ml")
    (demo / ".emi-demo").write_text('{"settings": {"size": "tiny"}}')
    port = free_port()
    process = subprocess.Popen(
        ["bash", str(project / "run"), "serve", "my demo"],
        cwd=tmp_path,
        env={**os.environ, "EMI_PYTHON": sys.executable, "EMI_PORT": str(port), **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stderr.readline() for _ in range(3)]
        assert "emi serve --stores 'my demo' --heads 'my demo/heads'" in lines[1], lines
        assert f"the page is at http://127.0.0.1:{port}/" in lines[2], lines
        heads = httpx.get(f"http://127.0.0.1:{port}/v1/heads", timeout=30).json()["heads"]
        assert [h["name"] for h in heads] == ["ml"]
        assert "<main" in httpx.get(f"http://127.0.0.1:{port}/", timeout=30).text
    finally:
        process.terminate()
        status = process.wait(60)
    assert status == 0, process.stderr.read()
    assert (demo / "service-state").is_dir()
