"""The search wire models live in rag_plugins.protocol and agree with the Milvus core's defaults."""

from __future__ import annotations

from rag_plugins import protocol
from rag_plugins.milvus import search_service
from rag_plugins.milvus.fusion import DEFAULT_RRF_K
from rag_plugins.search_client import SearchClient


def test_search_models_are_the_protocol_ones_and_defaults_agree() -> None:
    assert search_service.SearchRequest is protocol.SearchRequest
    assert search_service.SearchResponse is protocol.SearchResponse
    assert protocol.SearchRequest(text="q").rrf_k == DEFAULT_RRF_K == protocol.SEARCH_DEFAULT_RRF_K


def test_client_body_sends_only_what_was_set() -> None:
    body = SearchClient.body("red planet", weights=(0.7, 0.3), fusion="weighted", rerank=True, top_n=3)
    assert body == {"text": "red planet", "weights": [0.7, 0.3], "fusion": "weighted", "rerank": True, "top_n": 3}
