"""Embedding routes: ``POST /embed`` (native shape) and ``POST /v1/embeddings`` (OpenAI shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import EmbedRequest, OpenAIEmbeddingRequest
from servers.responses import FastJSONResponse, encode_vectors
from servers.routes.context import engine_of, unless_disconnected

router = APIRouter()


@router.post("/embed")
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
    return FastJSONResponse(
        {
            "embeddings": encode_vectors(result.vectors, body.encoding_format),
            "dim": result.dim,
            "model": engine.settings.model_name,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )


@router.post("/v1/embeddings")
async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    items = body.items()
    if isinstance(items[0], str):
        work = engine.embed(items, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions)
    else:
        work = engine.embed_token_ids(items, dimensions=body.dimensions)
    result = await unless_disconnected(request, work)
    encoded = encode_vectors(result.vectors, body.encoding_format)
    return FastJSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)],
            "model": engine.settings.model_name,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )
