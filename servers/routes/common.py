"""Routes every server has: health (and its alias healthz), info, models, metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from rag_plugins.protocol import HealthResponse, ModelCard, ModelList, ServerInfo
from servers.metrics import CONTENT_TYPE
from servers.responses import READ_ROUTE_ERRORS, FastJSONResponse, documented, error_response
from servers.routes.context import engine_of

router = APIRouter()

#: Routes that answer without an API key (load balancers and orchestrators probe them).
PUBLIC_PATHS = frozenset({"/health", "/healthz"})


@router.get("/health", responses=documented(HealthResponse, (500, 503), "The model is loaded and warmed up."))
@router.get("/healthz", responses=documented(HealthResponse, (500, 503), "Alias of /health."))
async def health(request: Request) -> Response:
    """200 once the model is loaded and a warm-up forward passed; 503 (with Retry-After) before."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        failure = getattr(request.app.state, "load_error", None)
        message = f"model failed to load: {failure}" if failure else "model is loading"
        return error_response(503, message, "not_ready", headers={"Retry-After": "2"})
    return FastJSONResponse(HealthResponse(model=engine.settings.model_name).model_dump())


def server_info(request: Request) -> ServerInfo:
    """The engine's own facts plus every limit the server applies, read where it is applied.

    Scheduler limits come from the engine's scheduler, the body cap and auth from the app's settings, so
    ``/info`` shows what the process really runs with.
    """
    engine = engine_of(request)
    facts: dict[str, Any] = dict(engine.info())
    settings = engine.settings
    limits = getattr(getattr(engine, "scheduler", None), "limits", None)
    app_settings = getattr(request.app.state, "settings", settings)
    facts.update(
        max_batch_tokens=getattr(limits, "max_batch_tokens", settings.max_batch_tokens),
        max_batch_size=getattr(limits, "max_batch_size", settings.max_batch_size),
        max_wait_ms=getattr(limits, "max_wait_ms", settings.max_wait_ms),
        max_queue_items=getattr(limits, "max_queue_items", settings.max_queue_items),
        bulk_workers=getattr(limits, "bulk_workers", settings.bulk_workers),
        retry_after_s=getattr(limits, "retry_after_s", settings.retry_after_s),
        max_client_batch=settings.max_client_batch,
        priority_max_items=settings.priority_max_items,
        priority_max_tokens=settings.priority_max_tokens,
        tokenizer_threads=settings.tokenizer_threads,
        warmup=settings.warmup,
        max_body_bytes=app_settings.max_body_bytes,
        auth_required=bool(app_settings.api_keys),
        gc_freeze=app_settings.gc_freeze,
    )
    heap = getattr(request.app.state, "heap", None)
    if heap is not None:
        facts.update(gc_frozen_objects=heap.frozen_objects, gc_freezes=list(heap.freezes))
    backend = getattr(engine, "backend", None)
    placement = getattr(backend, "placement", None)
    if placement is not None:
        facts.setdefault("attention", placement.attention)
    padding = getattr(backend, "padding", None)
    if settings.kind == "embed" and padding is not None:
        facts["last_token_padding"] = padding  # what --last-token-padding chose, read off the backend
    policy = getattr(engine, "policy", None)
    if policy is not None:  # servers that take images: the policy their loader applies
        facts.update(
            image_roots=[str(root) for root in policy.image_roots], url_images=policy.allow_urls,
            max_image_bytes=policy.max_image_bytes, max_image_pixels=policy.max_image_pixels,
            url_timeout_s=policy.url_timeout_s,
        )
    return ServerInfo(**facts)


@router.get("/info", responses=documented(ServerInfo, READ_ROUTE_ERRORS, "Model, device and limits."))
async def info(request: Request) -> FastJSONResponse:
    """The model, where it runs, and the limits this server applies."""
    return FastJSONResponse(server_info(request).model_dump())


@router.get("/v1/models", responses=documented(ModelList, READ_ROUTE_ERRORS, "The one model served."))
async def models(request: Request) -> FastJSONResponse:
    """OpenAI model list: the one model this server holds."""
    engine = engine_of(request)
    card = ModelCard(
        id=engine.settings.model_name, created=int(request.app.state.started_at), owned_by="rag-plugins",
        kind=engine.kind,
    )
    return FastJSONResponse(ModelList(data=[card]).model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text exposition.", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
        **{k: v for k, v in documented(None, (401,)).items() if k != 200},
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: queue depth, batch sizes, stage latencies, requests by route and status."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
