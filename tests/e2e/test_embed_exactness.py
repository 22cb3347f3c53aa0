"""Exactness: the server's vectors equal the Qwen3-Embedding model-card recipe, written out plainly here.

The model has random weights (it cannot test quality); equality to ~1e-5 in fp32 proves the server applies
the recipe: query template, EOS termination, left padding, last-token pooling, L2 norm, Matryoshka, and
that a vector does not depend on the batch it lands in.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from tests.e2e.conftest import SHORT_MAX_LENGTH
from tests.support.embed_http import embed, embed_openai, max_abs_diff

TOL = 1e-5
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
CUSTOM_TASK = "Given a question, retrieve Wikipedia passages that answer the question"
QUERIES = ["What is the capital of China?", "Explain gravity", "how do rotary position embeddings work?"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
    "RoPE rotates query and key vectors by an angle proportional to the position.",
]


# ---------------------------------------------------------------------------------- the model-card recipe
def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


class CardRecipe:
    """Qwen3-Embedding usage with transformers, as in its model card."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        self.model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    @torch.no_grad()
    def embed(self, input_texts: list[str], max_length: int = 8192, dimensions: int | None = None) -> np.ndarray:
        batch_dict = self.tokenizer(
            input_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        outputs = self.model(**batch_dict)
        embeddings = outputs.last_hidden_state[:, -1]  # left padding: the last column is every last token
        embeddings = F.normalize(embeddings, p=2, dim=1)
        if dimensions is not None:  # Matryoshka: truncate, then re-normalise
            embeddings = F.normalize(embeddings[:, :dimensions], p=2, dim=1)
        return embeddings.numpy().astype(np.float64)


@pytest.fixture(scope="module")
def card(tiny_qwen3_embedding: Path) -> CardRecipe:
    return CardRecipe(tiny_qwen3_embedding)


def mixed_length_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "retrieval", "vector", "token", "model", "server", "batch", "query", "passage", "ocean", "mars"]
    lengths = [1, 2, 3, 5, 8, 13, 40, 120, 300] + [rng.randint(1, 200) for _ in range(n - 9)]
    rng.shuffle(lengths)
    return [f"text {i}: " + " ".join(rng.choice(words) for _ in range(k)) for i, k in enumerate(lengths)]


# ----------------------------------------------------------------------------------------------- tests
def test_card_tokenizer_really_appends_eos(card: CardRecipe) -> None:
    ids = card.tokenizer(["hello"], padding=True)["input_ids"][0]
    assert ids[-1] == 151643


def test_queries_with_default_instruction(qwen_server: str, card: CardRecipe) -> None:
    expected = card.embed([get_detailed_instruct(DEFAULT_TASK, q) for q in QUERIES])
    assert max_abs_diff(embed(qwen_server, QUERIES, input_type="query"), expected) <= TOL
    # "prompt": "query" is the seed spelling of the same thing.
    assert max_abs_diff(embed(qwen_server, QUERIES, prompt="query"), expected) <= TOL


def test_queries_with_custom_instruction(qwen_server: str, card: CardRecipe) -> None:
    expected = card.embed([get_detailed_instruct(CUSTOM_TASK, q) for q in QUERIES])
    got = embed(qwen_server, QUERIES, input_type="query", instruction=CUSTOM_TASK)
    assert max_abs_diff(got, expected) <= TOL
    default = card.embed([get_detailed_instruct(DEFAULT_TASK, q) for q in QUERIES])
    assert max_abs_diff(got, default) > 1e-3, "the instruction made no difference"


def test_documents_get_no_instruction(qwen_server: str, card: CardRecipe) -> None:
    expected = card.embed(DOCUMENTS)
    assert max_abs_diff(embed(qwen_server, DOCUMENTS), expected) <= TOL
    assert max_abs_diff(embed(qwen_server, DOCUMENTS, input_type="document"), expected) <= TOL
    assert max_abs_diff(embed(qwen_server, DOCUMENTS, input_type="passage"), expected) <= TOL


