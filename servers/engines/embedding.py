"""Text embedding engine: format (recipe) -> tokenize (thread pool) -> batch (scheduler) -> pool -> normalise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_plugins.protocol import InputType
from servers.backends.accelerated import AccelerationSettings
from servers.backends.text_embedding import TextEmbeddingBackend, TokenizedText, load_text_embedder
from servers.engines.base import EngineBase, check_fits_batch, place_model
from servers.errors import InvalidRequestError, RequestTooLargeError
from servers.metrics import ServerMetrics
from servers.recipes.embedding import resolve_embedding_recipe
from servers.settings import ServerSettings


@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors of one request.

    Attributes:
        vectors: float32 array (n, dim), input order.
        prompt_tokens: Tokens fed to the model (after prompts and truncation).
    """

    vectors: np.ndarray
    prompt_tokens: int

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def matryoshka(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Keep the first ``dimensions`` columns, then L2-normalise each row if asked.

    Args:
        vectors: float32 (n, dim) pooled vectors.
        dimensions: Columns to keep, or None for all.
        normalize: Divide each row by its L2 norm.

    Returns:
        float32 (n, dimensions or dim).
    """
    out = vectors[:, :dimensions] if dimensions is not None else vectors
    out = out.astype(np.float32, copy=True)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
    return out


class EmbeddingEngine(EngineBase[tuple[int, ...], np.ndarray]):
    """Serve one text embedding model: ``await engine.embed(texts, input_type=...)``.

    Works without HTTP too (a notebook)::

        engine = EmbeddingEngine.from_settings(ServerSettings(model="Qwen/Qwen3-Embedding-0.6B"))
        async with engine:
            result = await engine.embed(["hello"], input_type="query")
    """

    kind = "embed"

    def __init__(
        self, backend: TextEmbeddingBackend, settings: ServerSettings, metrics: ServerMetrics | None = None
    ) -> None:
        super().__init__(settings, metrics)
        self.backend = backend

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: ServerMetrics | None = None) -> EmbeddingEngine:
        """Load the model named by ``settings.model`` onto ``settings.device`` (blocking)."""
        model_dir, recipe, placement = place_model(settings, resolve_embedding_recipe)
        backend = load_text_embedder(model_dir, recipe, placement, settings.max_length, settings.last_token_padding,
                                     AccelerationSettings.from_settings(settings))
        check_fits_batch(backend.max_length, settings)
        return cls(backend, settings, metrics)

    # ------------------------------------------------------------------------------------------ public
    @property
    def dim(self) -> int:
        return self.backend.dim

    async def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "document",
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingResult:
        """Embed texts with the model's recipe.

        Raises:
            RequestTooLargeError: too many texts, or a text over ``max_length`` with ``truncate=False``.
            InvalidRequestError: ``dimensions`` outside what the model supports.
        """
        self._check_count(len(texts), "texts")
        self._check_dimensions(dimensions)
        recipe = self.backend.recipe
        task = self.requested_instruction(instruction)
        formatted = [recipe.format(t, input_type, task) for t in texts]
        tokenized = await self._off_loop(self.backend.tokenize, formatted)
        return await self._embed_tokenized(tokenized, dimensions, normalize, truncate)

    async def embed_token_ids(
        self,
        token_arrays: Sequence[Sequence[int]],
        *,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingResult:
        """Embed pre-tokenized inputs (OpenAI token-array input); the recipe's EOS rule still applies."""
        self._check_count(len(token_arrays), "inputs")
        self._check_dimensions(dimensions)
        vocab = self.backend.vocab_size
        for i, ids in enumerate(token_arrays):
            bad = [t for t in ids if t >= vocab]
            if bad:
                raise InvalidRequestError(f"input {i} has token id {bad[0]} outside the vocabulary (size {vocab})")
        tokenized = [self.backend.prepare_ids(list(ids)) for ids in token_arrays]
        return await self._embed_tokenized(tokenized, dimensions, normalize, truncate)

    def info(self) -> dict[str, Any]:
        b = self.backend
        s = self.settings
        return {
            **self.acceleration_facts(),
            "model": s.model_name,
            "kind": self.kind,
            "dim": b.dim,
            "dtype": b.placement.dtype_name,
            "device": str(b.placement.device),
            "attention": b.placement.attention,
            "max_length": b.max_length,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_size": s.max_batch_size,
            "max_client_batch": s.max_client_batch,
            "max_queue_items": s.max_queue_items,
            "max_wait_ms": s.max_wait_ms,
            "recipe": b.recipe.name,
            "pooling": b.recipe.pooling,
            "normalize": b.recipe.normalize,
            "min_dimensions": b.recipe.min_dimensions,
            "default_instruction": self.requested_instruction(None) or b.recipe.default_instruction,
            "scoring": None,
        }

    # ----------------------------------------------------------------------------------------- internals
    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        low, high = self.backend.recipe.min_dimensions, self.backend.dim
        if not low <= dimensions <= high:
            raise InvalidRequestError(f"dimensions must be between {low} and {high} for this model; got {dimensions}")

    async def _embed_tokenized(
        self, tokenized: list[TokenizedText], dimensions: int | None, normalize: bool, truncate: bool
    ) -> EmbeddingResult:
        if not truncate:
            for i, item in enumerate(tokenized):
                if item.truncated:
                    raise RequestTooLargeError(
                        f"input {i} has {item.original_length} tokens, over the limit of {self.backend.max_length}; "
                        "shorten it or send truncate=true"
                    )
        ids = [item.ids for item in tokenized]
        costs = [len(x) for x in ids]
        rows = await self._schedule(ids, costs)
        vectors = matryoshka(np.stack(rows), dimensions, normalize)
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(costs))

    async def _warmup(self) -> None:
        await self.embed(["warm-up"], input_type="query")
