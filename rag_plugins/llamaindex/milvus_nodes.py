"""Conversions between LlamaIndex nodes and store rows."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, ImageNode, NodeRelationship, RelatedNodeInfo, TextNode

from rag_plugins.milvus.items import StoreItem

if TYPE_CHECKING:  # the store imports this module (add_nodes); a runtime import back would close a circle
    from rag_plugins.milvus.store import Hit

#: Metadata keys copied into scalar fields rather than into ``meta``.
_SCALAR_KEYS = ("doc_id", "chunk_id", "modality", "uri", "page", "caption")
#: Bookkeeping keys kept out of what embedders, rerankers and the LLM see (the caption stays visible).
_HIDDEN_KEYS = ["doc_id", "chunk_id", "modality", "uri", "page"]


def item_from_node(node: BaseNode) -> StoreItem:
    """A ``StoreItem`` from a ``TextNode`` / ``ImageNode``; the key is the node id (stable re-ingestion
    needs stable node ids, e.g. ``IngestionPipeline`` with a docstore, or ids set from the source)."""
    metadata = dict(node.metadata or {})
    image: Any = None
    if isinstance(node, ImageNode):
        image = node.image_path or node.image_url or (base64.b64decode(node.image) if node.image else None)
    raw_page: Any = metadata.get("page", metadata.get("page_label", -1))
    try:
        page = int(raw_page)
    except (TypeError, ValueError):
        page = -1
    return StoreItem(
        text=node.get_content() or "",
        image=image,
        doc_id=str(metadata.get("doc_id") or node.ref_doc_id or ""),
        chunk_id=str(metadata.get("chunk_id") or node.node_id),
        modality=str(metadata.get("modality") or ("image" if image is not None else "text")),
        uri=str(metadata.get("uri") or ""),
        page=page,
        caption=str(metadata.get("caption") or ""),
        meta={k: v for k, v in metadata.items() if k not in _SCALAR_KEYS and k != "page_label"},
        id=node.node_id,
    )


def node_from_hit(hit: Hit) -> TextNode:
    """A ``TextNode``, or an ``ImageNode`` (``image_path`` for files, ``image_url`` for URLs), from a hit."""
    f = hit.fields
    meta = f.get("meta") or {}
    metadata: dict[str, Any] = {**meta, "doc_id": f.get("doc_id", ""), "chunk_id": f.get("chunk_id", ""),
                                "modality": f.get("modality", ""), "uri": f.get("uri", ""),
                                "page": f.get("page", -1)}
    if f.get("caption"):
        metadata["caption"] = f["caption"]
    relationships = {}
    if f.get("doc_id"):
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(f["doc_id"]))
    text = f.get("text") or f.get("caption") or ""
    uri = str(f.get("uri") or "")
    if f.get("modality") == "image" or (uri and f.get("has_image_vec") and not f.get("text")):
        kwargs: dict[str, Any] = {}
        if uri.startswith(("http://", "https://")):
            kwargs["image_url"] = uri
        elif uri:
            kwargs["image_path"] = uri
        return ImageNode(id_=hit.id, text=text, metadata=metadata, relationships=relationships,
                         excluded_embed_metadata_keys=list(_HIDDEN_KEYS),
                         excluded_llm_metadata_keys=list(_HIDDEN_KEYS), **kwargs)
    return TextNode(id_=hit.id, text=text, metadata=metadata, relationships=relationships,
                    excluded_embed_metadata_keys=list(_HIDDEN_KEYS), excluded_llm_metadata_keys=list(_HIDDEN_KEYS))