@pytest.mark.parametrize("dimensions", [32, 48, 64])
def test_matryoshka_dimensions(qwen_server: str, card: CardRecipe, dimensions: int) -> None:
    expected_q = card.embed([get_detailed_instruct(DEFAULT_TASK, q) for q in QUERIES], dimensions=dimensions)
    got_q = embed(qwen_server, QUERIES, input_type="query", dimensions=dimensions)
    assert got_q.shape == (len(QUERIES), dimensions)
    assert max_abs_diff(got_q, expected_q) <= TOL
    np.testing.assert_allclose(np.linalg.norm(got_q, axis=1), 1.0, atol=1e-5)
    expected_d = card.embed(DOCUMENTS, dimensions=dimensions)
    assert max_abs_diff(embed(qwen_server, DOCUMENTS, dimensions=dimensions), expected_d) <= TOL


def test_normalize_false_returns_the_raw_pooled_vector(qwen_server: str, card: CardRecipe) -> None:
    raw = embed(qwen_server, DOCUMENTS, normalize=False)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.all(np.abs(norms - 1.0) > 1e-3)  # really not normalised
    assert max_abs_diff(raw / norms, card.embed(DOCUMENTS)) <= TOL


def test_openai_route_gives_the_same_vectors(qwen_server: str, card: CardRecipe) -> None:
    docs = card.embed(DOCUMENTS)
    for fmt in ("float", "base64"):
        got = embed_openai(qwen_server, {"input": DOCUMENTS, "model": "x", "encoding_format": fmt})
        assert max_abs_diff(got, docs) <= TOL
    queries = embed_openai(qwen_server, {"input": QUERIES, "input_type": "query", "instruction": CUSTOM_TASK})
    assert max_abs_diff(queries, card.embed([get_detailed_instruct(CUSTOM_TASK, q) for q in QUERIES])) <= TOL
    single = embed_openai(qwen_server, {"input": DOCUMENTS[0], "dimensions": 32})
    assert max_abs_diff(single, card.embed(DOCUMENTS[:1], dimensions=32)) <= TOL


def test_token_array_input_gets_eos_and_equals_text_input(qwen_server: str, card: CardRecipe) -> None:
    plain_ids = [card.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCUMENTS]
    assert all(ids[-1] != 151643 for ids in plain_ids)
    got = embed_openai(qwen_server, {"input": plain_ids})
    assert max_abs_diff(got, card.embed(DOCUMENTS)) <= TOL
    with_eos = embed_openai(qwen_server, {"input": [*plain_ids[0], 151643]})  # one flat token array
    assert max_abs_diff(with_eos, card.embed(DOCUMENTS[:1])) <= TOL


def test_vector_is_independent_of_the_batch(qwen_server: str, card: CardRecipe) -> None:
    texts = mixed_length_texts(50)
    batched = embed(qwen_server, texts)
    alone = np.concatenate([embed(qwen_server, [t]) for t in texts])
    assert max_abs_diff(batched, alone) <= TOL
    assert max_abs_diff(alone, np.concatenate([card.embed([t]) for t in texts])) <= TOL
    # Queries in a mixed batch too.
    q_batched = embed(qwen_server, texts[:20], input_type="query")
    q_alone = np.concatenate([embed(qwen_server, [t], input_type="query") for t in texts[:20]])
    assert max_abs_diff(q_batched, q_alone) <= TOL


def test_concurrent_requests_do_not_mix_vectors(qwen_server: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = mixed_length_texts(24, seed=3)
    alone = {t: embed(qwen_server, [t])[0] for t in texts}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: embed(qwen_server, [t])[0], texts * 2))
    for t, v in zip(texts * 2, results, strict=True):
        assert max_abs_diff(v, alone[t]) <= TOL


def test_tokenizer_without_eos_postprocessor_gives_same_vectors(
    qwen_server: str, qwen_plain_tokenizer_server: str, tiny_qwen3_embedding_plain_tokenizer: Path
) -> None:
    plain = AutoTokenizer.from_pretrained(str(tiny_qwen3_embedding_plain_tokenizer))
    assert plain("hello")["input_ids"][-1] != 151643, "fixture tokenizer should not append EOS"
    for options in ({}, {"input_type": "query"}, {"input_type": "query", "instruction": CUSTOM_TASK}):
        a = embed(qwen_server, QUERIES + DOCUMENTS, **options)
        b = embed(qwen_plain_tokenizer_server, QUERIES + DOCUMENTS, **options)
        assert max_abs_diff(a, b) <= TOL, options
    usage_a = requests.post(f"{qwen_server}/embed", json={"texts": DOCUMENTS}, timeout=30).json()["usage"]
    usage_b = requests.post(f"{qwen_plain_tokenizer_server}/embed", json={"texts": DOCUMENTS}, timeout=30).json()
    assert usage_a == usage_b["usage"]  # the same token count: EOS appended exactly once


