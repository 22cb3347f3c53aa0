"""Import pymilvus safely.

pymilvus parses the ``MILVUS_URI`` environment variable when it is *imported* (its ``Connections``
singleton), and raises ``ConnectionConfigException`` when the value is not ``http[s]://host[:port]``.
LightRAG's own Milvus storage asks users to set ``MILVUS_URI``, often to a Milvus Lite file such as
``./milvus.db``, which would break ``import pymilvus`` for every later user in the process. This module hides
such a value from pymilvus for the duration of the import (the variable is restored right after), so a
file path in ``MILVUS_URI`` never breaks this package. Our classes take the URI as an argument and never read
the variable themselves.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

from rag_plugins.optional import require

_lock = threading.Lock()


def _uri_pymilvus_accepts(uri: str) -> bool:
    # Only the URL form is surely accepted; hiding anything else is harmless, since the parsed value only
    # seeds pymilvus' legacy ORM default connection, which MilvusClient does not use.
    return uri.startswith(("http://", "https://"))


def import_pymilvus() -> ModuleType:
    """``import pymilvus``, tolerating a Milvus Lite file path in ``MILVUS_URI``.

    Raises:
        MissingExtraError: pymilvus is not installed (names ``rag-plugins[milvus]``).
    """
    with _lock:
        uri = os.environ.get("MILVUS_URI")
        hide = uri is not None and not _uri_pymilvus_accepts(uri)
        if hide:
            del os.environ["MILVUS_URI"]
        try:
            return require("pymilvus", "milvus")
        finally:
            if hide and uri is not None:
                os.environ["MILVUS_URI"] = uri


def milvus_lite_major() -> int:
    """Major version of the installed milvus-lite (0 when it is not installed or unreadable)."""
    from importlib import metadata

    try:
        return int(metadata.version("milvus-lite").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 0
