"""Lifecycle and request admission shared by every engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from servers.backends.accelerated import DEFAULT_COMPILE_CACHE, acceleration_settled
from servers.backends.device import Placement, choose_placement
from servers.errors import NotReadyError, RequestTooLargeError
from servers.metrics import ServerMetrics, record_request_lane
from servers.model_files import resolve_model_dir
from servers.scheduler import BatchLimits, Lane, TokenBudgetScheduler
from servers.settings import ServerSettings

logger = logging.getLogger(__name__)
P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")


def check_fits_batch(max_length: int, settings: ServerSettings) -> None:
    """Refuse settings under which one input of the model's full length could never be batched.

    Raises:
        ValueError: ``max_batch_tokens`` is below the effective max length (model limit and --max-length).
    """
    if settings.max_batch_tokens < max_length:
        raise ValueError(
            f"--max-batch-tokens ({settings.max_batch_tokens}) is below the max input length ({max_length}); "
            f"raise it or lower --max-length to at most {settings.max_batch_tokens}"
        )


class NamedRecipe(Protocol):
    """Any recipe: frozen dataclasses with a ``name`` shown in logs and ``/info``."""

    @property
    def name(self) -> str: ...


RecipeT = TypeVar("RecipeT", bound=NamedRecipe)


def place_model(settings: ServerSettings, resolve_recipe: Callable[[Path], RecipeT]) -> tuple[Path, RecipeT, Placement]:
    """Locate the model's files, resolve its recipe from them and choose device, dtype and attention.

    Returns:
        The local model directory (a Hub ID is downloaded once), the recipe, and the placement.
    """
    model_dir = resolve_model_dir(settings.model)
    recipe = resolve_recipe(model_dir)
    placement = choose_placement(settings.device, settings.dtype, settings.attention)
    logger.info(
        "loading %s (recipe %s) on %s as %s, attention %s",
        settings.model, recipe.name, placement.device, placement.dtype_name, placement.attention,
    )
    return model_dir, recipe, placement


class EngineBase(Generic[P, R]):
    """Owns the scheduler, the tokenizer thread pool and the ready flag of one model.

    Subclasses provide ``_run_batch`` (called in a model thread) and ``_warmup`` (one real request).
    Use as ``async with engine:`` or call :meth:`start` / :meth:`stop`.
    """

    kind: str = "base"
    #: The torch backend: ``forward(batch, lane)``, ``launch(batch, lane).result()``, ``placement``,
    #: ``packs_bulk`` (its bulk batches run packed), ``start_acceleration()``, ``stop_acceleration()`` and
    #: ``acceleration_info()``.
    backend: Any

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.scheduler: TokenBudgetScheduler[P, R] = TokenBudgetScheduler(
            self._run_batch,
            BatchLimits(
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queue_items=settings.max_queue_items,
                retry_after_s=settings.retry_after_s,
                bulk_workers=settings.bulk_workers,
            ),
            observer=self.metrics,
        )
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._priority_pool: ThreadPoolExecutor | None = None
        self.ready = False
        self.warmup_s: float | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the scheduler and run the warm-up request; ``ready`` turns true when it passed."""
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=max(1, self.settings.tokenizer_threads), thread_name_prefix="tokenize"
        )
        # Small requests get their own preparation thread so a query is never queued behind the
        # tokenization of bulk requests.
        self._priority_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize-priority")
        if self._pipelines():
            self.scheduler.enable_pipelining(self._launch_batch)
        if self.backend.packs_bulk:
            self.scheduler.enable_packing()
        await self.scheduler.start()
        if self.settings.warmup:
            started = time.perf_counter()
            await self._warmup()
            self.warmup_s = time.perf_counter() - started
            logger.info("warm-up forward passed in %.2fs", self.warmup_s)
        self.ready = True
        # Graphs and compilation build in the background; the eager path answers meanwhile.
        self.backend.start_acceleration()

    async def stop(self) -> None:
        self.ready = False
        # Background graph capture / compilation ends at its next step instead of outliving the engine.
        self.backend.stop_acceleration()
        await self.scheduler.stop()
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=True)
            self._tokenize_pool = None
        if self._priority_pool is not None:
            self._priority_pool.shutdown(wait=True)
            self._priority_pool = None

    async def __aenter__(self: T) -> T:
        await self.start()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------- helpers
    def _run_batch(self, payloads: list[P], lane: Lane) -> Sequence[R]:
        """Run one batch in the lane's model thread: one result per payload (the backend's ``forward``)."""
        return list(self.backend.forward(payloads, lane))

    def _launch_batch(self, payloads: list[P], lane: Lane) -> Callable[[], Sequence[R]]:
        """Queue a batch on the device (the backend's ``launch``); the returned function collects it."""
        pending = self.backend.launch(payloads, lane)
        return lambda: list(pending.result())

    def _pipelines(self) -> bool:
        """Whether the bulk lane keeps a batch in flight: only on CUDA, where ``launch`` returns early."""
        return self.backend.placement.device.type == "cuda"

    async def _warmup(self) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def accelerating(self) -> bool:
        """Whether the backend is still capturing graphs or compiling in the background."""
        return not acceleration_settled(self.backend.acceleration_info())

    def acceleration_facts(self) -> dict[str, Any]:
        """``/info`` fields of the speed settings and of what the backend has built so far."""
        s = self.settings
        return {
            "cuda_graphs": s.cuda_graphs, "compile": s.compile, "cuda_graph_max_batch": s.cuda_graph_max_batch,
            "cuda_graph_max_length": s.cuda_graph_max_length,
            "compiled_graph_buckets": list(s.compiled_graph_buckets), "bulk_packing": s.bulk_packing,
            "compile_cache_dir": s.compile_cache_dir or DEFAULT_COMPILE_CACHE,
            "warmup_s": round(self.warmup_s, 3) if self.warmup_s is not None else None,
            "acceleration": self.backend.acceleration_info(),
        }

    def _check_ready(self) -> None:
        if self._tokenize_pool is None:
            raise NotReadyError()

    def _check_count(self, n: int, what: str) -> None:
        if n > self.settings.max_client_batch:
            raise RequestTooLargeError(
                f"{n} {what} in one request; this server takes at most {self.settings.max_client_batch} "
                "(--max-client-batch): split the request"
            )

    def requested_instruction(self, instruction: str | None) -> str | None:
        """A request's instruction, else the server's ``--instruction``, else None (the recipe's default).

        The one place every engine resolves (request, server flag, model default): recipes fill in their own
        default when this returns None.
        """
        return instruction if instruction is not None else self.settings.instruction

    def _is_priority(self, n_items: int, n_tokens: int) -> bool:
        return n_items <= self.settings.priority_max_items and n_tokens <= self.settings.priority_max_tokens

    async def _off_loop(
        self, fn: Callable[..., T], *args: Any, stage: str = "tokenize", priority: bool | None = None
    ) -> T:
        """Run CPU work (tokenization, image decoding) on the tokenizer pool, timed as ``stage``.

        ``priority`` picks the priority thread; None decides by size: ``args[0]`` is the request's list of
        items, and a request of at most ``priority_max_items`` items is prepared on the priority thread.
        """
        self._check_ready()
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if priority is None:
            priority = bool(args) and isinstance(args[0], list) and len(args[0]) <= self.settings.priority_max_items
        pool = self._priority_pool if priority else self._tokenize_pool
        result = await loop.run_in_executor(pool, fn, *args)
        # Per lane: under bulk load a query's time splits into these, which is what a latency tail needs.
        self.metrics.stage_seconds.labels(stage, "priority" if priority else "bulk").observe(
            time.perf_counter() - started
        )
        return result

    async def _schedule(self, payloads: Sequence[P], costs: Sequence[int], priority: bool = True) -> list[R]:
        """Queue payloads for the model; the priority lane when ``priority`` and the request is small enough."""
        started = time.perf_counter()
        lane_is_priority = priority and self._is_priority(len(payloads), sum(costs))
        record_request_lane("priority" if lane_is_priority else "bulk")
        results = await self.scheduler.submit(payloads, costs, priority=lane_is_priority)
        self.metrics.stage_seconds.labels("queue_and_forward", "priority" if lane_is_priority else "bulk").observe(
            time.perf_counter() - started
        )
        return results
