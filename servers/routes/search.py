"""Search route: ``POST /search`` (hybrid search over the collection, optional rerank stage)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rag_plugins.protocol import SearchRequest, SearchResponse
from servers.responses import MODEL_ROUTE_ERRORS, FastJSONResponse, documented
from servers.routes.context import searcher, unless_disconnected

router = APIRouter()
#: The model routes' errors plus 502: an upstream model server failed.
SEARCH_ROUTE_ERRORS = tuple(sorted({*MODEL_ROUTE_ERRORS, 502}))


@router.post("/search", responses=documented(SearchResponse, SEARCH_ROUTE_ERRORS, "Candidates best first."))
async def search(body: SearchRequest, request: Request) -> FastJSONResponse:
    """Embed the query, search text_vec and/or image_vec, fuse (RRF or weighted), optionally rerank."""
    answer = await unless_disconnected(request, searcher(request).search(body))
    return FastJSONResponse(answer.model_dump())
