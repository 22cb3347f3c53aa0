"""Token-budget batching scheduler (no FastAPI, no torch).

Requests are split into items (one text, one query/document pair, ...) with a token cost. Items wait in one
of two lanes:

* ``priority``: small interactive requests (a search query). The lane has its own worker and its own model
  thread, so a query never waits for a bulk ingestion batch to be *formed*; on CUDA the backend also runs
  this lane on a high-priority stream, so its kernels overtake the bulk lane's on the GPU.
* ``bulk``: everything else.

Each worker forms a batch from the head of its lane: the oldest live item is always in the batch (no
starvation) and is joined by the items closest to it in length, so padding stays small; the batch holds at
most ``max_batch_size`` items and ``n_items * longest_item`` tokens at most ``max_batch_tokens`` (a bulk lane
whose backend runs batches packed, without padding, fills the budget with the sum of its items' tokens in
arrival order instead: :meth:`TokenBudgetScheduler.enable_packing`). A bulk
worker that finds a part-full batch waits up to ``max_wait_ms`` for more work; the priority worker never
waits (it takes whatever queries are queued at once). Items of requests whose caller went
away (the awaiting task was cancelled) are dropped before the forward pass. When the queue holds
``max_queue_items`` items a new request is refused whole with :class:`QueueFullError` (HTTP 429 with
``Retry-After``), so a request is either fully accepted or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from servers.errors import QueueFullError, RequestTooLargeError, ServingError
from servers.settings import (
    DEFAULT_BULK_WORKERS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUE_ITEMS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_RETRY_AFTER_S,
)

logger = logging.getLogger(__name__)

Lane = Literal["priority", "bulk"]
LANES: tuple[Lane, ...] = ("priority", "bulk")
P = TypeVar("P")
R = TypeVar("R")

#: How many queued items a worker looks at when it picks a batch: enough to find same-length neighbours,
#: few enough that choosing stays well under a millisecond.
CANDIDATE_WINDOW_PER_BATCH_SLOT = 8
#: Batches a pipelined worker keeps handed to its model thread: the one being launched and one queued behind
#: it, so the model thread goes from one launch straight to the next without a round trip through the
#: event loop (which, under HTTP load, can take longer than the little work the GPU has left queued).
PIPELINE_DEPTH = 2


@dataclass(frozen=True)
class BatchLimits:
    """Limits the scheduler packs batches under."""

    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    #: Workers (and model threads) of the bulk lane; with 2, one batch is prepared and launched while the
    #: accelerator still runs the other, which hides the host work between batches.
    bulk_workers: int = DEFAULT_BULK_WORKERS


class BatchObserver(Protocol):
    """Receives batch statistics (implemented by the Prometheus metrics; a no-op in unit tests)."""

    def observe_batch(self, lane: str, items: int, tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def observe_queue(self, lane: str, depth: int) -> None: ...

    def observe_dropped(self, lane: str, items: int) -> None: ...


class NullObserver:
    def observe_batch(self, lane: str, items: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        return None

    def observe_queue(self, lane: str, depth: int) -> None:
        return None

    def observe_dropped(self, lane: str, items: int) -> None:
        return None


class BatchFailedError(ServingError):
    """The forward pass failed for an item even when run alone (answered as a 500 without internals)."""

    status = 500
    type = "server_error"


class _PendingRequest(Generic[R]):
    __slots__ = ("future", "remaining", "results")

    def __init__(self, future: asyncio.Future[list[R]], n: int) -> None:
        self.future = future
        self.results: list[R | None] = [None] * n
        self.remaining = n

    @property
    def live(self) -> bool:
        return not self.future.done()


# eq=False: items are found by identity (``ordered.index(anchor)``); the generated __eq__ compared
# payloads (token-id tuples) field by field, ~5% of the event loop's GIL time under bulk load.
@dataclass(eq=False)
class _Item(Generic[P, R]):
    payload: P
    tokens: int
    request: _PendingRequest[R]
    position: int
    seq: int


@dataclass
class _Launch(Generic[P, R]):
    """A bulk batch handed to the model thread; ``launched`` resolves to ``(started, collect)`` once its work
    is queued on the device (``started``: when the model thread began it; ``collect()`` waits for results)."""

    batch: list[_Item[P, R]]
    launched: asyncio.Future[tuple[float, Callable[[], Sequence[R]]]]


@dataclass
class _LaneState(Generic[P, R]):
    name: Lane
    queue: deque[_Item[P, R]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    executor: ThreadPoolExecutor | None = None
    #: Waits for pipelined batches' results, so the model thread never waits for them.
    collector: ThreadPoolExecutor | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TokenBudgetScheduler(Generic[P, R]):
    """Batches items of concurrent requests under a token budget and runs them on a model callable.

    Args:
        run_batch: ``run_batch(payloads, lane) -> results``, called in the lane's own thread with at most
            ``max_batch_size`` payloads; returns one result per payload, same order. Blocking is fine.
        limits: Batch and queue limits.
        observer: Receives batch/queue statistics.
    """

    def __init__(
        self,
        run_batch: Callable[[list[P], Lane], Sequence[R]],
        limits: BatchLimits,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._launch_batch: Callable[[list[P], Lane], Callable[[], Sequence[R]]] | None = None
        self._packed_bulk = False
        self.limits = limits
        self._observer: BatchObserver = observer or NullObserver()
        self._lanes: dict[Lane, _LaneState[P, R]] = {}
        self._seq = 0
        self._queued_items = 0
        self._throughput_tokens_per_s = 0.0
        self._running = False

    # ---------------------------------------------------------------------------------------------- control
    def enable_pipelining(self, launch_batch: Callable[[list[P], Lane], Callable[[], Sequence[R]]] | None) -> None:
        """Let the bulk lane keep one batch in flight while it launches the next.

        ``launch_batch(payloads, lane)`` queues a batch's work on the accelerator and returns a function
        that waits for and returns its results. The bulk worker keeps the next batch queued in the model
        thread behind the one it is launching (:data:`PIPELINE_DEPTH`), and collects results in a thread of
        their own, so the device never idles while the host delivers one batch and picks, pads and launches
        the next. Only worth it on an asynchronous device (CUDA); on CPU it would only delay answers. The
        priority lane never pipelines: it answers as soon as its batch is done.
        """
        self._launch_batch = launch_batch

    def enable_packing(self) -> None:
        """Form bulk batches for a backend that runs them packed (texts back to back, no padding).

        A packed batch costs the sum of its items' tokens, not items x longest, so the bulk worker fills the
        token budget in arrival order (first fit: an item that does not fit leaves room for later, shorter
        ones) instead of grouping items by length. The priority lane is unchanged.
        """
        self._packed_bulk = True

    async def start(self) -> None:
        """Start the worker tasks (one model thread each) of every lane. Idempotent."""
        if self._running:
            return
        self._running = True
        for lane in LANES:
            workers = max(1, self.limits.bulk_workers) if lane == "bulk" else 1
            state: _LaneState[P, R] = _LaneState(name=lane)
            state.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"model-{lane}")
            launch = self._launch_batch if lane == "bulk" else None
            if launch is not None:
                state.collector = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"collect-{lane}")
            state.tasks = [
                asyncio.create_task(
                    self._worker(state) if launch is None else self._pipelined_worker(state, launch),
                    name=f"scheduler-{lane}-{i}",
                )
                for i in range(workers)
            ]
            self._lanes[lane] = state

    async def stop(self) -> None:
        """Stop the workers; requests still queued fail with a 503-style error."""
        self._running = False
        for state in self._lanes.values():
            for task in state.tasks:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            for item in state.queue:
                if item.request.live:
                    item.request.future.set_exception(ServingError("server is shutting down"))
            state.queue.clear()
            for executor in (state.executor, state.collector):
                if executor is not None:
                    executor.shutdown(wait=True)
        self._lanes.clear()
        self._queued_items = 0

    # ------------------------------------------------------------------------------------------------ stats
    @property
    def queued_items(self) -> int:
        return self._queued_items

    def queue_depths(self) -> dict[str, int]:
        return {lane: len(state.queue) for lane, state in self._lanes.items()}

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the queue's drain time at the measured throughput."""
        queued_tokens = sum(item.tokens for state in self._lanes.values() for item in state.queue)
        if self._throughput_tokens_per_s <= 0:
            return self.limits.retry_after_s
        estimate = queued_tokens / self._throughput_tokens_per_s
        return int(min(60, max(self.limits.retry_after_s, round(estimate))))

    # --------------------------------------------------------------------------------------------- submit
    async def submit(self, payloads: Sequence[P], costs: Sequence[int], *, priority: bool = False) -> list[R]:
        """Queue a request's items and wait for all their results (input order).

        Raises:
            QueueFullError: the queue cannot take ``len(payloads)`` more items now; nothing was queued.
            RequestTooLargeError: the request has more items than the whole queue holds (413, not 429).
        """
        if not self._running:
            raise ServingError("scheduler is not running")
        if len(payloads) != len(costs):
            raise ValueError("payloads and costs differ in length")
        n = len(payloads)
        if n == 0:
            return []
        if n > self.limits.max_queue_items:
            # It would never fit: a 429 would only make the client retry until it gives up.
            raise RequestTooLargeError(
                f"{n} items in one request; this server queues at most {self.limits.max_queue_items} "
                "(--max-queue-items): split the request"
            )
        if self._queued_items + n > self.limits.max_queue_items:
            raise QueueFullError(
                f"server queue is full ({self._queued_items} items waiting, limit "
                f"{self.limits.max_queue_items}); retry after the indicated delay",
                retry_after_s=self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        request: _PendingRequest[R] = _PendingRequest(loop.create_future(), n)
        lane = self._lanes["priority" if priority else "bulk"]
        for position, (payload, cost) in enumerate(zip(payloads, costs, strict=True)):
            self._seq += 1
            lane.queue.append(_Item(payload, max(1, int(cost)), request, position, self._seq))
        self._queued_items += n
        self._observer.observe_queue(lane.name, len(lane.queue))
        lane.wakeup.set()
        results = await request.future
        return results

    # --------------------------------------------------------------------------------------------- worker
    async def _worker(self, state: _LaneState[P, R]) -> None:
        """One batch at a time: take, run in the model thread, deliver."""
        loop = asyncio.get_running_loop()
        while self._running:
            if not state.queue:
                state.wakeup.clear()
                await state.wakeup.wait()
                continue
            if state.name == "bulk" and not self._batch_is_full(state) and self.limits.max_wait_ms > 0:
                # Give concurrent requests a moment to join a part-full bulk batch. The priority lane never
                # waits: a query's latency is the point, and graphed small batches cost little.
                await self._wait_for_more(state)
            batch = self._take_batch(state)
            if batch:
                await self._run(state, batch, loop)

    async def _pipelined_worker(
        self, state: _LaneState[P, R], launch: Callable[[list[P], Lane], Callable[[], Sequence[R]]]
    ) -> None:
        """Keep the model thread fed with launches; collect and deliver results beside it.

        Up to :data:`PIPELINE_DEPTH` batches are handed to the model thread at once. When the oldest one's
        launch returns (its work is queued on the device), the model thread is already launching the next,
        and the worker hands it one more before it waits (in the collector thread) for the oldest's results.
        """
        loop = asyncio.get_running_loop()
        launches: deque[_Launch[P, R]] = deque()
        collecting: list[_Launch[P, R]] = []  # the batch being collected (answered on shutdown too)

        def timed_launch(payloads: list[P]) -> tuple[float, Callable[[], Sequence[R]]]:
            started = time.perf_counter()
            return started, launch(payloads, state.name)

        async def top_up(device_idle: bool) -> None:
            while len(launches) < PIPELINE_DEPTH and state.queue and self._running:
                if device_idle and not launches and not self._batch_is_full(state) and self.limits.max_wait_ms > 0:
                    await self._wait_for_more(state)  # costs nothing while the device has no work anyway
                batch = self._take_batch(state)
                if not batch:
                    return
                future = loop.run_in_executor(state.executor, timed_launch, [it.payload for it in batch])
                launches.append(_Launch(batch, future))

        try:
            while self._running:
                collecting.clear()  # the previous head is answered (delivered or re-run)
                await top_up(device_idle=True)
                if not launches:
                    if not state.queue:
                        state.wakeup.clear()
                        await state.wakeup.wait()
                    continue
                head = launches.popleft()
                collecting[:] = [head]
                try:
                    started, collect = await head.launched
                except Exception as exc:
                    logger.warning("launching a batch of %d failed (%s); running it synchronously",
                                   len(head.batch), type(exc).__name__)
                    await self._run(state, head.batch, loop)
                    continue
                # The model thread has moved on to the next launch: queue one more behind it first.
                await top_up(device_idle=False)
                try:
                    results = await loop.run_in_executor(state.collector, collect)
                except Exception as exc:
                    logger.warning("a pipelined batch of %d failed (%s); re-running it synchronously",
                                   len(head.batch), type(exc).__name__)
                    await self._run(state, head.batch, loop)
                    continue
                self._deliver(state, head.batch, results, time.perf_counter() - started)
        finally:
            for pending in launches:
                pending.launched.cancel()  # not started yet: it never runs (a running one finishes)
            for pending in [*collecting, *launches]:
                for item in pending.batch:
                    if item.request.live:
                        item.request.future.set_exception(ServingError("server is shutting down"))

    async def _wait_for_more(self, state: _LaneState[P, R]) -> None:
        """Wait up to ``max_wait_ms`` for another request to join a part-full batch."""
        state.wakeup.clear()
        try:
            await asyncio.wait_for(state.wakeup.wait(), timeout=self.limits.max_wait_ms / 1000)
        except asyncio.TimeoutError:
            pass

    def _batch_is_full(self, state: _LaneState[P, R]) -> bool:
        if len(state.queue) >= self.limits.max_batch_size:
            return True
        total = 0
        for item in state.queue:
            total += item.tokens
            if total >= self.limits.max_batch_tokens:
                return True
        return False

    def _take_batch(self, state: _LaneState[P, R]) -> list[_Item[P, R]]:
        """Pop the oldest live item plus its nearest-length neighbours that fit the limits (packed lane:
        the oldest items whose tokens fit the budget, see :meth:`enable_packing`)."""
        limits = self.limits
        window = min(len(state.queue), CANDIDATE_WINDOW_PER_BATCH_SLOT * limits.max_batch_size)
        popleft = state.queue.popleft
        candidates = [item for item in [popleft() for _ in range(window)] if item.request.live]
        dropped = window - len(candidates)
        if dropped:
            self._queued_items -= dropped
            self._observer.observe_dropped(state.name, dropped)
        if not candidates:
            return []
        if self._packs(state):
            return self._take_packed(state, candidates)
        # Positions in length order; the sort is stable and candidates are in arrival order, so equal
        # lengths keep arrival order. Integers and a C-level key: this runs on the event loop for every
        # batch (the sort of item objects was ~3% of the GIL under bulk load on the H200).
        tokens = [it.tokens for it in candidates]
        ordered = sorted(range(len(candidates)), key=tokens.__getitem__)
        lo = hi = ordered.index(0)  # the oldest candidate anchors the batch
        anchor_tokens = longest = tokens[0]
        # Grow a window in length order around the anchor, always taking the neighbour closest in length.
        while hi - lo + 1 < limits.max_batch_size:
            left = tokens[ordered[lo - 1]] if lo > 0 else None
            right = tokens[ordered[hi + 1]] if hi + 1 < len(ordered) else None
            if left is None and right is None:
                break
            take_right = right is not None and (left is None or right - anchor_tokens <= anchor_tokens - left)
            new_longest = max(longest, right) if take_right and right is not None else longest
            if (hi - lo + 2) * new_longest > limits.max_batch_tokens:
                if take_right and left is not None and (hi - lo + 2) * longest <= limits.max_batch_tokens:
                    lo -= 1
                    continue
                break
            if take_right:
                hi += 1
                longest = new_longest
            else:
                lo -= 1
        chosen = sorted(ordered[lo : hi + 1])
        taken = set(chosen)
        return self._settle(state, [candidates[i] for i in chosen],
                            [it for i, it in enumerate(candidates) if i not in taken])

    def _packs(self, state: _LaneState[P, R]) -> bool:
        return self._packed_bulk and state.name == "bulk"

    def _take_packed(self, state: _LaneState[P, R], candidates: list[_Item[P, R]]) -> list[_Item[P, R]]:
        """First fit in arrival order: the oldest item, then every later one whose tokens still fit."""
        limits = self.limits
        batch: list[_Item[P, R]] = []
        rest: list[_Item[P, R]] = []
        total = 0
        for item in candidates:
            if len(batch) < limits.max_batch_size and (not batch or total + item.tokens <= limits.max_batch_tokens):
                batch.append(item)
                total += item.tokens
            else:
                rest.append(item)
        return self._settle(state, batch, rest)

    def _settle(self, state: _LaneState[P, R], batch: list[_Item[P, R]],
                rest: list[_Item[P, R]]) -> list[_Item[P, R]]:
        """Put ``rest`` back at the head of the queue in its (FIFO) order and account for ``batch`` leaving."""
        state.queue.extendleft(reversed(rest))
        self._queued_items -= len(batch)
        self._observer.observe_queue(state.name, len(state.queue))
        return batch

    async def _run(
        self, state: _LaneState[P, R], batch: list[_Item[P, R]], loop: asyncio.AbstractEventLoop
    ) -> None:
        payloads = [item.payload for item in batch]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(state.executor, self._run_batch, payloads, state.name)
        except Exception as exc:
            if len(batch) > 1:
                # Often an out-of-memory on one big batch: retry the halves before failing anyone.
                logger.warning("batch of %d items failed (%s); retrying in halves", len(batch), type(exc).__name__)
                middle = len(batch) // 2
                await self._run(state, batch[:middle], loop)
                await self._run(state, batch[middle:], loop)
                return
            logger.exception("forward pass failed for a single item")
            if batch[0].request.live:
                batch[0].request.future.set_exception(
                    BatchFailedError("the model failed on this input; see the server log")
                )
            return
        self._deliver(state, batch, results, time.perf_counter() - started)

    def _deliver(
        self, state: _LaneState[P, R], batch: list[_Item[P, R]], results: Sequence[R], elapsed: float
    ) -> None:
        """Record the batch's statistics and hand each result to its request (complete ones resolve)."""
        tokens = sum(item.tokens for item in batch)
        padded = tokens if self._packs(state) else len(batch) * max(item.tokens for item in batch)
        if elapsed > 0:
            rate = tokens / elapsed
            self._throughput_tokens_per_s = (
                rate if self._throughput_tokens_per_s == 0 else 0.8 * self._throughput_tokens_per_s + 0.2 * rate
            )
        self._observer.observe_batch(state.name, len(batch), tokens, padded, elapsed)
        if len(results) != len(batch):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        for item, result in zip(batch, results, strict=True):
            request = item.request
            if not request.live:
                continue
            request.results[item.position] = result
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(list(request.results))  # type: ignore[arg-type]
