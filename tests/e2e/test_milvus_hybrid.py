"""Milvus multi-vector store + hybrid retriever end to end: real rag-serve (all-MiniLM-L6-v2) for text,
real Milvus Lite, LlamaIndex query engine.

The image-space embedder is ``HashImageSpaceEmbedder``, a deterministic stand-in for the multimodal
embedding server (built in a separate issue; not a mock of our servers): it maps an image file's stem and
texts to bag-of-words hash vectors. Everything else is real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag_plugins.embedding_client import EmbeddingClient
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.retriever import HybridRetriever
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.support.milvus_doubles import HashImageSpaceEmbedder
from tests.support.milvus_ingest import generated_items
from tests.support.serve import REPO_ROOT

N_NODES = 200


def open_store(uri: str, base_url: str, **kw: object) -> MultiVectorMilvusStore:
    return MultiVectorMilvusStore(EmbeddingClient(base_url), HashImageSpaceEmbedder(32),  # type: ignore[arg-type]
                                  MilvusStoreSettings(uri=uri, collection_name="kb", **kw))  # type: ignore[arg-type]


def test_ingest_same_200_nodes_twice_gives_200_rows(tmp_path: Path, minilm_server: str) -> None:
    store = open_store(str(tmp_path / "kb.db"), minilm_server, batch_size=50)
    assert store.text_dim == 384  # from the server's /info
    nodes = generated_items(N_NODES)
    first = store.upsert(nodes, show_progress=False)
    second = store.upsert(nodes, show_progress=False)
    assert first == second
    assert store.count() == N_NODES
    assert store.count({"modality": "image"}) == N_NODES // 5
    store.delete_doc("doc3")
    assert store.count() == N_NODES - N_NODES // 10
    store.close()


def test_killed_ingestion_resumes_without_duplicates(tmp_path: Path, minilm_server: str) -> None:
    uri = str(tmp_path / "kb.db")
    cmd = [sys.executable, "-m", "tests.support.milvus_ingest", "--uri", uri, "--base-url", minilm_server,
           "--n", str(N_NODES), "--batch-size", "10"]
    proc = subprocess.Popen([*cmd, "--delay", "0.3"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    seen = 0
    while seen < N_NODES // 20 and time.monotonic() < deadline:  # halfway: 10 of 20 batches embedded
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("batch"):
            seen = int(line.split()[1])
    os.killpg(proc.pid, signal.SIGKILL)  # the ingesting process (and anything it started)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert seen == N_NODES // 20

    # Re-run in this process (a Milvus Lite file is locked by the one process that opened it, and the
    # lock is held until that process exits, so the check and the re-run share this process).
    store = open_store(uri, minilm_server, batch_size=10)
    assert store.count() < N_NODES
    store.upsert(generated_items(N_NODES), show_progress=False)
    assert store.count() == N_NODES
    expected = {item.key for item in generated_items(N_NODES)}
    rows = store.query("", limit=1000, output_fields=["id"])
    assert len(rows) == N_NODES
    assert {r["id"] for r in rows} == expected
    store.close()


@pytest.fixture
def kb(tmp_path: Path, minilm_server: str) -> MultiVectorMilvusStore:
    store = open_store(str(tmp_path / "kb.db"), minilm_server)
    store.upsert([
        StoreItem(text="Mars is known as the Red Planet because of iron oxide on its surface.", doc_id="space",
                  chunk_id="0"),
        StoreItem(text="Jupiter is the largest planet in the Solar System.", doc_id="space", chunk_id="1"),
        StoreItem(text="The Pacific is the deepest ocean on Earth.", doc_id="earth", chunk_id="0"),
        StoreItem(image=str(tmp_path / "red_planet_mars.png"), caption="Mars, the red planet, seen from orbit.",
                  doc_id="space", chunk_id="img0", page=2),
        StoreItem(image="https://example.org/deep_ocean.png", doc_id="earth", chunk_id="img0"),
    ], show_progress=False)
    return store


def test_query_engine_answers_with_text_and_image_sources(kb: MultiVectorMilvusStore) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import ImageNode

    retriever = HybridRetriever(kb, top_k=4, fusion="rrf")
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("Which planet is the red planet Mars?")
    assert str(response)
    sources = response.source_nodes
    assert sources[0].node.metadata["doc_id"] == "space"
    images = [s.node for s in sources if isinstance(s.node, ImageNode)]
    texts = [s.node for s in sources if not isinstance(s.node, ImageNode)]
    assert texts
    assert any("Mars" in t.get_content() for t in texts)
    assert [i.image_path for i in images] == [kb.query({"chunk_id": "img0", "doc_id": "space"})[0]["uri"]]
    assert images[0].metadata["page"] == 2

    url_hit = retriever.retrieve_with("deep ocean", filters={"doc_id": "earth"}, top_k=5)
    url_images = [n.node for n in url_hit if isinstance(n.node, ImageNode)]
    assert [i.image_url for i in url_images] == ["https://example.org/deep_ocean.png"]


async def test_async_retrieval_matches_sync(kb: MultiVectorMilvusStore) -> None:
    retriever = HybridRetriever(kb, top_k=5, fusion="weighted", weights=(0.7, 0.3))
    sync = [(n.node.node_id, round(n.score, 5)) for n in retriever.retrieve("largest planet")]
    got = [(n.node.node_id, round(n.score, 5)) for n in await retriever.aretrieve("largest planet")]
    assert got == sync
    assert "Jupiter" in (await retriever.aretrieve("largest planet"))[0].node.get_content()


def test_rerank_stage(kb: MultiVectorMilvusStore, minilm_rerank_server: str) -> None:
    from rag_plugins.errors import ServerResponseError
    from rag_plugins.rerank import LocalRerank

    reranker = LocalRerank(base_url=minilm_rerank_server, top_n=2, keep_retrieval_score=True)
    # MiniLM is a text-only reranker: restrict to text items.
    retriever = HybridRetriever(kb, top_k=5, reranker=reranker, filters={"modality": "text"})
    got = retriever.retrieve("What is the largest planet?")
    assert len(got) == 2
    assert "Jupiter" in got[0].node.get_content()
    for mode in ("embed", "llm"):  # bookkeeping keys hidden from the reranker and the LLM
        content = got[0].node.get_content(metadata_mode=mode)
        assert "Jupiter" in content
        assert "doc_id" not in content
        assert "chunk_id" not in content
    assert "retrieval_score" in got[0].node.metadata
    assert got[0].score >= got[1].score
    # Image hits reach the rerank stage as images: this text-only server refuses them, by name.
    with pytest.raises(ServerResponseError, match="has an image"):
        retriever.retrieve_with("red planet", filters={"modality": "image"})
