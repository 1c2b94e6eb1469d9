"""The README's "Python API" section, executed as written; and each public name
importable from its package."""

import re
from pathlib import Path

import featurestore
import models

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_python_api_section_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks("Python API")
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "work" / "predictions.csv").is_file()
    assert namespace["head"].folder == Path("work/heads/compact")


def test_every_exported_name_resolves():
    for package in (featurestore, models):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
