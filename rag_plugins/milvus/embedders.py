"""What the store needs from an embedder: structural types, so any client with these methods fits.

``rag_plugins.embedding_client.EmbeddingClient`` satisfies :class:`TextEmbedder`; the multimodal client
(``rag_plugins.multimodal_client.MultiModalEmbeddingClient``) satisfies :class:`ImageSpaceEmbedder`.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from rag_plugins.protocol import InputType

#: An image as the multimodal client accepts it: a path, raw bytes, a ``BytesIO``, a PIL image, or a string
#: (path, URL, data URI or base64).
ImageLike = Union[str, Path, bytes, BytesIO, Any]  # noqa: UP007 - a runtime alias, kept py3.10-friendly


@runtime_checkable
class TextEmbedder(Protocol):
    """Embeds texts; ``info()["dim"]`` is the vector size."""

    def embed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """float32 (n, dim)."""
        ...

    async def aembed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """Async :meth:`embed`."""
        ...

    def info(self) -> dict[str, Any]:
        """Server info with at least ``dim``."""
        ...


@runtime_checkable
class ImageSpaceEmbedder(TextEmbedder, Protocol):
    """Embeds images (optionally fused with text) and texts into one shared space."""

    def embed_images(
        self, images: list[ImageLike], texts: list[str] | None = None, input_type: InputType = "document"
    ) -> np.ndarray:
        """float32 (n, dim)."""
        ...

    async def aembed_images(
        self, images: list[ImageLike], texts: list[str] | None = None, input_type: InputType = "document"
    ) -> np.ndarray:
        """Async :meth:`embed_images`."""
        ...


def embedder_dim(embedder: TextEmbedder, role: str) -> int:
    """``embedder.info()["dim"]`` as an int, or a clear error naming the role (text / image-space)."""
    info = embedder.info()
    dim = info.get("dim") if isinstance(info, dict) else None
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(
            f"the {role} embedder's info() has no positive integer 'dim' (got {info!r}); pass the dimension "
            f"explicitly in MilvusStoreSettings"
        )
    return dim
