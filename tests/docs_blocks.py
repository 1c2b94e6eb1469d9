"""The fenced code blocks of the docs site (``docs/``) and the README, for the tests
that run them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = (*sorted(DOCS.rglob("*.md")), REPO / "README.md")
_FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    flags=re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    """One fenced block: its page (relative to the repository), first line, language
    (``""`` for an unlabelled block: a listing or output, not code) and text."""

    page: str
    line: int
    lang: str
    text: str

    def commands(self) -> list[str]:
        """A shell block's command lines: continuations joined, comment-only and blank
        lines left out, trailing comments kept."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [
            line.strip()
            for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(
            page=str(page.relative_to(REPO)),
            line=text.count("\n", 0, m.start()) + 1,
            lang=m.group("lang"),
            text=_dedent(m.group("body"), len(m.group("indent"))),
        )
        for m in _FENCE.finditer(text)
    ]


def _dedent(body: str, indent: int) -> str:
    lines = body.splitlines(True)
    return "".join(line[indent:] if line[:indent].isspace() else line for line in lines)


def page_blocks(page: str, lang: str | None = None) -> list[Block]:
    """The blocks of ``page`` (``"docs/store.md"``, ``"README.md"``), of one language."""
    return [b for b in code_blocks(REPO / page) if lang is None or b.lang == lang]


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in code_blocks(page)]
