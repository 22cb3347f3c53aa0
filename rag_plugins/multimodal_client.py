"""``MultiModalEmbeddingClient``: framework-free client of a rag-serve ``mm-embed`` server.

Texts (``/embed``) and images or fused image+text inputs (``/embed_image``) land in one vector space. Images
are sent inline as base64 unless they are given as an http(s) URL (then the server fetches them, which it
does only when started with ``--allow-url-images``). It uses the retry/auth policy of
:class:`~rag_plugins.http.ServiceClient` like every other client of this package.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, RetryPolicy, ServiceClient
from rag_plugins.protocol import EmbedImageRequest, EmbedRequest, EmbedResponse, InputType, wire_body

DEFAULT_MM_BASE_URL = "http://127.0.0.1:8003"
DEFAULT_IMAGE_BATCH_SIZE = 16
DEFAULT_TEXT_BATCH_SIZE = 64

#: An image as callers hold it: a file path, encoded bytes, a stream, a PIL image, or a string that is a data
#: URI, bare base64, or an http(s) URL.
ImageLike = Union[str, Path, bytes, io.BytesIO, Image.Image]  # noqa: UP007 (a runtime alias)


def image_to_wire(image: ImageLike) -> str | dict[str, str]:
    """The ``ImageInput`` JSON value for ``image``.

    Raises:
        FileNotFoundError: a :class:`~pathlib.Path` that does not exist.
        TypeError: an unsupported object.
    """
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode("ascii")
    if isinstance(image, io.BytesIO):
        return base64.b64encode(image.getvalue()).decode("ascii")
    if isinstance(image, Path):
        return base64.b64encode(image.read_bytes()).decode("ascii")
    if isinstance(image, str):
        stripped = image.strip()
        if stripped.startswith("data:"):
            return stripped
        if stripped.lower().startswith(("http://", "https://")):
            return {"url": stripped}
        # A short string naming an existing file is a path; anything else is taken as base64.
        if len(stripped) < 4096 and os.path.isfile(stripped):
            return base64.b64encode(Path(stripped).read_bytes()).decode("ascii")
        return stripped
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes, BytesIO or PIL image")


@dataclass
class MultiModalEmbeddingClient:
    """Embed texts and images through a multimodal embedding server.

    Attributes:
        base_url: Server root.
        api_key: Bearer token.
        dimensions: Matryoshka size to request (None: full).
        query_instruction: Task instruction for queries (None: the model's default).
        image_batch_size: Images per request.
        text_batch_size: Texts per request.
        timeout_s: Seconds per HTTP attempt.
        max_retries: Retries on 429/503/connection errors.
    """

    base_url: str = DEFAULT_MM_BASE_URL
    api_key: str | None = None
    dimensions: int | None = None
    query_instruction: str | None = None
    image_batch_size: int = DEFAULT_IMAGE_BATCH_SIZE
    text_batch_size: int = DEFAULT_TEXT_BATCH_SIZE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        if self.image_batch_size < 1 or self.text_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        self.http = ServiceClient(
            self.base_url, api_key=self.api_key, timeout_s=self.timeout_s,
            retry=RetryPolicy(max_retries=self.max_retries),
        )

    # ----------------------------------------------------------------------------------------- requests
    def _common(self, input_type: InputType) -> dict[str, Any]:
        body: dict[str, Any] = {"input_type": input_type, "encoding_format": "base64"}
        if self.query_instruction is not None and input_type == "query":
            body["instruction"] = self.query_instruction
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def _text_requests(self, texts: list[str], input_type: InputType) -> list[tuple[str, dict[str, Any]]]:
        n = self.text_batch_size
        return [
            ("/embed", wire_body(EmbedRequest.model_construct(texts=texts[i : i + n], **self._common(input_type))))
            for i in range(0, len(texts), n)
        ]

    def _image_requests(
        self, images: list[ImageLike], texts: list[str] | None, input_type: InputType
    ) -> list[tuple[str, dict[str, Any]]]:
        if texts is not None and len(texts) != len(images):
            raise ValueError(f"texts has {len(texts)} items but images has {len(images)}; give one each")
        n = self.image_batch_size
        out: list[tuple[str, dict[str, Any]]] = []
        for i in range(0, len(images), n):
            body = {"images": [image_to_wire(im) for im in images[i : i + n]], **self._common(input_type)}
            if texts is not None:
                body["texts"] = texts[i : i + n]
            out.append(("/embed_image", wire_body(EmbedImageRequest.model_construct(**body))))
        return out

    @staticmethod
    def _parse(answer: dict[str, Any]) -> np.ndarray:
        return EmbedResponse.model_validate(answer).as_array()

    @staticmethod
    def _join(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    # ------------------------------------------------------------------------------------------- public
    def embed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """Texts into the image space; float32 (n, dim), input order."""
        return self._join([self._parse(self.http.post(p, b)) for p, b in self._text_requests(texts, input_type)])

    async def aembed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """Async :meth:`embed`; the requests of one call run concurrently."""
        answers = await asyncio.gather(*(self.http.apost(p, b) for p, b in self._text_requests(texts, input_type)))
        return self._join([self._parse(a) for a in answers])

    def embed_images(
        self, images: list[ImageLike], texts: list[str] | None = None, input_type: InputType = "document"
    ) -> np.ndarray:
        """Images (fused with ``texts[i]`` when given, same length); float32 (n, dim), input order."""
        requests = self._image_requests(images, texts, input_type)
        return self._join([self._parse(self.http.post(p, b)) for p, b in requests])

    async def aembed_images(
        self, images: list[ImageLike], texts: list[str] | None = None, input_type: InputType = "document"
    ) -> np.ndarray:
        """Async :meth:`embed_images`."""
        requests = self._image_requests(images, texts, input_type)
        answers = await asyncio.gather(*(self.http.apost(p, b) for p, b in requests))
        return self._join([self._parse(a) for a in answers])

    def info(self) -> dict[str, Any]:
        """The server's ``/info``: model, dim, limits, pixel range."""
        answer: dict[str, Any] = self.http.get("/info")
        return answer

    async def ainfo(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.http.aget("/info")
        return answer
