"""``rag_plugins.from_stack``: the clients of the running CPU stack, built from its file alone."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import requests
from PIL import Image

import rag_plugins
from rag_plugins.errors import MissingExtraError
from tests.e2e.reliability.conftest import Stack
from tests.support.serve import REPO_ROOT


def _direct_embed(stack: Stack, texts: list[str]) -> np.ndarray:
    resp = requests.post(f"{stack.urls['text']}/embed", json={"texts": texts, "input_type": "document"},
                         headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["embeddings"], dtype=np.float32)


def test_from_stack_builds_working_llamaindex_and_lightrag_clients(cpu_stack: Stack, report: Callable[..., None]) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    clients = rag_plugins.from_stack(cpu_stack.config)
    texts = ["Mars is the red planet.", "Bread bakes in an oven."]
    # Text embedding: same URL and key as the file says, same vectors as a direct call.
    got = np.asarray(clients.embedding.get_text_embedding_batch(texts), dtype=np.float32)
    assert got.shape == (2, 384)
    assert np.abs(got - _direct_embed(cpu_stack, texts)).max() < 1e-5
    assert clients.embedding.base_url == cpu_stack.urls["text"]
    # Multimodal: an image and a text land in the same space.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
    buf.seek(0)
    image_vec = clients.multimodal_embedding.get_image_embedding(buf)
    text_vec = clients.multimodal_embedding.get_text_embedding("a photo")
    assert len(image_vec) == len(text_vec) == 64
    # Reranker: a LlamaIndex postprocessor over the rerank server.
    nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.0) for i, t in enumerate(texts * 2)]
    ranked = clients.reranker.postprocess_nodes(nodes, QueryBundle("red planet"))
    assert 1 <= len(ranked) <= 4
    assert all(n.score is not None for n in ranked)
    # LightRAG functions (dimension read from /info).
    efunc = clients.lightrag_embedding_func()
    assert efunc.embedding_dim == 384
    vecs = asyncio.run(efunc.func(texts))
    assert vecs.shape == (2, 384)
    assert vecs.dtype == np.float32
    rfunc = clients.lightrag_rerank_func()
    hits = asyncio.run(rfunc("red planet", texts))
    assert sorted(h["index"] for h in hits) == [0, 1]
    assert hits[0]["relevance_score"] >= hits[1]["relevance_score"]
    report("from_stack clients exercised", "embedding, multimodal, reranker, lightrag embed + rerank")


def test_from_stack_is_torch_free(cpu_stack: Stack) -> None:
    code = (
        "import sys, rag_plugins\n"
        f"c = rag_plugins.from_stack({str(cpu_stack.config)!r})\n"
        "v = c.embedding.get_text_embedding('hello')\n"
        "assert len(v) == 384, len(v)\n"
        "assert 'torch' not in sys.modules, 'rag_plugins imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_from_stack_names_the_extra_when_yaml_is_missing(cpu_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(MissingExtraError, match=r"rag-plugins\[stack\]"):
        rag_plugins.from_stack(cpu_stack.config)


def test_from_stack_refuses_a_wrong_kind(cpu_stack: Stack) -> None:
    with pytest.raises(ValueError, match="is 'rerank', not 'embed'"):
        rag_plugins.from_stack(cpu_stack.config, embedding="rerank")
