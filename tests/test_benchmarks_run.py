"""The benchmarks still run (at toy sizes): their figures go on the Benchmarks page, and a
benchmark that stopped working would go unnoticed until someone needs its numbers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _bench_here(monkeypatch, capsys, script: str, *args: str) -> str:
    """A benchmark whose ``main()`` leaves no state behind (no threads pinned, no
    environment changed) run in this process, saving a process start and its torch
    import; its output."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *args])  # offline: conftest sets it
    capsys.readouterr()
    module.main()
    return capsys.readouterr().out


def test_store_checks_bench_runs(monkeypatch, capsys):
    out = _bench_here(monkeypatch, capsys, "bench/store_checks.py", "--clips", "6",
                      "--hidden", "32", "--repeats", "1")  # fmt: skip
    assert "checked / unchecked time" in out and "emi store verify" in out


def test_root_index_bench_runs(monkeypatch, capsys):
    out = _bench_here(monkeypatch, capsys, "bench/root_index.py", "--parts", "3",
                      "--clips", "4", "--repeats", "1")  # fmt: skip
    assert "index/parse" in out and out.splitlines()[1].split()[:2] == ["3", "12"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="pins cores (Linux)")
def test_device_feed_bench_runs_against_this_tree():
    out = _bench(
        "bench/device_feed.py", "--minutes", "0.15", "--cores", "1", "--repeats", "1",
        "--ratios", "0.7",
    )  # fmt: skip
    assert "CPU-side ceiling" in out and "device busy" in out


@pytest.mark.slow
def test_extract_throughput_bench_runs():
    out = _bench(
        "bench/extract_throughput.py",
        "--minutes", "0.05", "--sizes", "tiny", "--repeats", "1", "--skip-memory",
    )  # fmt: skip
    assert "emi library / pure forward time" in out


@pytest.mark.slow
def test_storage_bench_runs(monkeypatch, capsys):
    out = _bench_here(monkeypatch, capsys, "bench/storage.py", "--seconds", "10", "--size", "tiny")
    assert "kB/audio s" in out and "--layers all (3 layers)" in out


@pytest.mark.slow
def test_heads_quality_bench_runs(tmp_path, monkeypatch, capsys):
    out = _bench_here(
        monkeypatch, capsys,
        "bench/heads_quality.py", "--work", str(tmp_path), "--clips", "28", "--size", "tiny",
        "--presets", "compact,mean-linear", "--layers", "last,weighted", "--standardize", "on",
        "--epochs", "3",
    )  # fmt: skip
    assert "ridge anchor, layer last" in out and "compact-weighted-stdon-e3" in out
    assert "weighted vs the best single layer" in out and "compact (the default) vs ridge" in out


@pytest.mark.slow
def test_heads_quality_bench_leaves_a_folder_it_did_not_make(tmp_path, monkeypatch, capsys):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "mine.wav").write_bytes(b"a user's recording")
    with pytest.raises(SystemExit) as refused:
        _bench_here(monkeypatch, capsys, "bench/heads_quality.py", "--work", str(tmp_path),
                    "--size", "tiny")  # fmt: skip
    assert "not made by this benchmark" in str(refused.value.code)
    assert (tmp_path / "audio" / "mine.wav").read_bytes() == b"a user's recording"


@pytest.mark.slow
def test_service_bench_runs(tmp_path, monkeypatch, capsys):
    work = tmp_path / "bench"
    out = _bench_here(
        monkeypatch, capsys,
        "bench/service_throughput.py", "--work", str(work), "--clients", "2",
        "--jobs-per-client", "1", "--repeats", "1",
    )  # fmt: skip
    assert "jobs/min" in out and "p99" in out and "emi score as a fresh process" in out
    (tmp_path / "theirs").mkdir()
    with pytest.raises(SystemExit) as refused:
        _bench_here(monkeypatch, capsys, "bench/service_throughput.py",
                    "--work", str(tmp_path / "theirs"))  # fmt: skip
    assert "not made by this benchmark" in str(refused.value.code)


@pytest.mark.slow
def test_cancel_bench_runs(tmp_path, monkeypatch, capsys):
    out = _bench_here(
        monkeypatch, capsys,
        "bench/service_cancel.py", "--work", str(tmp_path / "bench"), "--size", "tiny",
        "--clips", "16", "--cancels", "1", "--after", "0.1",
    )  # fmt: skip
    assert "a whole score job of 16 clips" in out
    assert "cancel -> cancelled over 1 cancels" in out or "ended before their cancel" in out
