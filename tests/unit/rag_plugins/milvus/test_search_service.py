"""SearchService answers like HybridRetriever, and reranks with a client's scores."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from rag_plugins.milvus.retriever import HybridRetriever
from rag_plugins.milvus.search_service import SearchRequest, SearchService
from tests.unit.rag_plugins.milvus.conftest import RandomStore


@dataclass
class _Hit:
    index: int
    score: float


class LengthReranker:
    """Scores a document by the number in its text ("row 17" -> 17): a known, query-independent order."""

    async def arerank(self, query: object, documents: list[str], top_n: int | None = None) -> list[_Hit]:
        hits = sorted((_Hit(i, float(d.split()[-1])) for i, d in enumerate(documents)), key=lambda h: -h.score)
        return hits[:top_n] if top_n else hits


@pytest.mark.parametrize("kw", [
    {"fusion": "rrf", "rrf_k": 20, "text_limit": 30, "image_limit": 10},
    {"fusion": "weighted", "weights": (0.7, 0.3), "filters": {"modality": "image"}},
])
def test_search_service_equals_hybrid_retriever(random_store: RandomStore, kw: dict[str, object]) -> None:
    service = SearchService(random_store.store)
    retriever = HybridRetriever(random_store.store, top_k=15)
    for query in random_store.queries:
        answer = asyncio.run(service.search(SearchRequest(text=query, top_k=15, **kw)))  # type: ignore[arg-type]
        nodes = retriever.retrieve_with(query, top_k=15, **kw)  # type: ignore[arg-type]
        assert [c.id for c in answer.candidates] == [n.node.node_id for n in nodes]
        assert [c.score for c in answer.candidates] == pytest.approx([n.score for n in nodes])
        assert answer.fields_searched == ["text_vec", "image_vec"]
        assert all(c.fields["text"] == n.node.get_content() for c, n in zip(answer.candidates, nodes, strict=True))


def test_rerank_stage_orders_by_reranker_and_cuts_to_top_n(random_store: RandomStore) -> None:
    service = SearchService(random_store.store, reranker=LengthReranker())
    plain = asyncio.run(service.search(SearchRequest(text="q2", top_k=12)))
    answer = asyncio.run(service.search(SearchRequest(text="q2", top_k=12, rerank=True, top_n=4)))
    assert answer.reranked
    assert len(answer.candidates) == 4
    numbers = sorted((int(c.fields["text"].split()[-1]) for c in plain.candidates), reverse=True)[:4]
    assert [c.rerank_score for c in answer.candidates] == [float(n) for n in numbers]
    fused = {c.id: c.score for c in plain.candidates}
    assert all(c.score == fused[c.id] for c in answer.candidates)  # fused scores kept next to rerank scores


def test_request_needs_a_query_and_a_reranker_for_rerank(random_store: RandomStore) -> None:
    with pytest.raises(ValueError, match="text and/or an image"):
        SearchRequest(top_k=3)
    with pytest.raises(ValueError, match="no reranker"):
        asyncio.run(SearchService(random_store.store).search(SearchRequest(text="q0", rerank=True)))
