"""Session-wide rag-serve processes shared by the e2e tests (each started once, on loopback, on CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serve import rag_serve

#: Limits of the shared tiny-Qwen server that the bad-input tests probe.
QWEN_MAX_CLIENT_BATCH = 64
QWEN_MAX_BODY_BYTES = 200_000
SHORT_MAX_LENGTH = 64


@pytest.fixture(scope="session")
def qwen_server(tiny_qwen3_embedding: Path) -> Iterator[str]:
    """Tiny random-weight Qwen3-Embedding (tokenizer with the EOS post-processor)."""
    with rag_serve(
        "embed", tiny_qwen3_embedding,
        "--max-client-batch", str(QWEN_MAX_CLIENT_BATCH), "--max-body-bytes", str(QWEN_MAX_BODY_BYTES),
    ) as base:
        yield base


@pytest.fixture(scope="session")
def qwen_plain_tokenizer_server(tiny_qwen3_embedding_plain_tokenizer: Path) -> Iterator[str]:
    """Same weights, tokenizer without the EOS post-processor."""
    with rag_serve("embed", tiny_qwen3_embedding_plain_tokenizer) as base:
        yield base


@pytest.fixture(scope="session")
def qwen_short_server(tiny_qwen3_embedding: Path) -> Iterator[str]:
    """Tiny Qwen3 with --max-length 64, to test truncation."""
    with rag_serve(
        "embed", tiny_qwen3_embedding, "--max-length", str(SHORT_MAX_LENGTH), "--max-batch-tokens", "256"
    ) as base:
        yield base


@pytest.fixture(scope="session")
def minilm_server(minilm: Path) -> Iterator[str]:
    """The real all-MiniLM-L6-v2 weights."""
    with rag_serve("embed", minilm, "--served-model-name", "all-MiniLM-L6-v2") as base:
        yield base


# Rerank servers (issue 3) live in their own module; importing them here makes them session fixtures.
# Multimodal embedding servers (issue 4).
from tests.e2e.mm_fixtures import mm_dirs, mm_server, mm_server_no_urls  # noqa: E402, F401
from tests.e2e.rerank_fixtures import minilm_rerank_server, qwen_rerank_server  # noqa: E402, F401
