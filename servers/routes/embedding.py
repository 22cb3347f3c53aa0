"""Embedding routes: ``POST /embed`` (native shape) and ``POST /v1/embeddings`` (OpenAI shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import EmbedRequest, EmbedResponse, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from servers.responses import (
    MODEL_ROUTE_ERRORS,
    FastJSONResponse,
    documented,
    native_embedding_response,
    openai_embedding_response,
)
from servers.routes.context import text_embedder, token_embedder, unless_disconnected

#: ``/embed``: served by text and multimodal embedding servers alike (texts into the model's space).
text_router = APIRouter()
#: ``/v1/embeddings`` with string or token-array input (text embedding servers).
router = APIRouter()


@text_router.post("/embed", responses=documented(EmbedResponse, MODEL_ROUTE_ERRORS, "One vector per text."))
async def embed(body: EmbedRequest, request: Request) -> FastJSONResponse:
    """Embed texts as queries (with the task instruction) or documents."""
    engine = text_embedder(request)
    result = await unless_disconnected(
        request,
        engine.embed(
            body.texts,
            input_type=body.input_type,
            instruction=body.instruction,
            dimensions=body.dimensions,
            normalize=body.normalize,
            truncate=body.truncate,
        ),
    )
    return native_embedding_response(result, engine.settings.model_name, body.encoding_format)


@router.post(
    "/v1/embeddings", responses=documented(OpenAIEmbeddingResponse, MODEL_ROUTE_ERRORS, "One vector per input.")
)
async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> FastJSONResponse:
    """OpenAI-compatible embeddings of texts or token-id arrays."""
    engine = token_embedder(request)
    items = body.items()
    if isinstance(items[0], str):
        texts = [str(t) for t in items]
        work = engine.embed(texts, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions)
    else:
        work = engine.embed_token_ids([list(t) for t in items if isinstance(t, list)], dimensions=body.dimensions)
    result = await unless_disconnected(request, work)
    return openai_embedding_response(result, engine.settings.model_name, body.encoding_format)
