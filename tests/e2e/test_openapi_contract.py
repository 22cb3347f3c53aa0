"""Every route of every server kind answers what its ``/openapi.json`` declares (validated live)."""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import requests

from tests.e2e.mm_fixtures import png_bytes

TIMEOUT_S = 60
ERROR_STATUSES = {400, 401, 413, 422, 429, 500, 503}


def _schema(spec: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which /openapi.json does not list"
    content = responses[str(status)]["content"]
    schema = dict(content["application/json"]["schema"])
    schema["components"] = spec["components"]
    return schema


def _check(base: str, spec: dict[str, Any], method: str, path: str, status: int, seen: set[str],
           body: Any = None, data: bytes | None = None) -> Any:
    """Call the route, assert the status, validate the JSON body against the declared schema."""
    if method == "get":
        resp = requests.get(base + path, timeout=TIMEOUT_S)
    elif data is not None:
        resp = requests.post(base + path, data=data, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)
    else:
        resp = requests.post(base + path, json=body, timeout=TIMEOUT_S)
    assert resp.status_code == status, (path, resp.status_code, resp.text[:300])
    answer = resp.json()
    jsonschema.Draft202012Validator(_schema(spec, path, method, status)).validate(answer)
    seen.add(path)
    return answer


def _check_declared(spec: dict[str, Any], seen: set[str]) -> None:
    """Every route was exercised, and each declares its 200 schema and the error envelope of its errors."""
    assert set(spec["paths"]) == seen | {"/metrics"}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if method == "post":
                assert "requestBody" in op, path
                assert {int(s) for s in op["responses"]} >= ERROR_STATUSES, (path, sorted(op["responses"]))
            for status, response in op["responses"].items():
                if status != "200":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorEnvelope"), (path, status)


def _spec(base: str) -> dict[str, Any]:
    spec: dict[str, Any] = requests.get(f"{base}/openapi.json", timeout=TIMEOUT_S).json()
    return spec


def _common_routes(base: str, spec: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    for path in ("/health", "/healthz", "/v1/models"):
        _check(base, spec, "get", path, 200, seen)
    metrics = requests.get(f"{base}/metrics", timeout=TIMEOUT_S)
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text
    info: dict[str, Any] = _check(base, spec, "get", "/info", 200, seen)
    return info


def test_embed_server_matches_its_openapi(qwen_server: str) -> None:
    base, seen = qwen_server, set[str]()
    spec = _spec(base)
    info = _common_routes(base, spec, seen)
    assert info["kind"] == "embed"
    answer = _check(base, spec, "post", "/embed", 200, seen, {"texts": ["a", "b"], "prompt": "passage"})
    assert len(answer["embeddings"]) == 2
    _check(base, spec, "post", "/embed", 200, seen, {"texts": ["q"], "prompt": "query", "encoding_format": "base64"})
    _check(base, spec, "post", "/embed", 400, seen, {"texts": ["a"], "dimensions": 10**6})
    _check(base, spec, "post", "/embed", 400, seen, data=b"{not json")
    _check(base, spec, "post", "/embed", 422, seen, {"input": ["no texts field"]})
    _check(base, spec, "post", "/embed", 413, seen, {"texts": ["x"] * 1000})
    _check(base, spec, "post", "/v1/embeddings", 200, seen, {"input": ["a", "b"]})
    _check(base, spec, "post", "/v1/embeddings", 200, seen, {"input": [[1, 2, 3]], "encoding_format": "base64"})
    _check(base, spec, "post", "/v1/embeddings", 422, seen, {"input": []})
    _check_declared(spec, seen)


def test_rerank_server_matches_its_openapi(minilm_rerank_server: str) -> None:
    base, seen = minilm_rerank_server, set[str]()
    spec = _spec(base)
    assert _common_routes(base, spec, seen)["kind"] == "rerank"
    docs = ["Mars is the red planet.", "Bread needs flour.", "Venus is hot."]
    native = _check(base, spec, "post", "/rerank", 200, seen, {"query": "red planet", "docs": docs, "top_n": 2})
    assert native["indices"] == native["order"]
    assert native["order"][0] == 0
    tei = _check(base, spec, "post", "/rerank", 200, seen, {"query": "red planet", "texts": docs, "return_text": True})
    assert tei[0]["index"] == 0
    assert tei[0]["text"] == docs[0]
    _check(base, spec, "post", "/rerank", 400, seen, {"query": "q", "docs": [{"image": "aGVsbG8="}]})
    _check(base, spec, "post", "/rerank", 422, seen, {"query": "q"})
    for path in ("/v1/rerank", "/v2/rerank"):
        answer = _check(base, spec, "post", path, 200, seen,
                        {"query": "red planet", "documents": docs, "return_documents": True})
        assert answer["results"][0]["document"]["text"] == docs[0]
        _check(base, spec, "post", path, 422, seen, {"query": "q", "documents": []})
    for path in ("/score", "/v1/score"):
        answer = _check(base, spec, "post", path, 200, seen, {"text_1": "red planet", "text_2": docs})
        assert len(answer["data"]) == 3
        _check(base, spec, "post", path, 422, seen, {"text_1": ["a", "b"], "text_2": docs})
    _check_declared(spec, seen)


def test_mm_embed_server_matches_its_openapi(mm_server: str) -> None:
    base, seen = mm_server, set[str]()
    spec = _spec(base)
    assert _common_routes(base, spec, seen)["kind"] == "mm-embed"
    image = base64.b64encode(png_bytes((40, 30), seed=3)).decode()
    t2i = _check(base, spec, "post", "/embed_image", 200, seen, {"images": [image], "prompt": "t2i"})
    doc = _check(base, spec, "post", "/embed_image", 200, seen, {"images": [image], "input_type": "document"})
    query = _check(base, spec, "post", "/embed_image", 200, seen, {"images": [image], "prompt": "i2t"})
    assert t2i["embeddings"] == doc["embeddings"]  # t2i: the images are the documents
    assert query["embeddings"] != doc["embeddings"]  # i2t: the images are the queries
    _check(base, spec, "post", "/embed_image", 403, seen, {"images": [{"path": "/etc/hostname"}]})
    _check(base, spec, "post", "/embed_image", 422, seen, {"images": [image], "prompt": "sideways"})
    _check(base, spec, "post", "/embed", 200, seen, {"texts": ["a cat"], "prompt": "query"})
    _check(base, spec, "post", "/v1/embeddings", 200, seen, {"input": ["a cat", {"image": image, "text": "x"}]})
    _check(base, spec, "post", "/v1/embeddings", 422, seen, {"input": [{}]})
    _check_declared(spec, seen)


def test_openapi_names_the_protocol_models(qwen_server: str) -> None:
    """The schema document names the wire models of rag_plugins.protocol."""
    spec = _spec(qwen_server)
    names = set(spec["components"]["schemas"])
    assert {"EmbedRequest", "EmbedResponse", "ErrorEnvelope", "ServerInfo", "HealthResponse"} <= names
