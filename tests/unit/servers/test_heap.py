"""The start-up heap freeze and the GC pause histogram (servers/heap.py, servers/metrics.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from servers.heap import HeapFreezer
from servers.metrics import ServerMetrics


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the rest of the suite must not inherit a freeze)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freeze_moves_live_objects_out_of_collections_and_collects_garbage_first() -> None:
    garbage = _Cycle()
    del garbage  # cyclic garbage: only a collection frees it
    alive = [_Cycle() for _ in range(100)]
    heap = HeapFreezer()
    heap.freeze("engine ready")
    # Other threads of the test process (Milvus Lite's gRPC, servers' clients) may free frozen objects at any
    # time, and one freed by its reference count leaves the count: the count can only drift down, a little.
    recorded = heap.freezes[0]["objects"]
    now = heap.frozen_objects
    assert recorded >= now >= 100
    assert recorded - now < 1_000
    assert not any(type(o) is _Cycle for o in gc.get_objects())  # frozen objects are out of every generation
    assert heap.freezes[0]["reason"] == "engine ready"
    heap.unfreeze()
    assert gc.get_freeze_count() == 0
    # The cyclic garbage was collected before the freeze: unfrozen, only the live ones come back.
    assert sum(type(o) is _Cycle for o in gc.get_objects()) == len(alive)


def test_a_disabled_freezer_leaves_the_collector_alone() -> None:
    heap = HeapFreezer(enabled=False)
    heap.freeze("engine ready")
    asyncio.run(heap.freeze_when_accelerated(_Engine([True, False])))
    assert (gc.get_freeze_count(), heap.frozen_objects, heap.freezes) == (0, 0, [])


class _Engine:
    """Reports background acceleration for as many polls as ``states`` says."""

    def __init__(self, states: list[bool]) -> None:
        self.states = states
        self.polls = 0

    def accelerating(self) -> bool:
        self.polls += 1
        return self.states.pop(0) if self.states else False


def test_a_second_freeze_follows_the_end_of_acceleration_once() -> None:
    heap = HeapFreezer()
    heap.freeze("engine ready")
    engine = _Engine([True, True, True, False])
    asyncio.run(heap.freeze_when_accelerated(engine, poll_s=0.01))
    assert [f["reason"] for f in heap.freezes] == ["engine ready", "acceleration finished"]
    assert engine.polls == 4
    # An engine that was never accelerating (CPU, search server): no second freeze.
    asyncio.run(heap.freeze_when_accelerated(_Engine([False]), poll_s=0.01))
    assert len(heap.freezes) == 2


def test_gc_pauses_reach_the_histogram_at_scrape_time_and_stop_when_removed() -> None:
    metrics = ServerMetrics()
    # Automatic collections (another thread allocating) would add to the counts: only the explicit ones run.
    gc.disable()
    try:
        metrics.gc_pauses.install()
        metrics.gc_pauses.install()  # idempotent: one callback, not two
        try:
            gc.collect()
            gc.collect(0)
        finally:
            metrics.gc_pauses.remove()
        gc.collect()  # after removal: not recorded
    finally:
        gc.enable()
    text = metrics.render().decode()
    assert 'rag_gc_pause_seconds_count{generation="2"} 1.0' in text
    assert 'rag_gc_pause_seconds_count{generation="0"} 1.0' in text
    metrics.gc_pauses.remove()  # idempotent too
    assert metrics.gc_pauses not in gc.callbacks
