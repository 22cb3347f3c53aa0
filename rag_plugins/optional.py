"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from rag_plugins.errors import MissingExtraError


def require(module: str, extra: str, install: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``rag-plugins[extra]``.

    Args:
        module: Module to import.
        extra: The rag-plugins extra that provides it.
        install: The install command to show instead, for packages an extra cannot carry.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, install) from exc


def lazy_attributes(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) that imports each of ``names`` from its module on first use.

    Args:
        module: The package's ``__name__`` (for the error message).
        names: Attribute name -> module that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

