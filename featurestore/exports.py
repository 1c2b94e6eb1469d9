"""A package's public names imported on first use (PEP 562), so importing the package
stays light: ``__getattr__, __dir__, __all__ = lazy_exports(__name__, {...})``."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of ``package`` exporting each
    name of ``exports`` from the module it maps to."""
    names = sorted(exports)

    def __getattr__(name: str):  # noqa: N807 (the module attribute's own name)
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807
        return names

    return __getattr__, __dir__, names
