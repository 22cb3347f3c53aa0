"""Multimodal embedding routes: ``/embed_image`` and ``/v1/embeddings`` with ``{"text", "image"}`` items.

``/embed`` (texts into the image space) is the text embedding server's route (``embedding.text_router``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import (
    EmbedImageRequest,
    EmbedResponse,
    MultiModalEmbeddingRequest,
    OpenAIEmbeddingResponse,
)
from servers.images import MultiModalInput
from servers.responses import (
    MODEL_ROUTE_ERRORS,
    FastJSONResponse,
    documented,
    native_embedding_response,
    openai_embedding_response,
)
from servers.routes.context import multimodal_embedder, unless_disconnected

router = APIRouter()
#: Image routes may also refuse an image source (403).
IMAGE_ROUTE_ERRORS = tuple(sorted((*MODEL_ROUTE_ERRORS, 403)))


@router.post("/embed_image", responses=documented(EmbedResponse, IMAGE_ROUTE_ERRORS, "One vector per image."))
async def embed_image(body: EmbedImageRequest, request: Request) -> FastJSONResponse:
    """Embed images, or image+text pairs (``texts`` of the same length), into the shared space."""
    engine = multimodal_embedder(request)
    result = await unless_disconnected(
        request,
        engine.embed_images(
            body.images, body.texts, input_type=body.input_type, instruction=body.instruction,
            dimensions=body.dimensions, normalize=body.normalize,
        ),
    )
    return native_embedding_response(result, engine.settings.model_name, body.encoding_format)


@router.post(
    "/v1/embeddings", responses=documented(OpenAIEmbeddingResponse, IMAGE_ROUTE_ERRORS, "One vector per input.")
)
async def openai_embeddings(body: MultiModalEmbeddingRequest, request: Request) -> FastJSONResponse:
    """OpenAI-shaped embeddings whose items may be texts, images, or both."""
    engine = multimodal_embedder(request)
    items = [MultiModalInput(text=item.text, image=item.image) for item in body.items()]
    result = await unless_disconnected(
        request,
        engine.embed_inputs(items, input_type=body.input_type, instruction=body.instruction, dimensions=body.dimensions),
    )
    return openai_embedding_response(result, engine.settings.model_name, body.encoding_format)
