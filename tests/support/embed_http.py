"""Plain-HTTP helpers for the embedding e2e tests (requests, no rag_plugins code in the path)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import requests

TIMEOUT_S = 60


def embed(base: str, texts: list[str], **options: Any) -> np.ndarray:
    """POST /embed and return the vectors as float64 (n, dim); fails the test on a non-200 answer."""
    resp = requests.post(f"{base}/embed", json={"texts": texts, **options}, timeout=TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    vectors = np.asarray(body["embeddings"], dtype=np.float64)
    assert vectors.shape == (len(texts), body["dim"])
    return vectors


def embed_openai(base: str, payload: dict[str, Any]) -> np.ndarray:
    """POST /v1/embeddings; decodes base64 answers by hand (little-endian float32)."""
    resp = requests.post(f"{base}/v1/embeddings", json=payload, timeout=TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    data = sorted(resp.json()["data"], key=lambda d: d["index"])
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
        else np.asarray(d["embedding"])
        for d in data
    ]
    return np.stack(rows).astype(np.float64)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def assert_healthy(base: str, good_texts: list[str] | None = None) -> None:
    """GET /health is 200 and a good request still works."""
    assert requests.get(f"{base}/health", timeout=TIMEOUT_S).status_code == 200
    vectors = embed(base, good_texts or ["still alive"])
    assert np.all(np.isfinite(vectors))
