"""Prometheus metrics of one server process (own registry, so several apps can live in one test process)."""

from __future__ import annotations

import gc
import time
from collections import deque
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Garbage-collection pauses. Under bulk load on the 2-core CI box: generation 0 ~1 ms, generation 1 5-10 ms,
#: a full collection ~8 ms with the start-up heap frozen and ~0.2 s without (servers/heap.py).
_GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RequestLane:
    """The scheduler lane a request's items took: "priority", "bulk", or "none" (it queued nothing).

    The request middleware puts one in :data:`REQUEST_LANE` per request; the engine, which may run the request
    in a child task (disconnect watching), records the lane into that same object, which the middleware then
    reads, so a query's whole request time reads apart from the bulk requests' on the same route.
    """

    __slots__ = ("lane",)

    def __init__(self) -> None:
        self.lane = "none"


REQUEST_LANE: ContextVar[RequestLane | None] = ContextVar("rag_request_lane", default=None)


def record_request_lane(lane: str) -> None:
    """Note the lane of the current request's items (no-op outside a request, e.g. an in-process engine)."""
    holder = REQUEST_LANE.get()
    if holder is not None:
        holder.lane = lane


class GcPauseRecorder:
    """Times this process's garbage collections (``gc.callbacks``) for ``rag_gc_pause_seconds``.

    A collection stops every thread (it holds the GIL), so a full one is a latency spike for whatever
    request is in flight; the histogram lets a latency tail be matched against it. The callback only
    appends to a deque: it runs wherever an allocation triggered the collection, possibly inside a
    prometheus_client call that holds that library's (non-reentrant) lock, so observing there could deadlock.
    :meth:`drain` hands the pauses over at scrape time.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[int, float]] = deque(maxlen=100_000)
        self._started = 0.0
        self._installed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._pending.append((int(info.get("generation", -1)), time.perf_counter() - self._started))
            self._started = 0.0

    def install(self) -> None:
        """Start timing collections (idempotent)."""
        if not self._installed:
            gc.callbacks.append(self)
            self._installed = True

    def remove(self) -> None:
        """Stop timing collections (idempotent); several apps in one process each remove their own."""
        if self._installed:
            gc.callbacks.remove(self)
            self._installed = False

    def drain(self) -> list[tuple[int, float]]:
        """The (generation, seconds) pauses recorded since the last call."""
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out


class ServerMetrics:
    """Request, queue, batch and stage metrics; implements the scheduler's ``BatchObserver``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rag_requests_total", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "rag_request_duration_seconds",
            "Request latency by route and the scheduler lane its items took (none: it queued nothing)",
            ["route", "lane"], buckets=_LATENCY_BUCKETS,
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
        self.gc_pause_seconds = Histogram(
            "rag_gc_pause_seconds", "Garbage-collection pauses of the server process by generation (2 = full)",
            ["generation"], buckets=_GC_BUCKETS, registry=r,
        )
        self.gc_pauses = GcPauseRecorder()

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
        for generation, seconds in self.gc_pauses.drain():
            self.gc_pause_seconds.labels(str(generation)).observe(seconds)
        return generate_latest(self.registry)
