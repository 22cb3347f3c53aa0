"""Fast JSON responses, the error envelope, and the OpenAPI description of both.

Routes answer with :class:`FastJSONResponse` (orjson writes numpy rows directly) and declare the pydantic
model of each status through :func:`documented`, so ``/openapi.json`` shows the shapes that
``rag_plugins.protocol`` defines and clients parse with."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse

from rag_plugins.protocol import EncodingFormat, ErrorEnvelope
from servers.engine_api import EmbeddingOutput

#: Every error status a route may answer, with what it means; the body is always :class:`ErrorEnvelope`.
ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: malformed JSON, an input the model cannot take (e.g. bad dimensions, an image for a "
    "text-only model).",
    401: "Missing or wrong API key (servers started with --api-key).",
    403: "An image source the server's policy forbids (path outside --image-root, URL images off or private).",
    413: "Body over --max-body-bytes, too many inputs (--max-client-batch), or an over-long input with "
    "truncate=false.",
    422: "A field is missing or has the wrong type or value.",
    429: "The queue is full; retry after the Retry-After header.",
    500: "Internal error; the server log has the details.",
    502: "Search server: an upstream model server (embed, mm-embed, rerank) failed or could not be reached.",
    503: "The model is still loading (or failed to load); retry after the Retry-After header.",
}
#: Statuses of a POST route that runs the model.
MODEL_ROUTE_ERRORS: tuple[int, ...] = (400, 401, 413, 422, 429, 500, 503)
#: Statuses of a GET route that reads the engine (``/info``, ``/v1/models``).
READ_ROUTE_ERRORS: tuple[int, ...] = (401, 500, 503)


def documented(model: Any, errors: tuple[int, ...], description: str = "Success") -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: ``model`` for 200 and the error envelope for each status in ``errors``."""
    out: dict[int | str, dict[str, Any]] = {200: {"model": model, "description": description}}
    for status in errors:
        out[status] = {"model": ErrorEnvelope, "description": ERROR_STATUSES[status]}
    return out


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


def native_embedding_response(result: EmbeddingOutput, model: str, encoding_format: EncodingFormat) -> FastJSONResponse:
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


def openai_embedding_response(result: EmbeddingOutput, model: str, encoding_format: EncodingFormat) -> FastJSONResponse:
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
