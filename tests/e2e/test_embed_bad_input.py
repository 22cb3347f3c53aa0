"""Bad input gets a 4xx with a useful message in the one error envelope, and the server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rag_plugins import EmbeddingClient
from rag_plugins.errors import ServerResponseError
from tests.e2e.conftest import QWEN_MAX_BODY_BYTES, QWEN_MAX_CLIENT_BATCH
from tests.support.embed_http import assert_healthy
from tests.support.serve import rag_serve

TIMEOUT = 30
TOO_MANY = ["t"] * (QWEN_MAX_CLIENT_BATCH + 1)
HUGE_TEXT = "x" * (QWEN_MAX_BODY_BYTES + 10)

# (route, JSON body, status, fragment of the message)
CASES: list[tuple[str, Any, int, str]] = [
    ("/embed", {"texts": []}, 422, "texts: List should have at least 1 item"),
    ("/embed", {"texts": [""]}, 422, "texts.0"),
    ("/embed", {"texts": ["ok", "  "]}, 422, "item 1 is empty or whitespace only"),
    ("/embed", {"texts": ["ok", 5]}, 422, "texts.1"),
    ("/embed", {"texts": ["ok", None]}, 422, "texts.1"),
    ("/embed", {"texts": "not a list"}, 422, "texts"),
    ("/embed", {"texts": {"a": 1}}, 422, "texts"),
    ("/embed", {}, 422, "texts: Field required"),
    ("/embed", ["texts"], 422, "invalid request"),
    ("/embed", {"texts": ["a"], "input_type": "banana"}, 422, "unknown input_type 'banana'"),
    ("/embed", {"texts": ["a"], "prompt": "sideways"}, 422, "unknown input_type 'sideways'"),
    ("/embed", {"texts": ["a"], "dimensions": 65}, 400, "dimensions must be between 32 and 64"),
    ("/embed", {"texts": ["a"], "dimensions": 16}, 400, "dimensions must be between 32 and 64"),
    ("/embed", {"texts": ["a"], "dimensions": 0}, 422, "dimensions"),
    ("/embed", {"texts": ["a"], "dimensions": "32"}, 422, "dimensions"),
    ("/embed", {"texts": ["a"], "normalize": "yes"}, 422, "normalize"),
    ("/embed", {"texts": ["a"], "instruction": 7}, 422, "instruction"),
    ("/embed", {"texts": TOO_MANY}, 413, f"at most {QWEN_MAX_CLIENT_BATCH}"),
    ("/v1/embeddings", {"input": []}, 422, "input is an empty list"),
    ("/v1/embeddings", {"input": ""}, 422, "input is an empty string"),
    ("/v1/embeddings", {"input": ["a", ""]}, 422, "item 1 is empty"),
    ("/v1/embeddings", {"input": ["a", 3]}, 422, "all be strings"),
    ("/v1/embeddings", {"input": {"text": "a"}}, 422, "must be a string"),
    ("/v1/embeddings", {"input": 42}, 422, "must be a string"),
    ("/v1/embeddings", {"model": "m"}, 422, "input: Field required"),
    ("/v1/embeddings", {"input": [[1, 2], []]}, 422, "token array 1 is empty"),
    ("/v1/embeddings", {"input": [1, -1]}, 422, "non-negative"),
    ("/v1/embeddings", {"input": [999_999_999]}, 400, "outside the vocabulary"),
    ("/v1/embeddings", {"input": "a", "input_type": "banana"}, 422, "unknown input_type"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 4096}, 400, "dimensions must be between 32 and 64"),
    ("/v1/embeddings", {"input": "a", "dimensions": 8}, 400, "dimensions must be between 32 and 64"),
    ("/v1/embeddings", {"input": [[1]] * (QWEN_MAX_CLIENT_BATCH + 1)}, 413, f"at most {QWEN_MAX_CLIENT_BATCH}"),
    ("/v1/embeddings", {"input": TOO_MANY}, 413, f"at most {QWEN_MAX_CLIENT_BATCH}"),
]


def check_error(resp: requests.Response, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == status
    assert error["type"]
    assert fragment in error["message"], error["message"]
    assert "Traceback" not in resp.text


@pytest.mark.parametrize(("route", "body", "status", "fragment"), CASES)
def test_bad_json_bodies(qwen_server: str, route: str, body: Any, status: int, fragment: str) -> None:
    resp = requests.post(qwen_server + route, json=body, timeout=TIMEOUT)
    check_error(resp, status, fragment)
    assert_healthy(qwen_server)


@pytest.mark.parametrize("route", ["/embed", "/v1/embeddings"])
@pytest.mark.parametrize("raw", [b'{"texts": ["a",', b"not json at all", b'{"texts": ["a"]} trailing'])
def test_malformed_json(qwen_server: str, route: str, raw: bytes) -> None:
    resp = requests.post(
        qwen_server + route, data=raw, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    check_error(resp, 400, "malformed JSON")
    assert_healthy(qwen_server)


@pytest.mark.parametrize("route", ["/embed", "/v1/embeddings"])
def test_oversized_body_with_content_length(qwen_server: str, route: str) -> None:
    key = "texts" if route == "/embed" else "input"
    resp = requests.post(qwen_server + route, json={key: [HUGE_TEXT]}, timeout=TIMEOUT)
    check_error(resp, 413, f"larger than {QWEN_MAX_BODY_BYTES} bytes")
    assert_healthy(qwen_server)


@pytest.mark.parametrize("route", ["/embed", "/v1/embeddings"])
def test_oversized_body_streamed_without_content_length(qwen_server: str, route: str) -> None:
    key = "texts" if route == "/embed" else "input"

    def chunks() -> Iterator[bytes]:
        yield f'{{"{key}": ["'.encode()
        for _ in range(QWEN_MAX_BODY_BYTES // 10_000 + 2):
            yield b"y" * 10_000
        yield b'"]}'

    resp = requests.post(
        qwen_server + route, data=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    check_error(resp, 413, f"larger than {QWEN_MAX_BODY_BYTES} bytes")
    assert_healthy(qwen_server)


def test_body_just_under_the_limit_is_served(qwen_server: str) -> None:
    text = "word " * ((QWEN_MAX_BODY_BYTES - 200) // 5)
    resp = requests.post(qwen_server + "/embed", json={"texts": [text]}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def test_unknown_route_and_method(qwen_server: str) -> None:
    check_error(requests.post(qwen_server + "/embedz", json={}, timeout=TIMEOUT), 404, "no route /embedz")
    check_error(requests.get(qwen_server + "/embed", timeout=TIMEOUT), 405, "not allowed")
    assert_healthy(qwen_server)


def test_client_raises_the_servers_message(qwen_server: str) -> None:
    client = EmbeddingClient(base_url=qwen_server, dimensions=8)
    with pytest.raises(ServerResponseError) as info:
        client.embed(["a"])
    assert info.value.status == 400
    assert "dimensions must be between 32 and 64" in info.value.message
    client.http.close()


# ------------------------------------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def auth_server(tiny_qwen3_embedding: Path) -> Iterator[str]:
    with rag_serve("embed", tiny_qwen3_embedding, "--api-key", "key-one", "--api-key", "key-two") as base:
        yield base


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"}, {"Authorization": "Basic key-one"}],
)
@pytest.mark.parametrize(("method", "route"), [("POST", "/embed"), ("POST", "/v1/embeddings"), ("GET", "/info"),
                                               ("GET", "/v1/models"), ("GET", "/metrics")])
def test_auth_refuses_missing_or_wrong_key(auth_server: str, headers: dict[str, str], method: str, route: str) -> None:
    resp = requests.request(
        method, auth_server + route, json={"texts": ["a"], "input": "a"}, headers=headers, timeout=TIMEOUT
    )
    check_error(resp, 401, "API key")
    assert resp.headers.get("WWW-Authenticate") == "Bearer"


def test_auth_health_is_open_and_keys_work(auth_server: str) -> None:
    assert requests.get(auth_server + "/health", timeout=TIMEOUT).status_code == 200
    healthz = requests.get(auth_server + "/healthz", timeout=TIMEOUT)  # the alias is public too
    assert healthz.status_code == 200
    assert healthz.json()["status"] == "ok"
    for key in ("key-one", "key-two"):
        resp = requests.post(
            auth_server + "/embed", json={"texts": ["a"]}, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
        )
        assert resp.status_code == 200, resp.text
    info = requests.get(auth_server + "/info", headers={"Authorization": "Bearer key-two"}, timeout=TIMEOUT)
    assert info.status_code == 200
    assert info.json()["dim"] == 64
    assert info.json()["auth_required"] is True


def test_auth_through_clients(auth_server: str) -> None:
    from openai import AuthenticationError, OpenAI

    good = EmbeddingClient(base_url=auth_server, api_key="key-one")
    assert good.embed(["a", "b"]).shape == (2, 64)
    good.http.close()
    bad = EmbeddingClient(base_url=auth_server, api_key="nope")
    with pytest.raises(ServerResponseError) as info:
        bad.embed(["a"])
    assert info.value.status == 401
    bad.http.close()
    sdk = OpenAI(base_url=auth_server + "/v1", api_key="key-two")
    assert len(sdk.embeddings.create(model="m", input=["a"]).data[0].embedding) == 64
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=auth_server + "/v1", api_key="nope", max_retries=0).embeddings.create(model="m", input="a")
