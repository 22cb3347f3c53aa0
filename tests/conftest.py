"""Shared fixtures: the Qwen vocabulary, tiny random-weight models, the real MiniLM weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import (
    minilm_dir,
    save_gme_qwen2_vl,
    save_qwen2_vl_reranker,
    save_qwen3_embedding,
    save_qwen3_reranker,
)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 vocabulary with the official EOS-appending post-processor."""
    return save_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tok-eos"), with_eos_postprocessor=True)


@pytest.fixture(scope="session")
def qwen_tokenizer_plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 vocabulary without the EOS post-processor (like ../shared/data/qwen3-tokenizer)."""
    return save_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tok-plain"), with_eos_postprocessor=False)


@pytest.fixture(scope="session")
def tiny_qwen3_embedding(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_dir: Path) -> Path:
    return save_qwen3_embedding(tmp_path_factory.mktemp("tiny-qwen3-emb"), qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen3_embedding_plain_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path
) -> Path:
    """Same weights (same seed) as ``tiny_qwen3_embedding``, tokenizer without the EOS post-processor."""
    return save_qwen3_embedding(tmp_path_factory.mktemp("tiny-qwen3-emb-plain"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="session")
def tiny_qwen3_causal_lm(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    return save_qwen3_reranker(tmp_path_factory.mktemp("tiny-qwen3-lm"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="session")
def tiny_gme(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    """Tiny random-weight GME-Qwen2-VL (built once per session: unit, flag and e2e tests share it)."""
    return save_gme_qwen2_vl(tmp_path_factory.mktemp("tiny-gme"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="session")
def tiny_vl_reranker(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    """Tiny random-weight Qwen2-VL yes/no reranker (built once per session)."""
    return save_qwen2_vl_reranker(tmp_path_factory.mktemp("tiny-vl-reranker"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_dir()
