"""Wire protocol: request validation (what a client may send) and the vector encodings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from rag_plugins.protocol import (
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbeddingRequest,
    decode_base64_vector,
    embeddings_to_array,
)


def test_embed_request_defaults() -> None:
    req = EmbedRequest.model_validate({"texts": ["a", "b"]})
    assert req.texts == ["a", "b"]
    assert req.input_type == "document"
    assert (req.instruction, req.dimensions, req.normalize, req.truncate) == (None, None, True, True)
    assert req.encoding_format == "float"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("input_type", "query", "query"),
        ("input_type", "Query", "query"),
        ("input_type", "search_query", "query"),
        ("input_type", "passage", "document"),
        ("input_type", "search_document", "document"),
        ("prompt", "query", "query"),
        ("prompt", "passage", "document"),
    ],
)
def test_input_type_aliases(field: str, value: str, expected: str) -> None:
    assert EmbedRequest.model_validate({"texts": ["x"], field: value}).input_type == expected
    assert OpenAIEmbeddingRequest.model_validate({"input": "x", field: value}).input_type == expected


def errors_of(model: type[Any], body: Any) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"texts": []}, "at least 1 item"),
        ({"texts": [""]}, "at least 1 character"),
        ({"texts": ["ok", "   "]}, "item 1 is empty or whitespace only"),
        ({"texts": ["ok", 3]}, "texts.1"),
        ({"texts": "just a string"}, "valid list"),
        ({"texts": None}, "valid list"),
        ({}, "texts"),
        ({"texts": ["a"], "input_type": "banana"}, "unknown input_type 'banana'"),
        ({"texts": ["a"], "input_type": 1}, "input_type"),
        ({"texts": ["a"], "dimensions": 0}, "greater than or equal to 1"),
        ({"texts": ["a"], "dimensions": "64"}, "dimensions"),
        ({"texts": ["a"], "normalize": "yes"}, "normalize"),
        ({"texts": ["a"], "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embed_request_rejects(body: Any, fragment: str) -> None:
    assert fragment in errors_of(EmbedRequest, body)


def test_embed_request_ignores_unknown_fields() -> None:
    assert EmbedRequest.model_validate({"texts": ["a"], "model": "whatever"}).texts == ["a"]


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_openai_input_shapes(value: Any, items: list[Any]) -> None:
    req = OpenAIEmbeddingRequest.model_validate({"input": value, "model": "m"})
    assert req.items() == items
    assert req.encoding_format == "float"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty string"),
        ("  ", "empty string"),
        ([], "empty list"),
        (["a", ""], "item 1 is empty"),
        (["a", 1], "all be strings"),
        ([1, -2], "non-negative"),
        ([True, False], "all be strings"),
        ([[1], []], "token array 1 is empty"),
        ([[1], ["a"]], "token array 1 must hold non-negative integers"),
        ({"text": "a"}, "must be a string"),
        (None, "must be a string"),
        (3, "must be a string"),
    ],
)
def test_openai_input_rejects(value: Any, fragment: str) -> None:
    assert fragment in errors_of(OpenAIEmbeddingRequest, {"input": value})


def test_openai_request_other_fields() -> None:
    assert "dimensions" in errors_of(OpenAIEmbeddingRequest, {"input": "a", "dimensions": 0})
    assert "encoding_format" in errors_of(OpenAIEmbeddingRequest, {"input": "a", "encoding_format": "hex"})
    assert "unknown input_type" in errors_of(OpenAIEmbeddingRequest, {"input": "a", "input_type": "code"})
    req = OpenAIEmbeddingRequest.model_validate(
        {"input": ["a"], "encoding_format": "base64", "dimensions": 32, "user": "u", "instruction": "T"}
    )
    assert (req.encoding_format, req.dimensions, req.instruction) == ("base64", 32, "T")


def test_base64_vectors_are_little_endian_float32() -> None:
    vec = np.array([0.5, -1.25, 3.0e-8, 7.0], dtype=np.float32)
    encoded = base64.b64encode(vec.astype("<f4").tobytes()).decode()
    np.testing.assert_array_equal(decode_base64_vector(encoded), vec)
    # Big-endian bytes would decode to other numbers: the format is pinned.
    wrong = base64.b64encode(vec.astype(">f4").tobytes()).decode()
    assert not np.array_equal(decode_base64_vector(wrong), vec)


def test_embeddings_to_array_float_and_base64_agree() -> None:
    rows = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    as_b64 = [base64.b64encode(r.astype("<f4").tobytes()).decode() for r in rows]
    np.testing.assert_array_equal(embeddings_to_array(as_b64, 5), rows)
    np.testing.assert_array_equal(embeddings_to_array(rows.tolist(), 5), rows)
    empty = embeddings_to_array([], 7)
    assert empty.shape == (0, 7)
    assert empty.dtype == np.float32


def test_server_encoder_round_trips_through_client_decoder() -> None:
    from servers.responses import encode_vectors

    rows = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(embeddings_to_array(encode_vectors(rows, "base64"), 8), rows)  # type: ignore[arg-type]
    resp = EmbedResponse.model_validate(
        {"embeddings": encode_vectors(rows, "base64"), "dim": 8, "model": "m", "usage": {"prompt_tokens": 3}}
    )
    np.testing.assert_array_equal(resp.as_array(), rows)
