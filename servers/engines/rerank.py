"""Rerank engine: format + tokenize pairs (recipe, thread pool) -> batch (scheduler) -> head -> activation.

Every pair (or, for a bi-encoder, every text) is one scheduler item, so a request of 100 documents is spread
over several token-budget batches and reassembled in input order, and documents of concurrent requests
share batches. Scores do not depend on batch composition (see ``servers.backends.rerank``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servers.backends.device import choose_placement
from servers.backends.rerank import BiEncoderScorer, EncodedInput, RerankBackend, load_reranker
from servers.engines.base import EngineBase, check_fits_batch
from servers.errors import InvalidRequestError, RequestTooLargeError
from servers.metrics import ServerMetrics
from servers.model_files import resolve_model_dir
from servers.recipes.rerank import Activation, resolve_rerank_recipe
from servers.scheduler import Lane
from servers.settings import ServerSettings

logger = logging.getLogger(__name__)


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


class RerankEngine(EngineBase[EncodedInput, Any]):
    """Serve one reranker: ``await engine.rerank(query, docs)`` and ``await engine.score(pairs)``.

    Works without HTTP too (a notebook), with the same scores as the server::

        engine = RerankEngine.from_settings(ServerSettings(kind="rerank", model="Qwen/Qwen3-Reranker-0.6B"))
        async with engine:
            result = await engine.rerank("query", ["doc a", "doc b"], top_n=1)
    """

    kind = "rerank"

    def __init__(self, backend: RerankBackend, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        super().__init__(settings, metrics)
        self.backend = backend
        self.recipe = backend.recipe

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: ServerMetrics | None = None) -> RerankEngine:
        """Load the model named by ``settings.model`` onto ``settings.device`` (blocking)."""
        model_dir = resolve_model_dir(settings.model)
        recipe = resolve_rerank_recipe(model_dir)
        placement = choose_placement(settings.device, settings.dtype, settings.attention)
        logger.info(
            "loading %s (recipe %s) on %s as %s, attention %s",
            settings.model, recipe.name, placement.device, placement.dtype_name, placement.attention,
        )
        backend = load_reranker(model_dir, recipe, placement, settings.max_length)
        check_fits_batch(backend.max_length, settings)
        return cls(backend, settings, metrics)

    # ------------------------------------------------------------------------------------------ public
    @property
    def default_instruction(self) -> str | None:
        return self.settings.instruction or self.recipe.default_instruction()

    async def rerank(
        self,
        query: str,
        docs: Sequence[str],
        *,
        instruction: str | None = None,
        top_n: int | None = None,
        truncate: bool = True,
    ) -> RerankResult:
        """Score ``docs`` against ``query``.

        Returns:
            Scores in input order and ``order`` (best first, at most ``top_n``).

        Raises:
            InvalidRequestError: no documents, empty query, or ``top_n`` < 0.
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
        self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None, truncate: bool = True
    ) -> ScoreResult:
        """Score (query, document) pairs, in pair order.

        Raises:
            InvalidRequestError: no pairs or an empty text.
            RequestTooLargeError: too many pairs, or a pair over ``max_length`` with ``truncate=False``.
        """
        if not pairs:
            raise InvalidRequestError("no pairs to score")
        self._check_count(len(pairs), "pairs")
        for i, (q, d) in enumerate(pairs):
            if not isinstance(q, str) or not isinstance(d, str):
                raise InvalidRequestError(f"pair {i}: query and document must be strings")
            if not q.strip():
                raise InvalidRequestError(f"pair {i}: the query is empty")
        task = instruction if instruction is not None else self.default_instruction
        backend = self.backend
        if isinstance(backend, BiEncoderScorer):
            return await self._score_bi_encoder(backend, list(pairs), instruction, truncate)
        encoded = await self._off_loop(backend.tokenize_pairs, list(pairs), task or "")
        self._check_truncation(encoded, truncate, "pair")
        costs = [len(e.ids) for e in encoded]
        raw = np.asarray(await self._schedule(encoded, costs), dtype=np.float32)
        return ScoreResult(activate(raw, self.recipe.activation), raw, sum(costs))

    def info(self) -> dict[str, Any]:
        b = self.backend
        s = self.settings
        return {
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
        }

    # ----------------------------------------------------------------------------------------- internals
    def _check_truncation(self, encoded: list[EncodedInput], truncate: bool, what: str) -> None:
        if truncate:
            return
        for i, item in enumerate(encoded):
            if item.truncated:
                raise RequestTooLargeError(
                    f"{what} {i} has {item.original_length} tokens, over the limit of {self.backend.max_length}; "
                    "shorten it or send truncate=true"
                )

    async def _score_bi_encoder(
        self, backend: BiEncoderScorer, pairs: list[tuple[str, str]], instruction: str | None, truncate: bool
    ) -> ScoreResult:
        embedding = self.recipe.embedding
        assert embedding is not None
        queries = list(dict.fromkeys(q for q, _ in pairs))
        docs = list(dict.fromkeys(d for _, d in pairs))
        texts = [embedding.format(q, "query", instruction) for q in queries]
        texts += [embedding.format(d, "document") for d in docs]
        encoded = await self._off_loop(backend.tokenize_texts, texts)
        self._check_truncation(encoded, truncate, "text")
        costs = [len(e.ids) for e in encoded]
        vectors = np.stack(await self._schedule(encoded, costs)).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        q_row = {q: i for i, q in enumerate(queries)}
        d_row = {d: len(queries) + i for i, d in enumerate(docs)}
        cosine = np.asarray(
            [float(vectors[q_row[q]] @ vectors[d_row[d]]) for q, d in pairs], dtype=np.float32
        )
        return ScoreResult(cosine, cosine.copy(), sum(costs))

    def _run_batch(self, payloads: list[EncodedInput], lane: Lane) -> list[Any]:
        return list(self.backend.forward(payloads, lane))

    def _launch_batch(self, payloads: list[EncodedInput], lane: Lane) -> Callable[[], list[Any]]:
        pending = self.backend.launch(payloads, lane)
        return lambda: list(pending.result())

    async def _warmup(self) -> None:
        await self.rerank("warm-up", ["warm-up"])
