"""``rag-serve search``: a real search server over a Milvus Lite file, calling real MiniLM embed and rerank
servers, answers exactly what the in-process ``HybridRetriever`` answers (ids and fused scores), with and
without the rerank stage; bad input gets the error envelope; the LlamaIndex retriever and the LightRAG
``search_func`` read it."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from rag_plugins.embedding_client import EmbeddingClient
from rag_plugins.errors import ServerResponseError
from rag_plugins.llamaindex.hybrid_retriever import HybridRetriever
from rag_plugins.llamaindex.rerank import LocalRerank
from rag_plugins.llamaindex.search_retriever import SearchServiceRetriever
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from rag_plugins.search_client import SearchClient
from tests.support.serve import rag_serve

DOCS = {
    "mars": "Mars is the red planet, the fourth from the Sun.",
    "venus": "Venus is the hottest planet, wrapped in thick clouds.",
    "bread": "Bread needs flour, water, salt and yeast, then an hour in the oven.",
    "pasta": "Boil pasta in salted water for about ten minutes.",
    "gpu": "Pascal GPUs cannot compute in bfloat16; use float16 instead.",
    "queue": "When the queue is full the server answers 429 with Retry-After.",
    "moon": "The Moon has no atmosphere and shows the same face to Earth.",
    "jupiter": "Jupiter is the largest planet and has a great red spot.",
}
QUERIES = ("Which planet is red?", "How do I bake bread?", "What does an overloaded server do?")
#: Request options compared with HybridRetriever's (the seed request shape).
CASES: tuple[dict[str, Any], ...] = (
    {"fusion": "rrf", "rrf_k": 20, "top_k": 5, "text_limit": 6},
    {"fusion": "weighted", "weights": (0.7, 0.3), "top_k": 4},
    {"fusion": "rrf", "top_k": 6, "filters": {"doc_id": ["mars", "venus", "bread", "moon"]}},
)
TOP_N = 3


@dataclass
class SearchStack:
    base: str
    #: (query, case index) -> [(id, fused score)] from HybridRetriever, then the reranked [(id, rerank score)].
    expected: dict[tuple[str, int], list[tuple[str, float]]]
    reranked: dict[str, list[tuple[str, float]]]


def _store(uri: str, embed_url: str) -> MultiVectorMilvusStore:
    return MultiVectorMilvusStore(
        text_embedder=EmbeddingClient(base_url=embed_url),
        settings=MilvusStoreSettings(uri=uri, collection_name="docs", text_dim=384, image_dim=384),
    )


def _fill_and_expect(uri: str, embed_url: str, rerank_url: str) -> tuple[dict[tuple[str, int], list[tuple[str, float]]],
                                                                          dict[str, list[tuple[str, float]]]]:
    """Fill the collection and compute HybridRetriever's answers (run in a child process: Milvus Lite lets one
    process hold the file, and this one would keep it after ``close()``)."""
    store = _store(uri, embed_url)
    try:
        store.upsert([StoreItem(text=t, doc_id=k, chunk_id="0", modality="text", id=k) for k, t in DOCS.items()],
                     show_progress=False)
        retriever = HybridRetriever(store)
        reranking = HybridRetriever(store, top_k=6, reranker=LocalRerank(base_url=rerank_url, top_n=TOP_N))
        expected = {
            (q, i): [(n.node.node_id, float(n.score or 0)) for n in retriever.retrieve_with(q, **case)]
            for q in QUERIES for i, case in enumerate(CASES)
        }
        reranked = {q: [(n.node.node_id, float(n.score or 0)) for n in reranking.retrieve(q)] for q in QUERIES}
    finally:
        store.close()
    return expected, reranked


@pytest.fixture(scope="module")
def search_stack(tmp_path_factory: pytest.TempPathFactory, minilm_server: str,
                 minilm_rerank_server: str) -> Iterator[SearchStack]:
    uri = str(tmp_path_factory.mktemp("search") / "search.db")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        expected, reranked = pool.submit(_fill_and_expect, uri, minilm_server, minilm_rerank_server).result()
    with rag_serve("search", None, "--milvus-uri", uri, "--collection", "docs", "--embed-url", minilm_server,
                   "--rerank-url", minilm_rerank_server, startup_timeout_s=60) as base:
        yield SearchStack(base, expected, reranked)


def _post(base: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{base}/search", json=body, timeout=60)


def test_search_server_equals_hybrid_retriever(search_stack: SearchStack) -> None:
    for (query, i), want in search_stack.expected.items():
        case = {**CASES[i], "weights": list(CASES[i].get("weights", (0.5, 0.5)))}
        resp = _post(search_stack.base, {"text": query, **case})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        got = [(c["id"], c["score"]) for c in answer["candidates"]]
        assert [g[0] for g in got] == [w[0] for w in want], (query, case)
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-5, abs=1e-7)
        assert answer["fields_searched"] == ["text_vec"]
        assert answer["reranked"] is False
        assert set(answer["timings_ms"]) == {"embed", "search"}
        assert all(c["fields"]["text"] == DOCS[c["id"]] for c in answer["candidates"])
    assert {k for (_, i), v in search_stack.expected.items() if i == 2 for k, _ in v} <= {"mars", "venus", "bread",
                                                                                             "moon"}


def test_search_server_reranks_like_local_rerank(search_stack: SearchStack) -> None:
    for query, want in search_stack.reranked.items():
        resp = _post(search_stack.base, {"text": query, "top_k": 6, "rerank": True, "top_n": TOP_N})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["reranked"] is True
        assert set(answer["timings_ms"]) == {"embed", "search", "rerank"}
        got = answer["candidates"]
        assert [c["id"] for c in got] == [w[0] for w in want]
        assert [c["rerank_score"] for c in got] == pytest.approx([w[1] for w in want], rel=1e-5, abs=1e-6)
        fused = {c["id"]: c["score"] for c in _post(search_stack.base, {"text": query, "top_k": 6}).json()["candidates"]}
        assert all(c["score"] == pytest.approx(fused[c["id"]]) for c in got)  # fused score kept beside rerank
    assert search_stack.reranked["Which planet is red?"][0][0] == "mars"


@pytest.mark.parametrize(("body", "status"), [
    ({"top_k": 3}, 422),  # no query
    ({"text": "x", "fusion": "max"}, 422),
    ({"text": "x", "top_k": 0}, 422),
    ({"text": "x", "fusion": "weighted", "weights": [0.9, 0.9]}, 400),  # weights must sum to 1
    ({"text": "x", "filters": {"no_such_field": 1}}, 400),
    ({"text": "x", "image": "aGVsbG8="}, 400),  # no --mm-embed-url
    ({"text": "x", "image": "/etc/hostname"}, 400),  # a path on the search server's host is never read
])
def test_bad_input_gets_the_envelope_and_the_server_stays_healthy(search_stack: SearchStack, body: dict[str, Any],
                                                                  status: int) -> None:
    resp = _post(search_stack.base, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == status
    assert error["message"]
    assert requests.get(f"{search_stack.base}/health", timeout=5).status_code == 200


def test_info_and_clients(search_stack: SearchStack) -> None:
    client = SearchClient(base_url=search_stack.base)
    info = client.info()
    assert info["kind"] == "search"
    assert info["collection"] == "docs"
    assert set(info["upstreams"]) == {"embed", "rerank"}
    query = QUERIES[0]
    want = search_stack.expected[(query, 0)]
    sync = client.search(query, **CASES[0])
    assert [c.id for c in sync.candidates] == [w[0] for w in want]
    async_answer = asyncio.run(client.asearch(query, top_k=6, rerank=True, top_n=TOP_N))
    assert [c.id for c in async_answer.candidates] == [w[0] for w in search_stack.reranked[query]]
    nodes = SearchServiceRetriever(client, top_k=6, rerank=True, top_n=TOP_N).retrieve(query)
    assert [n.node.node_id for n in nodes] == [w[0] for w in search_stack.reranked[query]]
    assert [n.score for n in nodes] == pytest.approx([w[1] for w in search_stack.reranked[query]])
    assert nodes[0].node.get_content() == DOCS["mars"]
    with pytest.raises(ServerResponseError, match="text and/or an image"):
        client.search(None, top_k=3)


def test_search_server_matches_its_openapi(search_stack: SearchStack) -> None:
    """Every route of the search server answers what its ``/openapi.json`` declares (validated live)."""
    from tests.e2e.test_openapi_contract import _check, _check_declared, _spec

    base = search_stack.base
    spec = _spec(base)
    seen: set[str] = set()
    for path, methods in spec["paths"].items():
        if "get" in methods and path != "/metrics":
            _check(base, spec, "get", path, 200, seen)
    answer = _check(base, spec, "post", "/search", 200, seen, body={"text": QUERIES[0], "top_k": 3, "rerank": True,
                                                                      "top_n": 2})
    assert len(answer["candidates"]) == 2
    _check(base, spec, "post", "/search", 422, seen, body={"top_k": 3})
    _check(base, spec, "post", "/search", 400, seen, body={"text": "x", "filters": {"no_such_field": 1}})
    _check(base, spec, "post", "/search", 400, seen, data=b"{not json")
    _check_declared(spec, seen)
    assert "502" in spec["paths"]["/search"]["post"]["responses"]  # an upstream server failing


#: search_func options (top_k comes from LightRAG's call) compared with SearchClient's answers.
LIGHTRAG_CASES: tuple[dict[str, Any], ...] = (*CASES, {"top_k": 6, "rerank": True, "top_n": TOP_N})


async def test_lightrag_search_func_equals_search_client(search_stack: SearchStack) -> None:
    """``integrations.lightrag.search_func`` answers what ``SearchClient`` answers, as LightRAG chunk records."""
    from integrations.lightrag import search_func

    client = SearchClient(base_url=search_stack.base)
    for case in LIGHTRAG_CASES:
        options = {k: v for k, v in case.items() if k != "top_k"}
        func = search_func(search_stack.base, **options)
        for query in QUERIES:
            got = await func(query, top_k=case["top_k"], query_embedding=[0.0] * 384)
            want = client.search(query, **case)
            assert [r["id"] for r in got] == [c.id for c in want.candidates], (query, case)
            assert [r["content"] for r in got] == [c.fields["text"] for c in want.candidates]
            assert all(r["content"] == DOCS[r["id"]] for r in got)
            scores = [c.rerank_score if want.reranked else c.score for c in want.candidates]
            assert [r["distance"] for r in got] == pytest.approx(scores, rel=1e-5, abs=1e-6)
            assert [r["fused_score"] for r in got] == pytest.approx([c.score for c in want.candidates], rel=1e-5,
                                                                     abs=1e-7)
            assert all(r["doc_id"] == r["id"] and r["file_path"] == "unknown_source" for r in got)
    default_top_k = search_func(client=client, top_k=2)
    assert len(await default_top_k(QUERIES[0])) == 2
    assert len(await default_top_k(QUERIES[0], top_k=4)) == 4  # LightRAG's top_k wins
    assert await default_top_k("", top_k=4) == []
    assert default_top_k.client is client


async def test_lightrag_naive_and_mix_queries_retrieve_through_search_func(
    search_stack: SearchStack, minilm_server: str, tmp_path: Path
) -> None:
    """Plugged in as ``rag.chunks_vdb.query``, the search server supplies LightRAG's chunks, in its order."""
    from lightrag import LightRAG, QueryParam
    from lightrag.utils import Tokenizer

    from integrations.lightrag import embedding_func, search_func
    from tests.e2e.test_embed_clients import CharTokenizer
    from tests.e2e.test_lightrag_milvus_storage import stub_llm

    # LightRAG's default (file) storages, left empty: every chunk comes from the search server. A unique
    # workspace keeps LightRAG's process-wide shared dicts apart from other tests'.
    rag = LightRAG(working_dir=str(tmp_path / "rag"), workspace=f"ls_{uuid.uuid4().hex[:8]}",
                   embedding_func=embedding_func(minilm_server), llm_model_func=stub_llm,
                   tokenizer=Tokenizer("chars", CharTokenizer()))
    await rag.initialize_storages()
    try:
        rag.chunks_vdb.query = search_func(search_stack.base, rerank=True)
        want = SearchClient(base_url=search_stack.base).search(QUERIES[0], top_k=3, rerank=True)
        for mode in ("naive", "mix"):
            param = QueryParam(mode=mode, chunk_top_k=3, top_k=3, enable_rerank=False)
            data = await rag.aquery_data(QUERIES[0], param=param)
            assert data["status"] == "success", data
            chunks = data["data"]["chunks"]
            assert [c["content"] for c in chunks] == [c.fields["text"] for c in want.candidates], mode
            assert chunks[0]["content"] == DOCS["mars"]
            context = await rag.aquery(QUERIES[0], param=QueryParam(mode=mode, only_need_context=True,
                                                                     chunk_top_k=1, enable_rerank=False))
            assert DOCS["mars"] in str(context)
    finally:
        await rag.finalize_storages()
