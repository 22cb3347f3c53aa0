"""Old import path of the node/row conversions, now in :mod:`rag_plugins.llamaindex.milvus_nodes`."""

from __future__ import annotations

from rag_plugins.llamaindex.milvus_nodes import item_from_node, node_from_hit

__all__ = ["item_from_node", "node_from_hit"]