def long_text() -> str:
    return " ".join(f"word{i} and some more filler text" for i in range(120))


def test_truncation_to_max_length_matches_card(qwen_short_server: str, card: CardRecipe) -> None:
    text = long_text()
    n_tokens = len(card.tokenizer(text)["input_ids"])
    assert n_tokens > 4 * SHORT_MAX_LENGTH
    info = requests.get(f"{qwen_short_server}/info", timeout=30).json()
    assert info["max_length"] == SHORT_MAX_LENGTH
    resp = requests.post(f"{qwen_short_server}/embed", json={"texts": [text, "short one"]}, timeout=30)
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["embeddings"])
    expected = card.embed([text, "short one"], max_length=SHORT_MAX_LENGTH)
    assert max_abs_diff(got, expected) <= TOL
    short_tokens = len(card.tokenizer("short one")["input_ids"])
    assert resp.json()["usage"]["prompt_tokens"] == SHORT_MAX_LENGTH + short_tokens
    # Truncated queries too (the template counts toward the limit).
    q = embed(qwen_short_server, [text], input_type="query")
    assert max_abs_diff(q, card.embed([get_detailed_instruct(DEFAULT_TASK, text)], max_length=SHORT_MAX_LENGTH)) <= TOL


def test_truncate_false_refuses_long_text_with_token_count(qwen_short_server: str, card: CardRecipe) -> None:
    text = long_text()
    n_tokens = len(card.tokenizer(text)["input_ids"])
    resp = requests.post(f"{qwen_short_server}/embed", json={"texts": ["fine", text], "truncate": False}, timeout=30)
    assert resp.status_code == 413, resp.text
    error = resp.json()["error"]
    assert error["code"] == 413
    assert str(n_tokens) in error["message"]
    assert str(SHORT_MAX_LENGTH) in error["message"]
    assert "input 1" in error["message"]
    # A text within the limit is served with truncate=false.
    ok = requests.post(f"{qwen_short_server}/embed", json={"texts": ["fine"], "truncate": False}, timeout=30)
    assert ok.status_code == 200


async def test_end_token_comes_from_tokenizer_then_recipe_not_config(
    tmp_path: Path, qwen_tokenizer_dir: Path, qwen_tokenizer_plain_dir: Path
) -> None:
    """A checkpoint whose config names ``<|im_end|>`` (151645) as EOS still ends inputs with ``<|endoftext|>``.

    Served with the official tokenizer (its post-processor appends ``<|endoftext|>``) or with a copy without
    the post-processor, the vectors equal the model card's recipe (which runs the official tokenizer).
    """
    from servers.engines.embedding import EmbeddingEngine
    from servers.settings import ServerSettings
    from testkit.random_models import IM_END_ID, save_qwen3_embedding

    with_pp = save_qwen3_embedding(tmp_path / "with-pp", qwen_tokenizer_dir, eos_token_id=IM_END_ID)
    plain = save_qwen3_embedding(tmp_path / "plain", qwen_tokenizer_plain_dir, eos_token_id=IM_END_ID)
    expected = CardRecipe(with_pp).embed([get_detailed_instruct(DEFAULT_TASK, q) for q in QUERIES] + DOCUMENTS)
    for model_dir in (with_pp, plain):
        engine = EmbeddingEngine.from_settings(ServerSettings(model=str(model_dir), device="cpu", warmup=False))
        assert engine.backend.eos_token_id == 151643, model_dir.name  # type: ignore[attr-defined]
        async with engine:
            queries = (await engine.embed(QUERIES, input_type="query")).vectors
            docs = (await engine.embed(DOCUMENTS, input_type="document")).vectors
        assert max_abs_diff(np.concatenate([queries, docs]), expected) <= TOL, model_dir.name
