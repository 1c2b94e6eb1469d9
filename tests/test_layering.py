"""The code's layering, as the maintainers' page describes it: the store depends on
nothing of the extractor, ``models`` reads stores only, no import cycle (lazy imports
inside functions count), the root index is taken apart in one module, and the store's
modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "models", "service", "cli", "manifests")
INDEX_MODULE = REPO / "featurestore" / "store" / "index.py"
# Keys that only the root index and the part markers have.
ROOT_KEYS = {
    "default_set", "sets", "parts_path", "index_digest", "clip_frames", "clip_digests",
    "metadata_digests", "written_at", "written_by", "emi", "emi_part",
}  # fmt: skip
EXTRACTOR = (
    "featurestore.backbone", "featurestore.encode", "featurestore.audio",
    "featurestore.part_task", "featurestore.extraction", "featurestore.random_backbone",
    "featurestore.pipeline",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (inside functions and
    ``TYPE_CHECKING`` blocks too); ``from a import b`` counts as ``a.b`` where that is
    a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_store_imports_nothing_of_the_extractor():
    store_modules = [p for n, p in MODULES.items() if _within(n, ("featurestore.store",))]
    store_modules += [REPO / "featurestore" / "spec.py", REPO / "featurestore" / "frames.py"]
    assert len(store_modules) >= 9
    found = [
        f"{p.relative_to(REPO)}: {n}"
        for p in store_modules
        for n in imports_of(p)
        if _within(n, EXTRACTOR)
    ]
    assert found == []


def test_importing_the_store_loads_no_backbone_code():
    """Transitively too: reading a store never imports torch, transformers or the
    extractor's modules (a reader of features needs none of them)."""
    probe = (
        "import sys, featurestore.store, featurestore.report\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "featurestore.store.reader" in loaded  # the probe did import the store
    heavy = [m for m in loaded if _within(m, (*EXTRACTOR, "torch", "transformers"))]
    assert heavy == []


def test_models_reads_stores_only():
    """``models`` never imports what extracts (audio, backbones, the extractor, nor
    transformers: training reads only the store) nor the service above it: composing
    extraction with heads is ``service``'s job."""
    forbidden = (*EXTRACTOR, "manifests.build", "service", "transformers")
    found = [
        f"{p.relative_to(REPO)}: {n}"
        for name, p in MODULES.items()
        if _within(name, ("models",))
        for n in imports_of(p)
        if _within(n, forbidden)
    ]
    assert found == []


def test_no_import_cycle_between_the_projects_modules():
    graph = {
        name: {m for m in imports_of(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    assert "models.cluster_training" in graph["models.trainer"]  # the graph sees imports
    cycles, done = [], set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append(" -> ".join(trail[trail.index(name) :] + [name]))
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def _root_key_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            key = node.args[0].value
        if key in ROOT_KEYS:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: [{key!r}]")
    return found


def test_only_the_index_module_reads_the_roots_keys():
    assert _root_key_reads(INDEX_MODULE)  # the check sees the keys where they are read
    paths = [p for p in MODULES.values() if p != INDEX_MODULE]
    paths += sorted((REPO / "bench").glob("*.py"))
    assert [hit for p in paths for hit in _root_key_reads(p)] == []


def test_the_stores_modules_are_small():
    sizes = {
        p.name: len(p.read_text().splitlines())
        for p in (REPO / "featurestore" / "store").glob("*.py")
    }
    assert sizes and max(sizes.values()) <= 400, sizes


def test_no_function_body_is_over_80_lines():
    """Every function of the project (code, benchmarks, tests) reads on one screen or
    two: its body (without the docstring) is at most 80 lines."""
    too_long = []
    for path in sorted(REPO.rglob("*.py")):
        if {".venv", "site", ".git"} & set(path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:] or body
            lines = body[-1].end_lineno - body[0].lineno + 1
            if lines > 80:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert too_long == []
