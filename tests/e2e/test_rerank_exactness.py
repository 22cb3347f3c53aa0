"""The rerank server's scores equal the Qwen3-Reranker model-card recipe, written out plainly here, and do
not depend on the batch a document lands in. Tiny random weights of the real
architecture test exactness (same numbers to ~1e-5 in fp32), not quality."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from servers.engines.rerank import RerankEngine
from servers.settings import ServerSettings
from tests.e2e.rerank_fixtures import RERANK_MAX_LENGTH
from tests.support.rerank_models import save_qwen3_seq_cls_from_causal_lm, save_tiny_bert_cross_encoder

QUERY = "What is the capital of China?"
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
    "北京是中华人民共和国的首都。",
    "Paris is the capital of France and its largest city.",
]
CUSTOM_INSTRUCTION = "Given a question, find the passage that names a city"
LONG_DOC = "The Great Wall stretches across northern China. " * 60  # far over --max-length 128


# ------------------------------------------------------------------------------------------------------
# The Qwen3-Reranker model card, verbatim apart from the model path and max_length.
# ------------------------------------------------------------------------------------------------------
def card_scores(model_dir: Path, pairs: list[tuple[str, str]], instruction: str | None, max_length: int) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(  # noqa: UP032
            instruction=instruction, query=query, doc=doc
        )
        return output

    def process_inputs(pairs: list[str]) -> Any:
        inputs = tokenizer(
            pairs, padding=False, truncation="longest_first",
            return_attention_mask=False, max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        for key in inputs:
            inputs[key] = inputs[key].to(model.device)
        return inputs

    @torch.no_grad()
    def compute_logits(inputs: Any) -> list[float]:
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        scores: list[float] = batch_scores[:, 1].exp().tolist()
        return scores

    formatted = [format_instruction(instruction, q, d) for q, d in pairs]
    return compute_logits(process_inputs(formatted))


def _native(base: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(base + "/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.mark.parametrize("instruction", [None, CUSTOM_INSTRUCTION])
def test_scores_equal_the_model_card(qwen_rerank_server: str, tiny_qwen3_causal_lm: Path, instruction: str | None) -> None:
    docs = [*DOCS, LONG_DOC]
    body: dict[str, Any] = {"query": QUERY, "docs": docs}
    if instruction is not None:
        body["instruction"] = instruction
    got = _native(qwen_rerank_server, body)["scores"]
    want = card_scores(tiny_qwen3_causal_lm, [(QUERY, d) for d in docs], instruction, RERANK_MAX_LENGTH)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The instruction is really used: the scores move when it changes.
    other = card_scores(tiny_qwen3_causal_lm, [(QUERY, d) for d in docs], "Say yes to everything", RERANK_MAX_LENGTH)
    assert np.max(np.abs(np.asarray(got) - np.asarray(other))) > 1e-4


def test_long_document_is_truncated_like_the_card_and_refused_without_truncation(
    qwen_rerank_server: str, tiny_qwen3_causal_lm: Path
) -> None:
    got = _native(qwen_rerank_server, {"query": QUERY, "docs": [LONG_DOC]})
    want = card_scores(tiny_qwen3_causal_lm, [(QUERY, LONG_DOC)], None, RERANK_MAX_LENGTH)
    np.testing.assert_allclose(got["scores"], want, atol=1e-5, rtol=0)
    assert got["usage"]["prompt_tokens"] == RERANK_MAX_LENGTH
    r = requests.post(qwen_rerank_server + "/rerank", json={"query": QUERY, "docs": [LONG_DOC], "truncate": False},
                      timeout=60)
    assert r.status_code == 413
    assert "truncate" in r.json()["error"]["message"]


def _batches_run(base: str) -> float:
    text = requests.get(base + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("rag_batch_size_items_count"))


def test_scores_do_not_depend_on_batch_composition(qwen_rerank_server: str) -> None:
    rng = np.random.default_rng(0)
    words = ["river", "stone", "capital", "engine", "quantum", "bread", "mountain", "silver", "ocean", "garden"]
    many = [" ".join(rng.choice(words, size=int(rng.integers(3, 60)))) for _ in range(100)]
    probe = DOCS[0]
    alone = _native(qwen_rerank_server, {"query": QUERY, "docs": [probe]})["scores"][0]

    batches_before = _batches_run(qwen_rerank_server)
    big = _native(qwen_rerank_server, {"query": QUERY, "docs": [*many[:50], probe, *many[50:]]})
    batches = _batches_run(qwen_rerank_server) - batches_before
    assert len(big["scores"]) == 101
    assert batches >= 3, "a 101-document request must be spread over several token-budget batches"
    assert abs(big["scores"][50] - alone) <= 1e-5

    # Documents of concurrent requests share batches; each answer is still reassembled in input order.
    def one(k: int) -> list[float]:
        docs = [*many[k * 10 : k * 10 + 10], probe]
        return list(_native(qwen_rerank_server, {"query": QUERY, "docs": docs})["scores"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    many_in_big = [*big["scores"][:50], *big["scores"][51:]]
    for k, scores in enumerate(answers):
        assert abs(scores[-1] - alone) <= 1e-5
        np.testing.assert_allclose(scores[:-1], many_in_big[k * 10 : k * 10 + 10], atol=1e-5, rtol=0)


def test_cold_engine_in_process_gives_the_server_scores(qwen_rerank_server: str, tiny_qwen3_causal_lm: Path) -> None:
    served = _native(qwen_rerank_server, {"query": QUERY, "docs": DOCS, "top_n": 2})
    settings = ServerSettings(kind="rerank", model=str(tiny_qwen3_causal_lm), device="cpu",
                              max_length=RERANK_MAX_LENGTH, max_batch_tokens=512)

    async def run() -> Any:
        async with RerankEngine.from_settings(settings) as engine:
            return await engine.rerank(QUERY, DOCS, top_n=2), await engine.score([(QUERY, d) for d in DOCS])

    ranked, scored = asyncio.run(run())
    np.testing.assert_allclose(ranked.scores, served["scores"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(scored.scores, served["scores"], atol=1e-6, rtol=0)
    assert ranked.order == served["order"]


def test_converted_seq_cls_qwen3_gives_the_yes_no_scores(tiny_qwen3_causal_lm: Path, tmp_path: Path) -> None:
    seq_cls = save_qwen3_seq_cls_from_causal_lm(tmp_path / "seq-cls", tiny_qwen3_causal_lm)

    async def scores(model: Path) -> np.ndarray:
        settings = ServerSettings(kind="rerank", model=str(model), device="cpu", warmup=False)
        async with RerankEngine.from_settings(settings) as engine:
            assert engine.recipe.kind == "decoder"
            return (await engine.rerank(QUERY, [*DOCS, LONG_DOC])).scores

    want = card_scores(tiny_qwen3_causal_lm, [(QUERY, d) for d in [*DOCS, LONG_DOC]], None, 8192)
    np.testing.assert_allclose(asyncio.run(scores(seq_cls)), want, atol=1e-5, rtol=0)


def test_cross_encoder_scores_equal_transformers_with_its_activation(minilm: Path, tmp_path: Path) -> None:
    model_dir = save_tiny_bert_cross_encoder(tmp_path / "ce", minilm)
    docs = [*DOCS, "word " * 400]  # the last pair is over BERT's 128 positions: longest_first truncation

    async def served() -> Any:
        settings = ServerSettings(kind="rerank", model=str(model_dir), device="cpu", max_length=512, max_batch_tokens=1024)
        async with RerankEngine.from_settings(settings) as engine:
            assert engine.recipe.kind == "cross-encoder"
            return await engine.rerank(QUERY, docs)

    result = asyncio.run(served())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        features = tokenizer([QUERY] * len(docs), docs, padding=True, truncation=True, max_length=128,
                             return_tensors="pt")
        logits = model(**features).logits[:, 0]
    np.testing.assert_allclose(result.raw_scores, logits.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.scores, torch.sigmoid(logits).numpy(), atol=1e-5, rtol=0)
