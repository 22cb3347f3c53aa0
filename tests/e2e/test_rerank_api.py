"""Wire shapes of the rerank routes (native, TEI, Cohere/Jina, vLLM score) and their bad-input answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from tests.e2e.rerank_fixtures import RERANK_MAX_CLIENT_BATCH, RERANK_MODEL_NAME
from tests.support.planets import MINILM_REFERENCE_COSINES, PLANETS, QUERY


def post(base: str, path: str, body: Any) -> requests.Response:
    return requests.post(base + path, json=body, timeout=60)


def native_scores(base: str, docs: list[str], query: str = QUERY) -> list[float]:
    r = post(base, "/rerank", {"query": query, "docs": docs})
    assert r.status_code == 200, r.text
    return list(r.json()["scores"])


def test_native_shape_order_and_top_n(qwen_rerank_server: str) -> None:
    r = post(qwen_rerank_server, "/rerank", {"query": QUERY, "docs": PLANETS, "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == RERANK_MODEL_NAME
    scores = body["scores"]
    assert len(scores) == len(PLANETS)
    assert body["order"] == sorted(range(len(PLANETS)), key=lambda i: -scores[i])[:2]
    assert all(0.0 <= s <= 1.0 for s in scores)
    full = post(qwen_rerank_server, "/rerank", {"query": QUERY, "docs": PLANETS}).json()
    assert sorted(full["order"]) == list(range(len(PLANETS)))
    assert post(qwen_rerank_server, "/rerank", {"query": QUERY, "docs": PLANETS, "top_n": 0}).json()["order"] == []
    # {"text": ...} documents are the same documents.
    as_objects = post(qwen_rerank_server, "/rerank", {"query": QUERY, "docs": [{"text": d} for d in PLANETS]}).json()
    np.testing.assert_allclose(as_objects["scores"], scores, atol=1e-6)


def test_tei_shape(qwen_rerank_server: str) -> None:
    scores = native_scores(qwen_rerank_server, PLANETS)
    r = post(qwen_rerank_server, "/rerank", {"query": QUERY, "texts": PLANETS, "return_text": True})
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list)
    assert [it["index"] for it in items] == sorted(range(len(PLANETS)), key=lambda i: -scores[i])
    for it in items:
        assert it["score"] == pytest.approx(scores[it["index"]], abs=1e-6)
        assert it["text"] == PLANETS[it["index"]]
    raw = post(qwen_rerank_server, "/rerank", {"query": QUERY, "texts": PLANETS, "raw_scores": True}).json()
    for it in raw:  # raw = logit_yes - logit_no; sigmoid of it is the score
        assert 1 / (1 + np.exp(-it["score"])) == pytest.approx(scores[it["index"]], abs=1e-6)
        assert "text" not in it


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_jina_shape(qwen_rerank_server: str, path: str) -> None:
    scores = native_scores(qwen_rerank_server, PLANETS)
    body = {"model": "whatever", "query": QUERY, "documents": PLANETS, "top_n": 3, "return_documents": True}
    r = post(qwen_rerank_server, path, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"]
    assert answer["model"] == RERANK_MODEL_NAME
    assert answer["usage"]["total_tokens"] > 0
    results = answer["results"]
    assert [x["index"] for x in results] == sorted(range(len(PLANETS)), key=lambda i: -scores[i])[:3]
    for x in results:
        assert x["relevance_score"] == pytest.approx(scores[x["index"]], abs=1e-6)
        assert x["document"] == {"text": PLANETS[x["index"]]}
    bare = post(qwen_rerank_server, path, {"query": QUERY, "documents": PLANETS}).json()
    assert len(bare["results"]) == len(PLANETS)
    assert "document" not in bare["results"][0]


def test_vllm_score_shapes(qwen_rerank_server: str) -> None:
    scores = native_scores(qwen_rerank_server, PLANETS)
    for path in ("/score", "/v1/score"):
        one_to_n = post(qwen_rerank_server, path, {"text_1": QUERY, "text_2": PLANETS}).json()
        assert one_to_n["object"] == "list"
        assert one_to_n["model"] == RERANK_MODEL_NAME
        assert one_to_n["usage"]["prompt_tokens"] > 0
        assert [d["index"] for d in one_to_n["data"]] == list(range(len(PLANETS)))
        assert all(d["object"] == "score" for d in one_to_n["data"])
        np.testing.assert_allclose([d["score"] for d in one_to_n["data"]], scores, atol=1e-6)
    n_to_n = post(qwen_rerank_server, "/score", {"queries": [QUERY, "What is Saturn famous for?"],
                                                  "documents": [PLANETS[1], PLANETS[3]]}).json()
    assert n_to_n["data"][0]["score"] == pytest.approx(scores[1], abs=1e-6)
    other = native_scores(qwen_rerank_server, [PLANETS[3]], query="What is Saturn famous for?")[0]
    assert n_to_n["data"][1]["score"] == pytest.approx(other, abs=1e-6)
    single = post(qwen_rerank_server, "/score", {"text_1": QUERY, "text_2": PLANETS[1]}).json()
    assert single["data"][0]["score"] == pytest.approx(scores[1], abs=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/rerank", {"query": QUERY, "docs": []}, 422, "no documents"),
        ("/rerank", {"query": QUERY}, 422, "docs"),
        ("/rerank", {"query": "", "docs": ["a"]}, 422, "query"),
        ("/rerank", {"query": "   ", "docs": ["a"]}, 422, "query"),
        ("/rerank", {"query": QUERY, "docs": ["a"], "top_n": -1}, 422, "top_n"),
        ("/rerank", {"query": QUERY, "docs": "just one string"}, 422, "docs"),
        ("/rerank", {"query": 42, "docs": ["a"]}, 422, "query"),
        ("/rerank", {"query": QUERY, "docs": [1, 2]}, 422, "docs"),
        ("/rerank", {"query": QUERY, "docs": ["a"], "texts": ["b"]}, 422, "either"),
        ("/rerank", {"query": QUERY, "docs": [{"image": "aGVsbG8="}]}, 400, "text only"),
        ("/rerank", {"query": QUERY, "docs": ["d"] * (RERANK_MAX_CLIENT_BATCH + 1)}, 413, "max-client-batch"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, 422, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": -2}, 422, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": ["d"] * (RERANK_MAX_CLIENT_BATCH + 1)}, 413, "split"),
        ("/score", {"text_1": [QUERY, QUERY], "text_2": ["a", "b", "c"]}, 422, "equal-length"),
        ("/score", {"text_1": QUERY, "text_2": []}, 422, "empty"),
        ("/score", {"text_1": QUERY}, 422, "text_2"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(qwen_rerank_server: str, path: str, body: Any, status: int,
                                           needle: str) -> None:
    r = post(qwen_rerank_server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status
    assert needle in error["message"]


def test_malformed_json_and_info(qwen_rerank_server: str) -> None:
    r = requests.post(qwen_rerank_server + "/rerank", data=b"{not json", timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    info = requests.get(qwen_rerank_server + "/info", timeout=10).json()
    assert info["kind"] == "rerank"
    assert info["scoring"].startswith("sigmoid(logit_yes - logit_no)")
    assert info["default_instruction"].startswith("Given a web search query")


def test_bi_encoder_reranks_by_cosine(minilm_rerank_server: str) -> None:
    """all-MiniLM-L6-v2 as a bi-encoder reranker gives the cosines of the sentence-transformers docs' example."""
    info = requests.get(minilm_rerank_server + "/info", timeout=10).json()
    assert info["scoring"] == "cosine (bi-encoder)"
    body = post(minilm_rerank_server, "/rerank", {"query": QUERY, "docs": PLANETS}).json()
    np.testing.assert_allclose(body["scores"], MINILM_REFERENCE_COSINES, atol=0.002)
    assert body["order"] == [1, 3, 2, 0]
    cohere = post(minilm_rerank_server, "/v1/rerank", {"query": QUERY, "documents": PLANETS, "top_n": 1}).json()
    assert cohere["results"][0]["index"] == 1
    pairs = post(minilm_rerank_server, "/score", {"queries": [QUERY, QUERY], "documents": PLANETS[:2]}).json()
    np.testing.assert_allclose([d["score"] for d in pairs["data"]], MINILM_REFERENCE_COSINES[:2], atol=0.002)
