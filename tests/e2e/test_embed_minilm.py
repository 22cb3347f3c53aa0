"""Real weights: all-MiniLM-L6-v2 through rag-serve gives the sentence-transformers reference numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.embed_http import embed, embed_openai, max_abs_diff
from tests.support.planets import MINILM_REFERENCE_COSINES, PLANETS, QUERY

#: Cosine similarities published in the sentence-transformers docs for this model and these texts.


def test_red_planet_cosines(minilm_server: str) -> None:
    q = embed(minilm_server, [QUERY], input_type="query")[0]
    docs = embed(minilm_server, PLANETS, input_type="document")
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    cosines = docs @ q / (np.linalg.norm(docs, axis=1) * np.linalg.norm(q))
    np.testing.assert_allclose(cosines, MINILM_REFERENCE_COSINES, atol=0.002)
    assert int(np.argmax(cosines)) == 1


def test_equals_sentence_transformers_encode(minilm_server: str, minilm: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm), device="cpu")
    texts = [QUERY, *PLANETS, "a", "A much longer sentence " * 30, "Truncated beyond 256 tokens " * 100]
    expected = model.encode(texts, convert_to_numpy=True)
    assert max_abs_diff(embed(minilm_server, texts), expected) <= 1e-5
    # One at a time: no dependence on the batch (right padding with a mask).
    alone = np.concatenate([embed(minilm_server, [t]) for t in texts])
    assert max_abs_diff(alone, expected) <= 1e-5
    assert max_abs_diff(embed_openai(minilm_server, {"input": texts}), expected) <= 1e-5


def test_info_and_models(minilm_server: str) -> None:
    info = requests.get(f"{minilm_server}/info", timeout=30).json()
    assert info["dim"] == 384
    assert info["kind"] == "embed"
    assert info["model"] == "all-MiniLM-L6-v2"
    assert info["max_length"] == 256  # the model's own max_seq_length
    models = requests.get(f"{minilm_server}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize("dimensions", [1, 100, 384])
def test_dimensions_on_a_non_matryoshka_model(minilm_server: str, dimensions: int) -> None:
    full = embed(minilm_server, PLANETS)
    cut = embed(minilm_server, PLANETS, dimensions=dimensions)
    assert cut.shape == (4, dimensions)
    expected = full[:, :dimensions] / np.linalg.norm(full[:, :dimensions], axis=1, keepdims=True)
    assert max_abs_diff(cut, expected) <= 1e-5
