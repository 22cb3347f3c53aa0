"""``LocalRerank``: a LlamaIndex node postprocessor backed by a rag-serve (or Cohere-compatible) rerank server."""

from __future__ import annotations

from typing import Any

from llama_index.core import instrumentation
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from rag_plugins.rerank_client import (
    DEFAULT_RERANK_BASE_URL,
    Document,
    RerankApiStyle,
    RerankClient,
    RerankHit,
)

dispatcher = instrumentation.get_dispatcher(__name__)


def node_document(node: BaseNode, api_style: RerankApiStyle) -> Document:
    """What is sent for one node: its text with metadata as embedded, or text + image for an ``ImageNode``."""
    text = node.get_content(metadata_mode=MetadataMode.EMBED)
    if api_style == "native" and isinstance(node, ImageNode):
        image: Any = None
        if node.image:
            image = node.image
        elif node.image_path:
            image = {"path": str(node.image_path)}
        elif node.image_url:
            image = {"url": str(node.image_url)}
        if image is not None:
            return {"text": text, "image": image} if text and text.strip() else {"image": image}
    return str(text)


def query_document(query_bundle: QueryBundle, api_style: RerankApiStyle) -> Document:
    """What is sent as the query: its text, plus its image (``QueryBundle.image_path``) in the native style."""
    image_path = query_bundle.image_path
    if api_style == "native" and image_path:
        text = query_bundle.query_str
        image = {"path": str(image_path)}
        return {"text": text, "image": image} if text and text.strip() else {"image": image}
    return str(query_bundle.query_str)


class LocalRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a local reranker server (Qwen3-Reranker, cross-encoders, ...).

    ``api_style="native"`` talks to rag-serve's ``/rerank`` (the server applies the model's prompt
    template and default instruction); ``"cohere"`` talks to any ``/v1/rerank`` server. Results are mapped
    back to nodes by ``index``; node scores become the reranker's scores.

    Example:
        >>> engine = index.as_query_engine(
        ...     similarity_top_k=20, node_postprocessors=[LocalRerank(base_url="http://127.0.0.1:8002", top_n=5)]
        ... )
    """

    base_url: str = Field(default=DEFAULT_RERANK_BASE_URL, description="Rerank server root (or OpenAI-style /v1).")
    model: str | None = Field(default=None, description="Model name sent to Cohere-style servers; shown in events.")
    api_key: str | None = Field(default=None, description="Bearer token, if the server wants one.")
    top_n: int | None = Field(default=5, description="Nodes to keep, best first (None: all, reordered).")
    instruction: str | None = Field(
        default=None, description="Task instruction for instruction-aware rerankers (None: server default)."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Store each node's retrieval score in node.metadata['retrieval_score']."
    )
    api_style: RerankApiStyle = Field(default="native", description="'native' (/rerank) or 'cohere' (/v1/rerank).")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, description="Seconds per HTTP attempt.")
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, description="Retries on 429/503/connection errors.")

    _client: RerankClient = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if self.top_n is not None and self.top_n < 0:
            raise ValueError("top_n must be >= 0")
        self._client = RerankClient(
            base_url=self.base_url, api_style=self.api_style, model=self.model, api_key=self.api_key,
            instruction=self.instruction, timeout_s=self.timeout, max_retries=self.max_retries,
        )

    @classmethod
    def class_name(cls) -> str:
        return "LocalRerank"

    @property
    def client(self) -> RerankClient:
        """The framework-free client behind this class."""
        return self._client

    # ----------------------------------------------------------------------------------------- helpers
    def _start(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[Document, list[Document]] | None:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=self.model or "rag-serve",
            )
        )
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not nodes:
            return None
        return query_document(query_bundle, self.api_style), [node_document(n.node, self.api_style) for n in nodes]

    def _apply(self, nodes: list[NodeWithScore], hits: list[RerankHit]) -> list[NodeWithScore]:
        reranked = []
        for hit in hits:
            original = nodes[hit.index]
            if self.keep_retrieval_score:
                original.node.metadata["retrieval_score"] = original.score
            reranked.append(NodeWithScore(node=original.node, score=hit.score))
        return reranked

    def _event_payload(self, nodes: list[NodeWithScore], query: Document) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model or "rag-serve",
            EventPayload.QUERY_STR: query if isinstance(query, str) else query.get("text", ""),
            EventPayload.TOP_K: self.top_n,
        }

    # ------------------------------------------------------------------------------------------ LlamaIndex
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        started = self._start(nodes, query_bundle)
        if started is None:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        query, documents = started
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._event_payload(nodes, query)) as event:
            new_nodes = self._apply(nodes, self._client.rerank(query, documents, self.top_n))
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        started = self._start(nodes, query_bundle)
        if started is None:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        query, documents = started
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._event_payload(nodes, query)) as event:
            new_nodes = self._apply(nodes, await self._client.arerank(query, documents, self.top_n))
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes
