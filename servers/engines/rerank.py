"""Rerank engine: validate -> backend ``prepare`` (thread pool) -> batch (scheduler) -> backend ``finish`` ->
activation.

The engine holds any :class:`~servers.backends.rerank.PairScoringBackend` and never asks which one. Every pair (or, for a bi-encoder, every text) is one scheduler item, so a request of 100 documents is spread
over several token-budget batches and reassembled in input order, and documents of concurrent requests
share batches. Scores do not depend on batch composition (see ``servers.backends.rerank``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from servers.backends.accelerated import AccelerationSettings
from servers.backends.multimodal_rerank import QwenVLPairScorer
from servers.backends.rerank import PairScoringBackend, PreparedScoring, load_reranker
from servers.engines.base import EngineBase, check_fits_batch, place_model
from servers.errors import InvalidRequestError, ServingError, UnsupportedOperationError
from servers.images import ImagePolicy, MultiModalInput, load_image
from servers.metrics import ServerMetrics
from servers.recipes.multimodal import PositionScheme
from servers.recipes.rerank import Activation, load_pair_template, resolve_rerank_recipe
from servers.settings import ServerSettings

#: A query or document: a text, or (multimodal rerankers) a text and/or an image.
RerankItem = str | MultiModalInput


def activate(raw: np.ndarray, activation: Activation) -> np.ndarray:
    """Apply the recipe's activation to raw scores. Shapes: (n,) -> (n,) float32."""
    raw = raw.astype(np.float64)
    if activation == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-raw))
    elif activation == "tanh":
        out = np.tanh(raw)
    else:
        out = raw
    return out.astype(np.float32)


