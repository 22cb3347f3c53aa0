"""Rerank routes: ``/rerank`` (native, or TEI when ``texts`` is sent), ``/v1|v2/rerank`` (Cohere/Jina),
``/score`` and ``/v1/score`` (vLLM)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from rag_plugins.protocol import (
    CohereRerankRequest,
    CohereRerankResponse,
    DocInput,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    TeiRerankHit,
)
from servers.engine_api import Reranker
from servers.errors import UnsupportedOperationError
from servers.images import MultiModalInput
from servers.responses import MODEL_ROUTE_ERRORS, FastJSONResponse, documented
from servers.routes.context import reranker, unless_disconnected

router = APIRouter()
#: Rerank routes may take images (multimodal rerankers), so they may refuse an image source (403).
RERANK_ROUTE_ERRORS = tuple(sorted((*MODEL_ROUTE_ERRORS, 403)))


def doc_texts(documents: Sequence[str | DocInput]) -> list[str]:
    """Documents as texts; image documents need a multimodal reranker, which this server is not."""
    texts: list[str] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif doc.image is not None:
            raise UnsupportedOperationError(f"document {i} has an image; this reranker scores text only")
        else:
            texts.append(doc.text or "")
    return texts


def query_text(query: str | DocInput) -> str:
    """The query as a text; an image query needs a multimodal reranker, which this server is not."""
    if isinstance(query, str):
        return query
    if query.image is not None:
        raise UnsupportedOperationError("the query has an image; this reranker scores text only")
    return query.text or ""


def rerank_inputs(
    engine: Reranker, query: str | DocInput, documents: Sequence[str | DocInput]
) -> tuple[str | MultiModalInput, list[str | MultiModalInput]]:
    """Query and documents as the engine takes them: texts, or text/image inputs for a multimodal reranker."""
    if not engine.accepts_images:
        return query_text(query), list(doc_texts(documents))

    def item(x: str | DocInput) -> str | MultiModalInput:
        return x if isinstance(x, str) else MultiModalInput(text=x.text, image=x.image)

    return item(query), [item(d) for d in documents]


def _text_of(item: str | MultiModalInput) -> str:
    return item if isinstance(item, str) else (item.text or "")


@router.post(
    "/rerank",
    responses=documented(
        RerankResponse | list[TeiRerankHit], RERANK_ROUTE_ERRORS,
        "Native shape for a `docs` body; with `texts` (TEI shape) a list of {index, score} best first.",
    ),
)
async def rerank(body: RerankRequest, request: Request) -> FastJSONResponse:
    """Score documents against a query: ``scores`` in input order, ``order``/``indices`` best first."""
    engine = reranker(request)
    query, docs = rerank_inputs(engine, body.query, body.documents())
    result = await unless_disconnected(
        request,
        engine.rerank(query, docs, instruction=body.instruction, top_n=body.top_n, truncate=body.truncate),
    )
    if body.is_tei:  # TEI shape: every document (or top_n), best first
        scores = result.raw_scores if body.raw_scores else result.scores
        return FastJSONResponse(
            [
                {"index": i, "score": float(scores[i]), **({"text": _text_of(docs[i])} if body.return_text else {})}
                for i in result.order
            ]
        )
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    order = [int(i) for i in result.order]
    return FastJSONResponse(
        {"scores": result.scores, "order": order, "indices": order, "model": engine.settings.model_name,
         "usage": usage}
    )


_COHERE = documented(CohereRerankResponse, RERANK_ROUTE_ERRORS, "Results best first.")


@router.post("/v1/rerank", responses=_COHERE)
@router.post("/v2/rerank", responses=_COHERE)
async def cohere_rerank(body: CohereRerankRequest, request: Request) -> FastJSONResponse:
    """Cohere/Jina-compatible rerank."""
    engine = reranker(request)
    query, docs = rerank_inputs(engine, body.query, body.documents)
    result = await unless_disconnected(
        request, engine.rerank(query, docs, instruction=body.instruction, top_n=body.top_n)
    )
    results: list[dict[str, Any]] = [
        {"index": i, "relevance_score": float(result.scores[i]), **({"document": {"text": _text_of(docs[i])}} if body.return_documents else {})}
        for i in result.order
    ]
    return FastJSONResponse(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": engine.settings.model_name,
            "results": results,
            "usage": {"total_tokens": result.prompt_tokens, "prompt_tokens": result.prompt_tokens},
        }
    )


_SCORE = documented(ScoreResponse, MODEL_ROUTE_ERRORS, "One score per pair, pair order.")


@router.post("/score", responses=_SCORE)
@router.post("/v1/score", responses=_SCORE)
async def score(body: ScoreRequest, request: Request) -> FastJSONResponse:
    """vLLM-compatible pair scores (one query against N documents, or N pairs)."""
    engine = reranker(request)
    result = await unless_disconnected(request, engine.score(body.pairs(), instruction=body.instruction))
    return FastJSONResponse(
        {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": engine.settings.model_name,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(result.scores)],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )
