"""Session-wide rerank servers for the ``test_rerank_*`` e2e tests (imported by ``tests/e2e/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serve import rag_serve

#: Limits of the shared tiny Qwen3-Reranker server.
RERANK_MAX_LENGTH = 128
RERANK_MAX_BATCH_TOKENS = 512
RERANK_MAX_CLIENT_BATCH = 150
RERANK_MODEL_NAME = "tiny-qwen3-reranker"


@pytest.fixture(scope="session")
def qwen_rerank_server(tiny_qwen3_causal_lm: Path) -> Iterator[str]:
    """Tiny random-weight Qwen3-Reranker (causal LM + real Qwen vocabulary), --max-length 128."""
    with rag_serve(
        "rerank", tiny_qwen3_causal_lm,
        "--served-model-name", RERANK_MODEL_NAME,
        "--max-length", str(RERANK_MAX_LENGTH),
        "--max-batch-tokens", str(RERANK_MAX_BATCH_TOKENS),
        "--max-client-batch", str(RERANK_MAX_CLIENT_BATCH),
    ) as base:
        yield base


@pytest.fixture(scope="session")
def minilm_rerank_server(minilm: Path) -> Iterator[str]:
    """The real all-MiniLM-L6-v2 served for /rerank as a cosine bi-encoder."""
    with rag_serve("rerank", minilm, "--served-model-name", "all-MiniLM-L6-v2") as base:
        yield base
