"""Fast JSON responses and the error envelope."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse

from rag_plugins.protocol import EncodingFormat


class FastJSONResponse(JSONResponse):
    """JSON via orjson, which writes numpy arrays directly (a 1024-float vector is no Python list)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_vectors(vectors: np.ndarray, encoding_format: EncodingFormat) -> np.ndarray | list[str]:
    """Vectors as orjson-ready float rows, or base64 strings of little-endian float32 (OpenAI format)."""
    if encoding_format == "base64":
        data = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in data]
    return vectors


def native_embedding_response(result: Any, model: str, encoding_format: EncodingFormat) -> FastJSONResponse:
    """``/embed`` and ``/embed_image`` answer: ``{"embeddings", "dim", "model", "usage"}``.

    Args:
        result: An engine's ``EmbeddingResult`` (``vectors`` float32 (n, dim), ``prompt_tokens``).
    """
    return FastJSONResponse(
        {
            "embeddings": encode_vectors(result.vectors, encoding_format),
            "dim": int(result.vectors.shape[1]),
            "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )


def openai_embedding_response(result: Any, model: str, encoding_format: EncodingFormat) -> FastJSONResponse:
    """``/v1/embeddings`` answer in the OpenAI shape (``data[i].embedding`` float list or base64)."""
    encoded = encode_vectors(result.vectors, encoding_format)
    return FastJSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)],
            "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> FastJSONResponse:
    """The one error shape: ``{"error": {"message", "type", "code"}}``."""
    return FastJSONResponse(
        {"error": {"message": message, "type": error_type, "code": status}}, status_code=status, headers=headers
    )
