"""Multimodal embedding routes: ``/embed_image``, ``/embed`` (texts into the image space), ``/v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import EmbedImageRequest, EmbedRequest, EncodingFormat, MultiModalEmbeddingRequest
from servers.engines.embedding import EmbeddingResult
from servers.engines.multimodal import MultiModalInput
from servers.responses import FastJSONResponse, encode_vectors
from servers.routes.context import engine_of, unless_disconnected

router = APIRouter()


def _native(result: EmbeddingResult, model: str, encoding_format: EncodingFormat) -> FastJSONResponse:
    return FastJSONResponse(
        {
            "embeddings": encode_vectors(result.vectors, encoding_format),
            "dim": result.dim,
            "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )


@router.post("/embed_image")
async def embed_image(body: EmbedImageRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    result = await unless_disconnected(
        request,
        engine.embed_images(
            body.images, body.texts, input_type=body.input_type, instruction=body.instruction,
            dimensions=body.dimensions, normalize=body.normalize,
        ),
    )
    return _native(result, engine.settings.model_name, body.encoding_format)


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    result = await unless_disconnected(
        request,
        engine.embed(
            body.texts, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions,
            normalize=body.normalize, truncate=body.truncate,
        ),
    )
    return _native(result, engine.settings.model_name, body.encoding_format)


@router.post("/v1/embeddings")
async def openai_embeddings(body: MultiModalEmbeddingRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    items = [MultiModalInput(text=item.text, image=item.image) for item in body.items()]
    result = await unless_disconnected(
        request,
        engine.embed_inputs(items, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions),
    )
    encoded = encode_vectors(result.vectors, body.encoding_format)
    return FastJSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)],
            "model": engine.settings.model_name,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )
