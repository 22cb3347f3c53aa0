"""Embedding routes: ``POST /embed`` (native shape) and ``POST /v1/embeddings`` (OpenAI shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import EmbedRequest, OpenAIEmbeddingRequest
from servers.responses import FastJSONResponse, native_embedding_response, openai_embedding_response
from servers.routes.context import engine_of, unless_disconnected

#: ``/embed``: served by text and multimodal embedding servers alike (texts into the model's space).
text_router = APIRouter()
#: ``/v1/embeddings`` with string or token-array input (text embedding servers).
router = APIRouter()


@text_router.post("/embed")
async def embed(body: EmbedRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
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


@router.post("/v1/embeddings")
async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    items = body.items()
    if isinstance(items[0], str):
        work = engine.embed(items, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions)
    else:
        work = engine.embed_token_ids(items, dimensions=body.dimensions)
    result = await unless_disconnected(request, work)
    return openai_embedding_response(result, engine.settings.model_name, body.encoding_format)
