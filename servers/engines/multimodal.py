"""Multimodal embedding engine: decode images + template (thread pool) -> batch (scheduler) -> pool -> normalise.

Texts, images and fused image+text inputs share one space and one scheduler; an item's token cost counts
its image tokens, so the token budget bounds image batches too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from PIL import Image

from rag_plugins.protocol import InputType
from servers.backends.accelerated import AccelerationSettings
from servers.backends.multimodal import PreparedInput, QwenVLEmbedder
from servers.engines.base import EngineBase, check_fits_batch, place_model
from servers.engines.embedding import EmbeddingResult, matryoshka
from servers.errors import InvalidRequestError, ServingError
from servers.images import ImagePolicy, MultiModalInput, load_image
from servers.metrics import ServerMetrics
from servers.recipes.multimodal import PositionScheme, resolve_multimodal_recipe
from servers.settings import ServerSettings

__all__ = ["MultiModalEmbeddingEngine", "MultiModalInput"]


class MultiModalEmbeddingEngine(EngineBase[PreparedInput, np.ndarray]):
    """Serve one multimodal embedding model: ``await engine.embed_inputs([...])``."""

    kind = "mm-embed"

    def __init__(
        self, backend: QwenVLEmbedder, settings: ServerSettings, metrics: ServerMetrics | None = None,
        policy: ImagePolicy | None = None,
    ) -> None:
        super().__init__(settings, metrics)
        self.backend = backend
        self.policy = policy or ImagePolicy.from_settings(settings)

    @classmethod
    def from_settings(
        cls, settings: ServerSettings, metrics: ServerMetrics | None = None
    ) -> MultiModalEmbeddingEngine:
        """Load the model named by ``settings.model`` onto ``settings.device`` (blocking)."""
        model_dir, recipe, placement = place_model(settings, resolve_multimodal_recipe)
        positions = None if settings.vision_positions == "recipe" else settings.vision_positions
        backend = QwenVLEmbedder(
            model_dir, recipe, placement, settings.max_length, settings.min_pixels, settings.max_pixels,
            cast(PositionScheme | None, positions), AccelerationSettings.from_settings(settings),
        )
        check_fits_batch(backend.max_length, settings)
        return cls(backend, settings, metrics)

    # ------------------------------------------------------------------------------------------ public
    @property
    def dim(self) -> int:
        return self.backend.dim

    async def embed(
        self, texts: Sequence[str], *, input_type: InputType = "document", instruction: str | None = None,
        dimensions: int | None = None, normalize: bool = True, truncate: bool = True,
    ) -> EmbeddingResult:
        """Texts into the image space (same template, no image)."""
        items = [MultiModalInput(text=t) for t in texts]
        return await self.embed_inputs(
            items, input_type=input_type, instruction=instruction, dimensions=dimensions, normalize=normalize,
            truncate=truncate,
        )

    async def embed_images(
        self, images: Sequence[Any], texts: Sequence[str] | None = None, *, input_type: InputType = "document",
        instruction: str | None = None, dimensions: int | None = None, normalize: bool = True,
    ) -> EmbeddingResult:
        """Images, each fused with ``texts[i]`` when texts are given (same length)."""
        if texts is not None and len(texts) != len(images):
            raise InvalidRequestError(f"texts has {len(texts)} items but images has {len(images)}; give one each")
        items = [MultiModalInput(text=texts[i] if texts is not None else None, image=im) for i, im in enumerate(images)]
        return await self.embed_inputs(
            items, input_type=input_type, instruction=instruction, dimensions=dimensions, normalize=normalize
        )

    async def embed_inputs(
        self, items: Sequence[MultiModalInput], *, input_type: InputType = "document",
        instruction: str | None = None, dimensions: int | None = None, normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingResult:
        """Embed texts, images and fused inputs in one request (input order kept).

        Raises:
            InvalidRequestError: an item with neither text nor image, a bad image, bad ``dimensions``.
            ImageRefusedError: an image source the policy forbids.
            RequestTooLargeError: too many items, an oversized image, an input over ``max_length``.
        """
        self._check_count(len(items), "inputs")
        self._check_dimensions(dimensions)
        for i, item in enumerate(items):
            if item.image is None and not (item.text and item.text.strip()):
                raise InvalidRequestError(f"input {i} has neither an image nor text")
        # A query carries at most one image; a request with several is ingestion and must not take the
        # priority thread or lane from text queries (8 small images fit the priority token bound).
        interactive = sum(item.image is not None for item in items) <= 1
        small = interactive and len(items) <= self.settings.priority_max_items
        # Image download/decoding and the image processor are CPU work: off the event loop.
        prepared = await self._off_loop(
            self._prepare_all, list(items), input_type, self.requested_instruction(instruction), truncate,
            stage="prepare", priority=small,
        )
        costs = [len(p.ids) for p in prepared]
        rows = await self._schedule(prepared, costs, priority=interactive)
        return EmbeddingResult(vectors=matryoshka(np.stack(rows), dimensions, normalize), prompt_tokens=sum(costs))

    def info(self) -> dict[str, Any]:
        b = self.backend
        s = self.settings
        return {
            **self.acceleration_facts(),
            "model": s.model_name, "kind": self.kind, "dim": b.dim, "dtype": b.placement.dtype_name,
            "device": str(b.placement.device), "attention": b.placement.attention, "max_length": b.max_length,
            "max_batch_tokens": s.max_batch_tokens, "max_batch_size": s.max_batch_size,
            "max_client_batch": s.max_client_batch, "max_queue_items": s.max_queue_items,
            "max_wait_ms": s.max_wait_ms, "recipe": b.recipe.name, "pooling": "lasttoken", "normalize": True,
            "min_dimensions": b.recipe.min_dimensions, "default_instruction": self.requested_instruction(None) or b.recipe.default_instruction,
            "scoring": None, "modalities": ["text", "image", "text+image"],
            "min_pixels": b.min_pixels, "max_pixels": b.max_pixels, "max_image_pixels": s.max_image_pixels,
            "max_image_bytes": s.max_image_bytes, "image_paths": bool(s.image_root),
            "url_images": s.allow_url_images, "vision_positions": b.positions,
        }

    # ----------------------------------------------------------------------------------------- internals
    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        low, high = self.backend.recipe.min_dimensions, self.backend.dim
        low = min(low, high)
        if not low <= dimensions <= high:
            raise InvalidRequestError(f"dimensions must be between {low} and {high} for this model; got {dimensions}")

    def _prepare_all(
        self, items: list[MultiModalInput], input_type: InputType, instruction: str | None, truncate: bool
    ) -> list[PreparedInput]:
        out: list[PreparedInput] = []
        for i, item in enumerate(items):
            try:
                image = item.image
                if image is not None and not isinstance(image, Image.Image):
                    image = load_image(image, self.policy)
                elif isinstance(image, Image.Image):
                    image = image.convert("RGB")
                out.append(self.backend.prepare(item.text, image, input_type, instruction, truncate))
            except ServingError as exc:
                exc.message = f"input {i}: {exc.message}"
                exc.args = (exc.message,)
                raise
        return out

    async def _warmup(self) -> None:
        image = Image.new("RGB", (56, 56), "gray")
        await self.embed_inputs([MultiModalInput(text="warm-up"), MultiModalInput(text="warm-up", image=image)])
