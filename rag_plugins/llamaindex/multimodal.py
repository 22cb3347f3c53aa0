"""``LocalMultiModalEmbedding``: a LlamaIndex ``MultiModalEmbedding`` backed by a rag-serve ``mm-embed`` server.

Text and query embeddings are vectors in the image space (what ``MultiModalVectorStoreIndex`` expects of its
``image_embed_model``): a query finds images, and an image finds images.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
from llama_index.core.schema import ImageType
from pydantic import Field, PrivateAttr

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from rag_plugins.llamaindex.text_methods import ClientTextEmbeddingMethods
from rag_plugins.multimodal_client import (
    DEFAULT_IMAGE_BATCH_SIZE,
    DEFAULT_MM_BASE_URL,
    ImageLike,
    MultiModalEmbeddingClient,
)


def _as_image(value: Any) -> ImageLike:
    """LlamaIndex hands images as a path string or ``BytesIO``; an ``ImageNode`` is resolved to its image."""
    resolve = getattr(value, "resolve_image", None)
    if callable(resolve):  # ImageNode / ImageDocument: image (base64), image_path or image_url
        image: ImageLike = resolve()
        return image
    return value  # type: ignore[no-any-return]


class LocalMultiModalEmbedding(ClientTextEmbeddingMethods, MultiModalEmbedding):
    """Image, text and query embeddings in one space, from a local multimodal embedding server.

    Example:
        >>> from llama_index.core.indices import MultiModalVectorStoreIndex
        >>> mm = LocalMultiModalEmbedding(base_url="http://127.0.0.1:8003")
        >>> index = MultiModalVectorStoreIndex(nodes, image_embed_model=mm)
    """

    base_url: str = Field(default=DEFAULT_MM_BASE_URL, description="Server root of rag-serve mm-embed.")
    api_key: str | None = Field(default=None, description="Bearer token, if the server wants one.")
    dimensions: int | None = Field(default=None, description="Matryoshka size to request (None: full).")
    query_instruction: str | None = Field(default=None, description="Task instruction for queries.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, description="Seconds per HTTP attempt.")
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, description="Retries on 429/503/connection errors.")
    embed_batch_size: int = Field(default=DEFAULT_IMAGE_BATCH_SIZE, gt=0, description="Inputs per request.")

    _client: MultiModalEmbeddingClient = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", "rag-serve-mm")
        super().__init__(**data)
        self._client = MultiModalEmbeddingClient(
            base_url=self.base_url, api_key=self.api_key, dimensions=self.dimensions,
            query_instruction=self.query_instruction, image_batch_size=self.embed_batch_size,
            text_batch_size=self.embed_batch_size, timeout_s=self.timeout, max_retries=self.max_retries,
        )

    @classmethod
    def class_name(cls) -> str:
        return "LocalMultiModalEmbedding"

    @property
    def client(self) -> MultiModalEmbeddingClient:
        """The framework-free client behind this class (numpy in, numpy out)."""
        return self._client

    # ------------------------------------------------------------------------------------------- images
    def _get_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return self._client.embed_images([_as_image(img_file_path)])[0].tolist()  # type: ignore[no-any-return]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return (await self._client.aembed_images([_as_image(img_file_path)]))[0].tolist()  # type: ignore[no-any-return]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        return self._client.embed_images([_as_image(p) for p in img_file_paths]).tolist()  # type: ignore[no-any-return]

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        vectors = await self._client.aembed_images([_as_image(p) for p in img_file_paths])
        return vectors.tolist()  # type: ignore[no-any-return]

