"""Real clients, unchanged, against real rag-serve processes: openai SDK, LlamaIndex, LightRAG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag_plugins import EmbeddingClient, LocalEmbedding
from tests.support.embed_http import embed, max_abs_diff
from tests.support.planets import MARS, PLANETS, QUERY

QWEN_TASK = "Given a web search query, retrieve relevant passages that answer the query"
TOL = 1e-5


# ---------------------------------------------------------------------------------------------- openai SDK
def test_openai_sdk_default_base64(minilm_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=minilm_server + "/v1", api_key="x")
    raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=PLANETS)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"  # the SDK's own default
    answer = raw.parse()
    got = np.asarray([d.embedding for d in sorted(answer.data, key=lambda d: d.index)])
    assert max_abs_diff(got, embed(minilm_server, PLANETS)) <= TOL
    assert answer.model == "all-MiniLM-L6-v2"
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0


def test_openai_sdk_float_and_token_arrays(minilm_server: str, minilm: Path) -> None:
    from openai import OpenAI
    from transformers import AutoTokenizer

    client = OpenAI(base_url=minilm_server + "/v1", api_key="x")
    expected = embed(minilm_server, PLANETS)
    floats = client.embeddings.create(model="m", input=PLANETS, encoding_format="float")
    assert max_abs_diff(np.asarray([d.embedding for d in floats.data]), expected) <= TOL
    single = client.embeddings.create(model="m", input=MARS, encoding_format="float")
    assert max_abs_diff(np.asarray([single.data[0].embedding]), expected[1:2]) <= TOL

    ids = AutoTokenizer.from_pretrained(str(minilm))(PLANETS)["input_ids"]
    tokens = client.embeddings.create(model="m", input=ids)
    assert max_abs_diff(np.asarray([d.embedding for d in tokens.data]), expected) <= TOL
    one = client.embeddings.create(model="m", input=ids[1])
    assert max_abs_diff(np.asarray([one.data[0].embedding]), expected[1:2]) <= TOL


def test_openai_sdk_error_is_an_api_error(minilm_server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=minilm_server + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.embeddings.create(model="m", input=[])
    assert "empty list" in str(info.value)


# --------------------------------------------------------------------------------------------- LlamaIndex
def planet_index(embed_model: LocalEmbedding) -> object:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    nodes = [TextNode(text=t, id_=f"planet-{i}") for i, t in enumerate(PLANETS)]
    return VectorStoreIndex(nodes=nodes, embed_model=embed_model)


@pytest.mark.parametrize("api_style", ["native", "openai"])
def test_llamaindex_sync_retrieval(minilm_server: str, api_style: str) -> None:
    base = minilm_server if api_style == "native" else minilm_server + "/v1"
    index = planet_index(LocalEmbedding(base_url=base, api_style=api_style, model="all-MiniLM-L6-v2"))
    hits = index.as_retriever(similarity_top_k=2).retrieve(QUERY)  # type: ignore[attr-defined]
    assert hits[0].node.get_content() == MARS
    assert hits[0].score == pytest.approx(0.8121, abs=0.002)


@pytest.mark.parametrize("api_style", ["native", "openai"])
async def test_llamaindex_async_retrieval(minilm_server: str, api_style: str) -> None:
    base = minilm_server if api_style == "native" else minilm_server + "/v1"
    embed_model = LocalEmbedding(base_url=base, api_style=api_style, model="all-MiniLM-L6-v2")
    index = planet_index(embed_model)
    hits = await index.as_retriever(similarity_top_k=2).aretrieve(QUERY)  # type: ignore[attr-defined]
    assert hits[0].node.get_content() == MARS
    vectors = await embed_model.aget_text_embedding_batch(PLANETS)
    assert max_abs_diff(np.asarray(vectors), embed(minilm_server, PLANETS)) <= TOL
    await embed_model.client.http.aclose()


def test_local_embedding_query_vs_document_on_qwen(qwen_server: str) -> None:
    q = "how do rockets work?"
    native = LocalEmbedding(base_url=qwen_server)
    server_query = embed(qwen_server, [q], input_type="query")
    server_doc = embed(qwen_server, [q], input_type="document")
    assert max_abs_diff(np.asarray([native.get_query_embedding(q)]), server_query) <= TOL
    assert max_abs_diff(np.asarray([native.get_text_embedding(q)]), server_doc) <= TOL
    assert max_abs_diff(server_query, server_doc) > 1e-3

    custom = LocalEmbedding(base_url=qwen_server, query_instruction="Find code", dimensions=32)
    expected = embed(qwen_server, [q], input_type="query", instruction="Find code", dimensions=32)
    assert max_abs_diff(np.asarray([custom.get_query_embedding(q)]), expected) <= TOL

    # OpenAI style applies the instruction client-side with the Qwen template: the same vector.
    openai_style = LocalEmbedding(base_url=qwen_server + "/v1", api_style="openai", query_instruction=QWEN_TASK)
    assert max_abs_diff(np.asarray([openai_style.get_query_embedding(q)]), server_query) <= TOL


def test_embedding_client_batches_and_info(qwen_server: str) -> None:
    texts = [f"document number {i} " + "x" * (i % 7) for i in range(23)]
    client = EmbeddingClient(base_url=qwen_server, batch_size=5)
    got = client.embed(texts)
    assert got.dtype == np.float32
    assert got.shape == (23, 64)
    assert max_abs_diff(got, embed(qwen_server, texts)) <= TOL
    assert client.info()["dim"] == 64
    client.http.close()


# ----------------------------------------------------------------------------------------------- LightRAG
class CharTokenizer:
    """Offline stand-in for tiktoken: one token per character (thread-safe, deep-copyable)."""

    def encode(self, content: str) -> list[int]:
        return [ord(c) for c in content]

    def decode(self, tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)


async def stub_llm(prompt: str, system_prompt: str | None = None, history_messages: object = None, **_: object) -> str:
    """Deterministic LLM: extracts nothing, so insertion only chunks and embeds."""
    return ""


async def test_lightrag_naive_query_finds_the_right_chunk(minilm_server: str, tmp_path: Path) -> None:
    from lightrag import LightRAG, QueryParam
    from lightrag.utils import Tokenizer

    from integrations.lightrag import embedding_func

    func = embedding_func(minilm_server)
    assert func.embedding_dim == 384
    assert func.max_token_size == 256
    rag = LightRAG(
        working_dir=str(tmp_path), embedding_func=func, llm_model_func=stub_llm,
        tokenizer=Tokenizer("chars", CharTokenizer()),
    )
    await rag.initialize_storages()
    try:
        await rag.ainsert(PLANETS)
        param = QueryParam(mode="naive", only_need_context=True, top_k=1, chunk_top_k=1, enable_rerank=False)
        context = await rag.aquery(QUERY, param=param)
    finally:
        await rag.finalize_storages()
    assert isinstance(context, str)
    assert MARS in context
    assert not any(p in context for p in PLANETS if p != MARS)


async def test_lightrag_embedding_func_sends_context_as_input_type(qwen_server: str) -> None:
    from integrations.lightrag import embedding_func

    func = embedding_func(qwen_server)
    assert func.embedding_dim == 64
    assert func.supports_asymmetric is True
    texts = ["what is a transformer?", "attention is all you need"]
    as_query = await func(texts, context="query")
    as_document = await func(texts, context="document")
    default = await func(texts)
    assert isinstance(as_query, np.ndarray)
    assert as_query.shape == (2, 64)
    assert as_query.dtype == np.float32
    assert max_abs_diff(as_query, embed(qwen_server, texts, input_type="query")) <= TOL
    assert max_abs_diff(as_document, embed(qwen_server, texts, input_type="document")) <= TOL
    assert max_abs_diff(default, as_document) <= TOL
    assert max_abs_diff(as_query, as_document) > 1e-3
    # LightRAG passes extra keywords (e.g. _priority); they must be accepted.
    assert (await func(texts[:1], context="query", _priority=5)).shape == (1, 64)

    custom = embedding_func(qwen_server, query_instruction="Find code", dimensions=32)
    assert custom.embedding_dim == 32
    got = await custom(texts, context="query")
    assert max_abs_diff(got, embed(qwen_server, texts, input_type="query", instruction="Find code", dimensions=32)) <= TOL
