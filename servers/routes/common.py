"""Routes every server has: health, info, models, metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from servers.metrics import CONTENT_TYPE
from servers.responses import FastJSONResponse, error_response
from servers.routes.context import engine_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        failure = getattr(request.app.state, "load_error", None)
        message = f"model failed to load: {failure}" if failure else "model is loading"
        return error_response(503, message, "not_ready", headers={"Retry-After": "2"})
    return FastJSONResponse({"status": "ok", "model": engine.settings.model_name})


@router.get("/info")
async def info(request: Request) -> FastJSONResponse:
    return FastJSONResponse(engine_of(request).info())


@router.get("/v1/models")
async def models(request: Request) -> FastJSONResponse:
    engine = engine_of(request)
    return FastJSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": engine.settings.model_name,
                    "object": "model",
                    "created": int(request.app.state.started_at),
                    "owned_by": "rag-plugins",
                    "kind": engine.kind,
                }
            ],
        }
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


def started_now() -> float:
    return time.time()
