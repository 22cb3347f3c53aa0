"""Prometheus metrics of one server process (own registry, so several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Request, queue, batch and stage metrics; implements the scheduler's ``BatchObserver``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rag_requests_total", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "rag_request_duration_seconds", "Request latency by route", ["route"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "rag_stage_duration_seconds",
            "Latency of a pipeline stage (tokenize, prepare, queue_and_forward) by the lane its request took",
            ["stage", "lane"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("rag_queue_depth", "Items waiting in a scheduler lane", ["lane"], registry=r)
        self.batch_items = Histogram(
            "rag_batch_size_items", "Items per forward batch", ["lane"], buckets=_ITEM_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rag_batch_size_tokens", "Real tokens per forward batch", ["lane"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "rag_batch_padded_tokens", "Tokens per forward batch including padding", ["lane"],
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.forward_seconds = Histogram(
            "rag_forward_duration_seconds", "Forward pass latency per batch", ["lane"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("rag_input_tokens_total", "Tokens processed by the model", registry=r)
        self.dropped = Counter(
            "rag_dropped_items_total", "Items dropped because their request was cancelled", ["lane"], registry=r
        )
        self.rejected = Counter("rag_rejected_requests_total", "Requests refused with 429 (queue full)", registry=r)

    # BatchObserver -------------------------------------------------------------------------------------
    def observe_batch(self, lane: str, items: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_items.labels(lane).observe(items)
        self.batch_tokens.labels(lane).observe(tokens)
        self.batch_padded_tokens.labels(lane).observe(padded_tokens)
        self.forward_seconds.labels(lane).observe(seconds)
        self.tokens.inc(tokens)

    def observe_queue(self, lane: str, depth: int) -> None:
        self.queue_depth.labels(lane).set(depth)

    def observe_dropped(self, lane: str, items: int) -> None:
        self.dropped.labels(lane).inc(items)

    def render(self) -> bytes:
        return generate_latest(self.registry)
