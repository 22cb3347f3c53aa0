"""Multimodal embedding routes: ``/embed_image`` and ``/v1/embeddings`` with ``{"text", "image"}`` items.

``/embed`` (texts into the image space) is the text embedding server's route (``embedding.text_router``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import EmbedImageRequest, MultiModalEmbeddingRequest
from servers.engines.multimodal import MultiModalInput
from servers.responses import FastJSONResponse, native_embedding_response, openai_embedding_response
from servers.routes.context import engine_of, unless_disconnected

router = APIRouter()


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
    return native_embedding_response(result, engine.settings.model_name, body.encoding_format)


@router.post("/v1/embeddings")
async def openai_embeddings(body: MultiModalEmbeddingRequest, request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    items = [MultiModalInput(text=item.text, image=item.image) for item in body.items()]
    result = await unless_disconnected(
        request,
        engine.embed_inputs(items, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions),
    )
    return openai_embedding_response(result, engine.settings.model_name, body.encoding_format)
