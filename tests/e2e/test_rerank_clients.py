"""Stock clients and our client classes against a real rerank server: TEI (LlamaIndex), LightRAG's Cohere/Jina
helpers, requests in the vLLM shape, ``RerankClient``, ``LocalRerank`` in a query engine, and LightRAG's
``aquery`` with ``enable_rerank``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from integrations.lightrag import embedding_func, rerank_model_func
from rag_plugins.errors import ServerResponseError
from rag_plugins.rerank_client import RerankClient
from tests.support.planets import PLANETS as FOUR_PLANETS
from tests.support.planets import QUERY

PLANETS = [
    *FOUR_PLANETS,
    "Mercury is the smallest planet and the closest to the Sun.",
    "Neptune is a cold, blue ice giant far from the Sun.",
]


def server_scores(base: str, docs: list[str] = PLANETS, query: str = QUERY) -> np.ndarray:
    r = requests.post(base + "/rerank", json={"query": query, "docs": docs}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["scores"])


def best_first(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")]


# ------------------------------------------------------------------------------------------ stock clients
def test_llama_index_tei_reranker_unchanged(qwen_rerank_server: str) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    scores = server_scores(qwen_rerank_server)
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.1 * i) for i, t in enumerate(PLANETS)]
    tei = TextEmbeddingInference(base_url=qwen_rerank_server, top_n=3)
    out = tei.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in best_first(scores)[:3]]
    np.testing.assert_allclose([n.score for n in out], scores[best_first(scores)[:3]], atol=1e-6)


@pytest.mark.parametrize("helper", ["cohere_rerank", "jina_rerank"])
def test_lightrag_cohere_and_jina_helpers_unchanged(qwen_rerank_server: str, helper: str) -> None:
    import lightrag.rerank

    fn = getattr(lightrag.rerank, helper)
    scores = server_scores(qwen_rerank_server)
    results = asyncio.run(fn(query=QUERY, documents=PLANETS, top_n=4, api_key="unused",
                             base_url=qwen_rerank_server + "/v1/rerank", model="tiny"))
    assert [r["index"] for r in results] == best_first(scores)[:4]
    np.testing.assert_allclose([r["relevance_score"] for r in results], scores[best_first(scores)[:4]], atol=1e-6)


def test_requests_in_the_vllm_score_shape(qwen_rerank_server: str) -> None:
    scores = server_scores(qwen_rerank_server)
    r = requests.post(qwen_rerank_server + "/v1/score", json={"model": "x", "text_1": QUERY, "text_2": PLANETS},
                      timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    np.testing.assert_allclose([d["score"] for d in sorted(data, key=lambda d: d["index"])], scores, atol=1e-6)


# ------------------------------------------------------------------------------------------ our clients
@pytest.mark.parametrize("api_style", ["native", "cohere"])
def test_rerank_client_both_styles_sync_and_async(qwen_rerank_server: str, api_style: str) -> None:
    scores = server_scores(qwen_rerank_server)
    client = RerankClient(base_url=qwen_rerank_server, api_style=api_style, max_documents_per_request=4)  # type: ignore[arg-type]
    hits = client.rerank(QUERY, PLANETS, top_n=5)  # split over two requests, merged
    assert [h.index for h in hits] == best_first(scores)[:5]
    np.testing.assert_allclose([h.score for h in hits], scores[best_first(scores)[:5]], atol=1e-6)
    ahits = asyncio.run(client.arerank(QUERY, PLANETS))
    assert [h.index for h in ahits] == best_first(scores)
    assert client.rerank(QUERY, []) == []


def test_rerank_client_raises_the_server_message(qwen_rerank_server: str) -> None:
    client = RerankClient(base_url=qwen_rerank_server, max_retries=0)
    with pytest.raises(ServerResponseError, match="query") as info:
        client.rerank("   ", PLANETS)
    assert info.value.status == 422


def test_rerank_model_func_for_lightrag(qwen_rerank_server: str) -> None:
    scores = server_scores(qwen_rerank_server)
    for style in ("native", "cohere"):
        fn = rerank_model_func(qwen_rerank_server, api_style=style)  # type: ignore[arg-type]
        results = asyncio.run(fn(query=QUERY, documents=PLANETS, top_n=3))
        assert [r["index"] for r in results] == best_first(scores)[:3]
        assert all(set(r) == {"index", "relevance_score"} for r in results)
    everything = asyncio.run(fn(QUERY, [{"content": p} for p in PLANETS]))
    assert [r["index"] for r in everything] == best_first(scores)


def test_local_rerank_in_a_llama_index_query_engine(qwen_rerank_server: str, minilm_server: str) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.llms import MockLLM
    from llama_index.core.node_parser import SentenceSplitter

    from rag_plugins.embedding import LocalEmbedding
    from rag_plugins.rerank import LocalRerank

    seen: list[str] = []

    class Recorder(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if event.class_name() in ("ReRankStartEvent", "ReRankEndEvent"):
                seen.append(event.class_name())

    get_dispatcher().add_event_handler(Recorder())
    embed = LocalEmbedding(base_url=minilm_server)
    index = VectorStoreIndex.from_documents(
        [Document(text=t, id_=f"d{i}") for i, t in enumerate(PLANETS)], embed_model=embed,
        transformations=[SentenceSplitter(chunk_size=512)],
    )
    reranker = LocalRerank(base_url=qwen_rerank_server, top_n=3, keep_retrieval_score=True)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=6, node_postprocessors=[reranker])
    response = engine.query(QUERY)
    scores = server_scores(qwen_rerank_server)
    by_text = {t: s for t, s in zip(PLANETS, scores, strict=True)}
    got = [(n.node.get_content(), n.score) for n in response.source_nodes]
    assert len(got) == 3
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert [t for t, _ in got] == [PLANETS[i] for i in best_first(scores)[:3]]
    for text, score in got:
        assert score == pytest.approx(by_text[text], abs=1e-6)
    retrieval = [n.node.metadata["retrieval_score"] for n in response.source_nodes]
    assert all(0.0 < r <= 1.0 for r in retrieval)  # MiniLM cosine from the vector search, kept
    assert seen.count("ReRankStartEvent") >= 1
    assert seen.count("ReRankEndEvent") >= 1

    # The async path gives the same nodes.
    aresponse = asyncio.run(engine.aquery(QUERY))
    assert [n.node.get_content() for n in aresponse.source_nodes] == [t for t, _ in got]


def test_lightrag_aquery_with_enable_rerank_keeps_our_order(
    qwen_rerank_server: str, minilm_server: str, tmp_path: Path
) -> None:
    from lightrag import LightRAG, QueryParam
    from lightrag.utils import Tokenizer

    class CharTokenizer:
        def encode(self, content: str) -> list[int]:
            return [ord(c) for c in content]

        def decode(self, tokens: list[int]) -> str:
            return "".join(chr(t) for t in tokens)

    inner = rerank_model_func(qwen_rerank_server)
    calls: list[tuple[list[str], list[dict[str, Any]]]] = []

    async def recording_rerank(query: str, documents: list[str], top_n: int | None = None, **kw: Any) -> Any:
        results = await inner(query, documents, top_n=top_n, **kw)
        calls.append((list(documents), results))
        return results

    prompts: list[str] = []

    async def stub_llm(prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        prompts.append((system_prompt or "") + "\n" + prompt)
        return "stub answer"

    async def run() -> str:
        rag = LightRAG(
            working_dir=str(tmp_path), workspace="rerank-test", llm_model_func=stub_llm,
            embedding_func=embedding_func(minilm_server), rerank_model_func=recording_rerank,
            tokenizer=Tokenizer("chars", CharTokenizer()), min_rerank_score=0.0,
        )
        await rag.initialize_storages()
        try:
            await rag.ainsert_custom_chunks("\n".join(PLANETS), list(PLANETS), doc_id="planets")
            answer = await rag.aquery(QUERY, param=QueryParam(mode="naive", enable_rerank=True, top_k=6,
                                                              chunk_top_k=6))
        finally:
            await rag.finalize_storages()
        return str(answer)

    answer = asyncio.run(run())
    assert answer == "stub answer"
    assert len(calls) == 1
    documents, results = calls[0]
    assert sorted(documents) == sorted(PLANETS)
    ranked = [documents[r["index"]] for r in results]
    scores = server_scores(qwen_rerank_server, documents)
    assert ranked == [documents[i] for i in best_first(scores)]
    # The answer prompt lists the chunks in our order.
    prompt = prompts[-1]
    positions = [prompt.index(text) for text in ranked]
    assert positions == sorted(positions)
