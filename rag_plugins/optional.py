"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

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
