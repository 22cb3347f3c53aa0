"""The server-kind registry: one row per ``rag-serve`` kind.

A row names the kind's engine class and its routers as ``"module:attribute"`` strings, imported only when a
server of that kind starts (so ``rag-serve --help``, the settings and the stack supervisor never import
torch), the settings (CLI flags) the kind reads beyond the ones every kind reads, and per-kind defaults.
Adding a kind means adding one row to :data:`KINDS` (plus its engine and routes modules).

This module imports nothing from the rest of ``servers`` so the settings can import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Settings every kind reads: the model and its placement, the HTTP front (auth, body cap), the scheduler,
#: the tokenizer threads, warm-up and logging.
COMMON_SETTINGS: frozenset[str] = frozenset({
    "model", "served_model_name", "device", "dtype", "attention", "host", "port", "api_keys", "max_length",
    "max_batch_tokens", "max_batch_size", "max_wait_ms", "max_queue_items", "max_client_batch", "max_body_bytes",
    "bulk_workers", "priority_max_items", "priority_max_tokens", "tokenizer_threads", "retry_after_s",
    "instruction", "log_level", "warmup", "drain_grace_s", "gc_freeze", "cuda_graphs", "compile", "cuda_graph_max_batch",
    "cuda_graph_max_length", "compile_cache_dir", "compiled_graph_buckets",
})
#: Settings of servers that take images (sources, checks, the model's pixel range).
IMAGE_SETTINGS: frozenset[str] = frozenset({
    "image_root", "allow_url_images", "max_image_bytes", "max_image_pixels", "url_timeout_s", "min_pixels",
    "max_pixels", "vision_positions",
})

#: Settings of the search server: no model of its own, the HTTP front, and where its collection and
#: upstream model servers are.
SEARCH_SETTINGS: frozenset[str] = frozenset({
    "served_model_name", "host", "port", "api_keys", "max_body_bytes", "log_level", "drain_grace_s", "gc_freeze",
    "milvus_uri", "collection", "embed_url", "mm_embed_url", "rerank_url", "upstream_api_key",
})


@dataclass(frozen=True)
class ServerKindSpec:
    """One server kind.

    Attributes:
        name: The kind as typed after ``rag-serve`` and in stack files.
        summary: One line for ``rag-serve --help``.
        engine: ``"module:Class"`` of the engine; the class has ``from_settings(settings, metrics)``.
        routers: ``"module:attribute"`` of each FastAPI router the kind serves (besides the common routes).
        settings: Settings fields (CLI flags) this kind reads; any other flag is refused for it.
        defaults: Per-kind defaults that replace the dataclass defaults of :class:`ServerSettings`.
    """

    name: str
    summary: str
    engine: str
    routers: tuple[str, ...]
    settings: frozenset[str]
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def engine_class(self) -> Any:
        """Import and return the engine class (imports torch)."""
        return _load(self.engine)

    def router_objects(self) -> list[Any]:
        """Import and return the kind's routers (torch-free)."""
        return [_load(ref) for ref in self.routers]


def _load(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


KINDS: Mapping[str, ServerKindSpec] = MappingProxyType({
    spec.name: spec
    for spec in (
        ServerKindSpec(
            name="embed",
            summary="serve one text embedding model (/embed, /v1/embeddings)",
            engine="servers.engines.embedding:EmbeddingEngine",
            routers=("servers.routes.embedding:text_router", "servers.routes.embedding:router"),
            settings=COMMON_SETTINGS | {"last_token_padding", "bulk_packing"},
        ),
        ServerKindSpec(
            name="rerank",
            summary="serve one reranker (/rerank, /v1/rerank, /v2/rerank, /score); images need a multimodal one",
            engine="servers.engines.rerank:RerankEngine",
            routers=("servers.routes.rerank:router",),
            settings=COMMON_SETTINGS | IMAGE_SETTINGS | {"prompt_template", "bulk_packing"},
            # A query-document pair with the yes/no prompt is ~100-500 tokens, and rerank requests are mostly
            # bulk (a query and its candidates): no query-sized compiled graph would be used.
            defaults=MappingProxyType({"compiled_graph_buckets": ("off",)}),
        ),
        ServerKindSpec(
            name="mm-embed",
            summary="serve one multimodal embedding model (/embed_image, /embed, /v1/embeddings)",
            engine="servers.engines.multimodal:MultiModalEmbeddingEngine",
            routers=("servers.routes.embedding:text_router", "servers.routes.multimodal:router"),
            settings=COMMON_SETTINGS | IMAGE_SETTINGS,
        ),
        ServerKindSpec(
            name="search",
            summary="serve hybrid search over a Milvus collection (/search) through the embed/mm-embed/rerank servers",
            engine="servers.engines.search:SearchEngine",
            routers=("servers.routes.search:router",),
            settings=SEARCH_SETTINGS,
        ),
    )
})

SERVER_KINDS: tuple[str, ...] = tuple(KINDS)


def kind_spec(kind: str) -> ServerKindSpec:
    """The registry row of ``kind``.

    Raises:
        ValueError: ``kind`` is not a known server kind.
    """
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; use one of: {', '.join(SERVER_KINDS)}") from None
