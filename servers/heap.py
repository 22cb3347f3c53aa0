"""Garbage-collector policy of a server process: its start-up heap is frozen out of every collection.

A full (generation 2) collection visits every tracked object, holding the GIL, so every thread of the
server stops for it. After loading torch, transformers and a model a server holds ~0.4M such objects (more
once graphs and compiled code are built), and one full collection of them took 0.22 s on the 2-core CI box.
Under bulk load the objects of in-flight requests keep surviving young collections into generation 2 until
CPython runs a full one: in a 64-client load on that box the slowest query (240-263 ms against a p50 of
9-10 ms) was exactly that pause (``rag_gc_pause_seconds{generation="2"}``, 198-240 ms).

:class:`HeapFreezer` collects once and then moves everything alive into the permanent generation
(``gc.freeze``), which collections skip; it does it when the engine is ready and again when background
acceleration has finished (compiled code and graphs are long-lived too). The same load then had full
collections of 10-11 ms and a slowest query of 31-36 ms (``python -m bench.loaded_latency``,
``bench/results/loaded_latency_cpu.md``). vLLM's engine freezes its heap after start-up for the
same reason. A server that stops unfreezes, so processes that build several apps (tests) can free them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: How often the freezer looks whether background acceleration has finished.
ACCELERATION_POLL_S = 2.0


class Accelerating(Protocol):
    """An engine that may still be building graphs or compiled code in the background."""

    def accelerating(self) -> bool: ...


@dataclass
class HeapFreezer:
    """Freezes the process's heap at the points :func:`freeze` is called, and records each freeze.

    Attributes:
        enabled: ``--gc-freeze``; when False nothing is collected or frozen.
        freezes: One entry per freeze: why, objects frozen in total after it, seconds it took.
    """

    enabled: bool = True
    freezes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frozen_objects(self) -> int:
        """Objects in the permanent generation now (0 when nothing was frozen)."""
        return gc.get_freeze_count() if self.freezes else 0

    def freeze(self, reason: str) -> None:
        """Collect the garbage there is now, then move every object still alive out of future collections.

        The collection first matters: garbage frozen now could never be collected later.
        """
        if not self.enabled:
            return
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        seconds = time.perf_counter() - started
        self.freezes.append({"reason": reason, "objects": gc.get_freeze_count(), "seconds": round(seconds, 3)})
        logger.info("froze the heap (%s): %d objects out of garbage collection, %.2fs", reason,
                    gc.get_freeze_count(), seconds)

    async def freeze_when_accelerated(self, engine: Accelerating, poll_s: float = ACCELERATION_POLL_S) -> None:
        """Wait until ``engine`` has finished its background acceleration, then freeze again (once).

        The freeze's collection is one pause (~0.1-0.3 s) while the server already serves.
        """
        if not self.enabled or not engine.accelerating():
            return
        # The state lives in the backend's acceleration thread, which signals nothing to this loop.
        while engine.accelerating():  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        self.freeze("acceleration finished")

    def unfreeze(self) -> None:
        """Give the frozen objects back to the collector (a stopped server's engine can then be freed)."""
        if self.freezes:
            gc.unfreeze()