def best_first(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices of ``scores`` (n,) from best to worst (ties keep input order), cut to ``top_n``."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [int(i) for i in order]


@dataclass(frozen=True)
class ScoreResult:
    """Scores of pairs.

    Attributes:
        scores: float32 (n,), pair order, after the recipe's activation.
        raw_scores: float32 (n,), before it (logit difference, logit, or cosine).
        prompt_tokens: Tokens fed to the model (after templates and truncation).
    """

    scores: np.ndarray
    raw_scores: np.ndarray
    prompt_tokens: int


@dataclass(frozen=True)
class RerankResult(ScoreResult):
    """Scores of one query against documents, plus ``order``: document indices best first, cut to top_n."""

    order: list[int]


def _image_key(image: Any) -> Any:
    """A hashable key of an image input, so one image repeated over a request is decoded once."""
    if isinstance(image, str):
        return image
    if isinstance(image, dict):
        return tuple(sorted((str(k), str(v)) for k, v in image.items()))
    return ("object", id(image))


def _as_text(item: RerankItem, where: str) -> str:
    """A text-only reranker's view of an item; an image is refused with a clear 400."""
    if isinstance(item, str):
        return item
    if isinstance(item, MultiModalInput):
        if item.image is not None:
            raise UnsupportedOperationError(f"{where} has an image; this reranker scores text only")
        return item.text or ""
    raise InvalidRequestError(f"{where} must be a string")


class RerankEngine(EngineBase[Any, Any]):
    """Serve one reranker: ``await engine.rerank(query, docs)`` and ``await engine.score(pairs)``.

    Works without HTTP too (a notebook), with the same scores as the server::

        engine = RerankEngine.from_settings(ServerSettings(kind="rerank", model="Qwen/Qwen3-Reranker-0.6B"))
        async with engine:
            result = await engine.rerank("query", ["doc a", "doc b"], top_n=1)
    """

    kind = "rerank"

    def __init__(
        self, backend: PairScoringBackend, settings: ServerSettings, metrics: ServerMetrics | None = None,
        policy: ImagePolicy | None = None,
    ) -> None:
        super().__init__(settings, metrics)
        self.backend = backend
        self.recipe = backend.recipe
        self.policy = policy or ImagePolicy.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: ServerMetrics | None = None) -> RerankEngine:
        """Load the model named by ``settings.model`` onto ``settings.device`` (blocking)."""
        model_dir, recipe, placement = place_model(settings, resolve_rerank_recipe)
        if settings.prompt_template:
            if recipe.template is None or recipe.kind not in ("decoder", "vision-decoder"):
                raise ValueError(
                    f"--prompt-template applies to yes/no and decoder rerankers; this model's recipe is {recipe.name}"
                )
            recipe = replace(recipe, name=f"{recipe.name}, template from {settings.prompt_template}",
                             template=load_pair_template(Path(settings.prompt_template), recipe.template))
        backend: PairScoringBackend
        if recipe.accepts_images:
            positions = None if settings.vision_positions == "recipe" else settings.vision_positions
            backend = QwenVLPairScorer(
                model_dir, recipe, placement, settings.max_length, settings.min_pixels, settings.max_pixels,
                cast(PositionScheme | None, positions), AccelerationSettings.from_settings(settings),
            )
        else:
            backend = load_reranker(model_dir, recipe, placement, settings.max_length,
                                    AccelerationSettings.from_settings(settings))
        check_fits_batch(backend.max_length, settings)
        return cls(backend, settings, metrics)

    # ------------------------------------------------------------------------------------------ public
    @property
    def accepts_images(self) -> bool:
        """Whether queries and documents may carry images (a multimodal reranker is loaded)."""
        return self.recipe.accepts_images

    @property
    def default_instruction(self) -> str | None:
        return self.requested_instruction(None) or self.recipe.default_instruction()

    async def rerank(
        self,
        query: RerankItem,
        docs: Sequence[RerankItem],
        *,
        instruction: str | None = None,
        top_n: int | None = None,
        truncate: bool = True,
    ) -> RerankResult:
        """Score ``docs`` against ``query``.

        Query and documents are texts; on a multimodal reranker (``accepts_images``) each may also be a
        :class:`~servers.images.MultiModalInput` with an image.

        Returns:
            Scores in input order and ``order`` (best first, at most ``top_n``).

        Raises:
            InvalidRequestError: no documents, empty query, or ``top_n`` < 0.
            UnsupportedOperationError: an image sent to a text-only reranker.
            RequestTooLargeError: more documents than ``--max-client-batch``, or a pair over ``max_length``
                with ``truncate=False``.
        """
        if top_n is not None and top_n < 0:
            raise InvalidRequestError(f"top_n must be >= 0; got {top_n}")
        if not docs:
            raise InvalidRequestError("no documents to rerank")
        self._check_count(len(docs), "documents")
        result = await self.score([(query, d) for d in docs], instruction=instruction, truncate=truncate)
        return RerankResult(
            scores=result.scores, raw_scores=result.raw_scores, prompt_tokens=result.prompt_tokens,
            order=best_first(result.scores, top_n),
        )

    async def score(
        self, pairs: Sequence[tuple[RerankItem, RerankItem]], *, instruction: str | None = None, truncate: bool = True
    ) -> ScoreResult:
        """Score (query, document) pairs, in pair order (items as in :meth:`rerank`).

        Raises:
            InvalidRequestError: no pairs, an empty text, or a bad image.
            UnsupportedOperationError: an image sent to a text-only reranker.
            ImageRefusedError: an image source the server's image policy forbids.
            RequestTooLargeError: too many pairs, or a pair over ``max_length`` with ``truncate=False``.
        """
        if not pairs:
            raise InvalidRequestError("no pairs to score")
        self._check_count(len(pairs), "pairs")
        checked = self._checked(pairs)
        # Image decoding, the image processor and tokenization are CPU work: off the event loop.
        prepared = await self._off_loop(self._prepare, checked, self.requested_instruction(instruction), truncate,
                                        stage="prepare")
        outputs = await self._schedule(prepared.items, prepared.costs)
        raw = np.asarray(self.backend.finish(prepared, outputs), dtype=np.float32)
        return ScoreResult(activate(raw, self.recipe.activation), raw, sum(prepared.costs))

    def info(self) -> dict[str, Any]:
        b = self.backend
        s = self.settings
        return {
            **self.acceleration_facts(),
            "model": s.model_name,
            "kind": self.kind,
            "dim": None,
            "dtype": b.placement.dtype_name,
            "device": str(b.placement.device),
            "max_length": b.max_length,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_size": s.max_batch_size,
            "max_client_batch": s.max_client_batch,
            "max_queue_items": s.max_queue_items,
            "max_wait_ms": s.max_wait_ms,
            "recipe": self.recipe.name,
            "scoring": self.recipe.scoring,
            "activation": self.recipe.activation,
            "default_instruction": self.default_instruction,
            "modalities": self.recipe.modalities,
            **b.describe(),
            **(
                {"max_image_pixels": s.max_image_pixels, "image_paths": bool(s.image_root),
                 "url_images": s.allow_url_images}
                if self.accepts_images else {}
            ),
        }

    # ----------------------------------------------------------------------------------------- internals
    def _checked(self, pairs: Sequence[tuple[RerankItem, RerankItem]]) -> list[tuple[RerankItem, RerankItem]]:
        """Validate pairs for this reranker: texts for a text-only one (an image is refused), texts and/or
        images for a multimodal one. Returns the pairs, texts unwrapped for text-only rerankers."""
        out: list[tuple[RerankItem, RerankItem]] = []
        for i, (q, d) in enumerate(pairs):
            if not self.accepts_images:
                q_text, d_text = _as_text(q, f"pair {i}: the query"), _as_text(d, f"pair {i}: the document")
                if not q_text.strip():
                    raise InvalidRequestError(f"pair {i}: the query is empty")
                out.append((q_text, d_text))
                continue
            for name, item in (("query", q), ("document", d)):
                if not isinstance(item, str | MultiModalInput):
                    raise InvalidRequestError(f"pair {i}: the {name} must be a string or a text/image input")
                text = item if isinstance(item, str) else item.text
                image = item.image if isinstance(item, MultiModalInput) else None
                if image is None and not (text and text.strip()):
                    raise InvalidRequestError(f"pair {i}: the {name} has neither text nor an image")
            out.append((q, d))
        return out

    def _prepare(self, pairs: list[tuple[RerankItem, RerankItem]], instruction: str | None, truncate: bool
                 ) -> PreparedScoring:
        """Decode image sources under the server's policy (each distinct source once), then the backend's
        ``prepare``. Runs on a tokenizer thread."""
        if self.accepts_images:
            decoded: dict[Any, Image.Image] = {}

            def loaded(item: RerankItem) -> RerankItem:
                if isinstance(item, str) or item.image is None:
                    return item
                key = _image_key(item.image)
                if key not in decoded:
                    image = item.image
                    decoded[key] = image.convert("RGB") if isinstance(image, Image.Image) else load_image(
                        image, self.policy)
                return MultiModalInput(text=item.text, image=decoded[key])

            ready: list[tuple[RerankItem, RerankItem]] = []
            for i, (q, d) in enumerate(pairs):
                try:
                    ready.append((loaded(q), loaded(d)))
                except ServingError as exc:
                    exc.message = f"pair {i}: {exc.message}"
                    exc.args = (exc.message,)
                    raise
            pairs = ready
        return self.backend.prepare(pairs, instruction, truncate)

    async def _warmup(self) -> None:
        if self.accepts_images:
            image = Image.new("RGB", (56, 56), "gray")
            await self.rerank("warm-up", ["warm-up", MultiModalInput(text="warm-up", image=image)])
            return
        await self.rerank("warm-up", ["warm-up"])
