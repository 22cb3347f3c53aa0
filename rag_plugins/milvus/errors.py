"""Errors of the Milvus store and hybrid retriever; each message names the fix."""

from __future__ import annotations

from rag_plugins.errors import RagPluginsError


class MilvusStoreError(RagPluginsError):
    """Base of the errors raised by :mod:`rag_plugins.milvus`."""


class DimensionMismatchError(MilvusStoreError, ValueError):
    """A vector field's dimension differs from what the embedder (or the existing collection) has."""


class CollectionNotFoundError(MilvusStoreError, LookupError):
    """The collection does not exist where it was looked for."""


class FusionConfigError(MilvusStoreError, ValueError):
    """Unknown fusion name, weights that do not sum to 1, or an invalid RRF ``k``."""
