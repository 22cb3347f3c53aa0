"""TokenBudgetScheduler: batch packing, length sorting, fairness, priority lane, cancellation, admission."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from servers.errors import QueueFullError, RequestTooLargeError, ServingError
from servers.scheduler import BatchFailedError, BatchLimits, Lane, NullObserver, TokenBudgetScheduler

WAIT_S = 10.0


@dataclass(frozen=True)
class Job:
    """A payload that knows its own cost, so tests can inspect what each batch held."""

    name: str
    tokens: int


@dataclass
class Recorder:
    """A ``run_batch`` that records every batch; the first bulk batch can be held until ``gate`` is set."""

    hold_first: bool = False
    fail_on: frozenset[str] = frozenset()
    batches: list[tuple[Lane, list[Job]]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    _held: bool = False

    def __call__(self, payloads: list[Job], lane: Lane) -> Sequence[str]:
        self.batches.append((lane, list(payloads)))
        if self.hold_first and lane == "bulk" and not self._held:
            self._held = True
            self.holding.set()
            assert self.gate.wait(WAIT_S), "test never opened the gate"
        if any(p.name in self.fail_on for p in payloads):
            raise RuntimeError("simulated out-of-memory")
        return [f"out:{p.name}" for p in payloads]

    def bulk_batches(self) -> list[list[Job]]:
        return [jobs for lane, jobs in self.batches if lane == "bulk"]


def make_scheduler(recorder: Recorder, **limits: float) -> TokenBudgetScheduler[Job, str]:
    values: dict[str, float] = {"max_wait_ms": 0.0}
    values.update(limits)
    return TokenBudgetScheduler(recorder, BatchLimits(**values))  # type: ignore[arg-type]


async def submit_jobs(sched: TokenBudgetScheduler[Job, str], jobs: list[Job]) -> list[str]:
    return await sched.submit(jobs, [j.tokens for j in jobs])


async def hold_worker(sched: TokenBudgetScheduler[Job, str], recorder: Recorder) -> asyncio.Task[list[str]]:
    """Submit a blocker job and wait until the bulk model thread is stuck on it, so later jobs queue up."""
    blocker = asyncio.create_task(submit_jobs(sched, [Job("blocker", 1)]))
    assert await asyncio.to_thread(recorder.holding.wait, WAIT_S)
    return blocker


async def queue_then_release(
    sched: TokenBudgetScheduler[Job, str], recorder: Recorder, requests: list[list[Job]]
) -> list[list[str]]:
    """Queue every request while the worker is held, then let the worker drain the queue."""
    blocker = await hold_worker(sched, recorder)
    tasks = [asyncio.create_task(submit_jobs(sched, jobs)) for jobs in requests]
    await asyncio.sleep(0.05)  # every submit has queued its items
    assert sched.queued_items == sum(len(r) for r in requests)
    recorder.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert await blocker == ["out:blocker"]
    return list(results)


async def test_batches_respect_token_budget_and_size() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=100, max_batch_size=4)
    await sched.start()
    try:
        costs = [3, 40, 17, 25, 50, 1, 9, 33, 12, 20, 48, 7, 30, 2, 26, 11, 44, 5, 19, 38]
        requests = [[Job(f"j{i}", c)] for i, c in enumerate(costs)]
        results = await queue_then_release(sched, recorder, requests)
    finally:
        await sched.stop()
    assert results == [[f"out:j{i}"] for i in range(len(costs))]
    batches = recorder.bulk_batches()[1:]  # after the blocker
    assert sorted(j.name for b in batches for j in b) == sorted(f"j{i}" for i in range(len(costs)))
    for batch in batches:
        assert len(batch) <= 4
        # The budget counts padding: n items * the longest item.
        assert len(batch) * max(j.tokens for j in batch) <= 100, batch
    assert max(len(b) for b in batches) > 1, "the scheduler never batched anything"


@pytest.mark.parametrize(("max_batch_size", "expected", "padded"), [
    (8, [["j0", "j2", "j4"], ["j1"], ["j3"]], [(10, 10), (9, 9), (7, 7)]),
    (2, [["j0", "j2"], ["j1"], ["j3", "j4"]], [(8, 8), (9, 9), (9, 9)]),  # the item limit binds too
])
async def test_packed_bulk_batches_fill_the_budget_first_fit_in_arrival_order(
    max_batch_size: int, expected: list[list[str]], padded: list[tuple[int, int]]
) -> None:
    """A packed lane counts the sum of tokens (no padding) and takes later, shorter items into the room an
    earlier long one left, up to ``max_batch_size`` items; the observer is told no padded tokens."""

    class PaddingObserver(NullObserver):
        def __init__(self) -> None:
            self.padded: list[tuple[int, int]] = []

        def observe_batch(self, lane: str, items: int, tokens: int, padded_tokens: int, seconds: float) -> None:
            if lane == "bulk":
                self.padded.append((tokens, padded_tokens))

    recorder = Recorder(hold_first=True)
    observer = PaddingObserver()
    sched: TokenBudgetScheduler[Job, str] = TokenBudgetScheduler(
        recorder, BatchLimits(max_batch_tokens=10, max_batch_size=max_batch_size, max_wait_ms=0), observer=observer
    )
    sched.enable_packing()
    await sched.start()
    try:
        costs = [5, 9, 3, 7, 2]
        results = await queue_then_release(sched, recorder, [[Job(f"j{i}", c)] for i, c in enumerate(costs)])
    finally:
        await sched.stop()
    assert results == [[f"out:j{i}"] for i in range(len(costs))]
    assert [[j.name for j in b] for b in recorder.bulk_batches()[1:]] == expected
    assert observer.padded[1:] == padded


async def test_oversized_single_item_still_runs_alone() -> None:
    recorder = Recorder()
    sched = make_scheduler(recorder, max_batch_tokens=10, max_batch_size=8)
    await sched.start()
    try:
        assert await submit_jobs(sched, [Job("big", 500), Job("small", 1)]) == ["out:big", "out:small"]
    finally:
        await sched.stop()
    assert [[j.name for j in b] for b in recorder.bulk_batches()] in (
        [["big"], ["small"]], [["small"], ["big"]],
    )


async def test_batches_group_nearest_lengths_oldest_first() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=10_000, max_batch_size=2)
    await sched.start()
    try:
        costs = [10, 100, 11, 101, 12, 102, 13, 103]
        await queue_then_release(sched, recorder, [[Job(f"c{c}", c)] for c in costs])
    finally:
        await sched.stop()
    batches = [sorted(j.tokens for j in b) for b in recorder.bulk_batches()[1:]]
    # FIFO batching would give [10, 100], [11, 101], ...; length sorting pairs near lengths, and the oldest
    # waiting item always anchors the next batch.
    assert batches == [[10, 11], [100, 101], [12, 13], [102, 103]]


async def test_oldest_item_is_never_starved_by_shorter_ones() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=100, max_batch_size=4)
    await sched.start()
    try:
        shorts_before = [[Job(f"s{i}", 1)] for i in range(8)]
        long_one = [[Job("long", 100)]]
        shorts_after = [[Job(f"t{i}", 1)] for i in range(8)]
        await queue_then_release(sched, recorder, shorts_before + long_one + shorts_after)
    finally:
        await sched.stop()
    names = [[j.name for j in b] for b in recorder.bulk_batches()[1:]]
    assert names[0] == ["s0", "s1", "s2", "s3"]
    assert names[1] == ["s4", "s5", "s6", "s7"]
    # The long item is now the oldest: it runs next (alone: 2 * 100 > budget) although 8 short items that
    # would pack better are waiting behind it.
    assert names[2] == ["long"]
    assert sorted(n for b in names[3:] for n in b) == sorted(f"t{i}" for i in range(8))


async def test_priority_lane_is_served_while_bulk_lane_is_busy() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=1000, max_batch_size=8)
    await sched.start()
    try:
        blocker = await hold_worker(sched, recorder)
        bulk = asyncio.create_task(submit_jobs(sched, [Job(f"doc{i}", 5) for i in range(4)]))
        # The bulk model thread is stuck; a priority request must still complete.
        answer = await asyncio.wait_for(sched.submit([Job("query", 3)], [3], priority=True), WAIT_S)
        assert answer == ["out:query"]
        assert not bulk.done()
        recorder.gate.set()
        assert await asyncio.wait_for(bulk, WAIT_S) == [f"out:doc{i}" for i in range(4)]
        await blocker
    finally:
        recorder.gate.set()
        await sched.stop()
    assert ("priority", [Job("query", 3)]) in recorder.batches


async def test_cancelled_requests_items_are_dropped_before_run_batch() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=1000, max_batch_size=8)
    await sched.start()
    try:
        blocker = await hold_worker(sched, recorder)
        gone = asyncio.create_task(submit_jobs(sched, [Job(f"gone{i}", 5) for i in range(3)]))
        kept = asyncio.create_task(submit_jobs(sched, [Job("kept", 5)]))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0)
        recorder.gate.set()
        assert await asyncio.wait_for(kept, WAIT_S) == ["out:kept"]
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        recorder.gate.set()
        await sched.stop()
    ran = [j.name for _, b in recorder.batches for j in b]
    assert not any(name.startswith("gone") for name in ran), ran
    assert sched.queued_items == 0


async def test_queue_full_refuses_whole_request_and_queues_nothing() -> None:
    recorder = Recorder(hold_first=True)
    sched = make_scheduler(recorder, max_batch_tokens=1000, max_batch_size=8, max_queue_items=4, retry_after_s=3)
    await sched.start()
    try:
        blocker = await hold_worker(sched, recorder)
        first = asyncio.create_task(submit_jobs(sched, [Job(f"a{i}", 5) for i in range(3)]))
        await asyncio.sleep(0.05)
        assert sched.queued_items == 3
        with pytest.raises(QueueFullError) as info:
            await submit_jobs(sched, [Job("b0", 5), Job("b1", 5)])
        assert info.value.status == 429
        assert int(info.value.headers["Retry-After"]) >= 3
        assert sched.queued_items == 3, "a refused request must leave nothing in the queue"
        # One more item still fits.
        second = asyncio.create_task(submit_jobs(sched, [Job("c0", 5)]))
        recorder.gate.set()
        assert await asyncio.wait_for(first, WAIT_S) == ["out:a0", "out:a1", "out:a2"]
        assert await asyncio.wait_for(second, WAIT_S) == ["out:c0"]
        await blocker
    finally:
        recorder.gate.set()
        await sched.stop()
    ran = [j.name for _, b in recorder.batches for j in b]
    assert "b0" not in ran
    assert "b1" not in ran


async def test_request_larger_than_the_whole_queue_is_413_not_429() -> None:
    recorder = Recorder()
    sched = make_scheduler(recorder, max_queue_items=4)
    await sched.start()
    try:
        with pytest.raises(RequestTooLargeError, match="at most 4"):
            await submit_jobs(sched, [Job(f"x{i}", 1) for i in range(5)])
        assert sched.queued_items == 0
        assert await submit_jobs(sched, [Job(f"y{i}", 1) for i in range(4)]) == [f"out:y{i}" for i in range(4)]
    finally:
        await sched.stop()


async def test_failing_batch_is_retried_in_halves_and_only_bad_item_fails() -> None:
    recorder = Recorder(hold_first=True, fail_on=frozenset({"bad"}))
    sched = make_scheduler(recorder, max_batch_tokens=1000, max_batch_size=8)
    await sched.start()
    try:
        blocker = await hold_worker(sched, recorder)
        names = ["g0", "g1", "g2", "bad", "g4", "g5", "g6", "g7"]
        tasks = [asyncio.create_task(submit_jobs(sched, [Job(n, 5)])) for n in names]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        await blocker
    finally:
        recorder.gate.set()
        await sched.stop()
    for name, outcome in zip(names, outcomes, strict=True):
        if name == "bad":
            assert isinstance(outcome, BatchFailedError)
            assert "simulated" not in outcome.message  # internals stay in the log
        else:
            assert outcome == [f"out:{name}"]
    batches = recorder.bulk_batches()[1:]
    assert len(batches[0]) == 8  # all eight were batched together first
    # The failing batch is split in halves until the bad item runs alone: 8 -> 4 -> 2 -> 1.
    assert [len(b) for b in batches if any(j.name == "bad" for j in b)] == [8, 4, 2, 1]
    assert len(batches) == 7  # 8, [4: 2 ok, 2: 1 ok, 1 bad], 4 ok


async def test_request_with_one_bad_item_fails_whole_request_others_succeed() -> None:
    recorder = Recorder(hold_first=True, fail_on=frozenset({"bad"}))
    sched = make_scheduler(recorder, max_batch_tokens=1000, max_batch_size=8)
    await sched.start()
    try:
        blocker = await hold_worker(sched, recorder)
        mixed = asyncio.create_task(submit_jobs(sched, [Job("m0", 5), Job("bad", 5), Job("m2", 5)]))
        clean = asyncio.create_task(submit_jobs(sched, [Job("c0", 5), Job("c1", 5)]))
        await asyncio.sleep(0.05)
        recorder.gate.set()
        with pytest.raises(BatchFailedError):
            await asyncio.wait_for(mixed, WAIT_S)
        assert await asyncio.wait_for(clean, WAIT_S) == ["out:c0", "out:c1"]
        await blocker
    finally:
        recorder.gate.set()
        await sched.stop()


async def test_results_come_back_in_input_order_across_batches() -> None:
    recorder = Recorder()
    sched = make_scheduler(recorder, max_batch_tokens=64, max_batch_size=3)
    await sched.start()
    try:
        jobs = [Job(f"x{i}", (i * 37) % 30 + 1) for i in range(40)]
        assert await submit_jobs(sched, jobs) == [f"out:x{i}" for i in range(40)]
    finally:
        await sched.stop()
    assert len(recorder.batches) > 1


async def test_submit_requires_running_scheduler_and_matching_costs() -> None:
    sched = make_scheduler(Recorder())
    with pytest.raises(Exception, match="not running"):
        await submit_jobs(sched, [Job("a", 1)])
    await sched.start()
    try:
        with pytest.raises(ValueError, match="differ in length"):
            await sched.submit([Job("a", 1)], [1, 2])
        assert await sched.submit([], []) == []
    finally:
        await sched.stop()


def _times_ten(payloads: list[int], lane: str) -> list[int]:
    return [p * 10 for p in payloads]


async def _pipelined_six(launch: Any, run_batch: Any = _times_ten) -> list[int]:
    """Items 1..6 through a pipelined bulk lane in batches of two; the results (10..60 when all goes well)."""
    scheduler: TokenBudgetScheduler[int, int] = TokenBudgetScheduler(
        run_batch, BatchLimits(max_batch_tokens=4, max_batch_size=2, max_wait_ms=0)
    )
    scheduler.enable_pipelining(launch)
    await scheduler.start()
    try:
        return await asyncio.wait_for(scheduler.submit([1, 2, 3, 4, 5, 6], [1] * 6, priority=False), WAIT_S)
    finally:
        await scheduler.stop()


async def test_pipelined_bulk_lane_launches_next_batch_before_collecting_and_keeps_results() -> None:
    """With pipelining the bulk worker hands batch k+1 to the model thread before it collects batch k.

    Collecting batch 1 waits (bounded) for launch 2 to start: a worker that collected before launching the
    next batch would time out here. Waiting, not comparing event order, keeps the test free of thread
    scheduling luck (on a loaded 2-core machine the collector may run before the model thread wakes up).
    """
    events: list[str] = []
    second_launch_started = threading.Event()

    def launch(payloads: list[int], lane: str):  # type: ignore[no-untyped-def]
        events.append(f"launch{payloads}")
        if payloads[0] == 3:
            second_launch_started.set()

        def collect() -> list[int]:
            if payloads[0] == 1:
                assert second_launch_started.wait(WAIT_S), "batch 2 was not launched before batch 1 was collected"
            events.append(f"collect{payloads}")
            return [p * 10 for p in payloads]

        return collect

    assert await _pipelined_six(launch) == [10, 20, 30, 40, 50, 60]
    launches = [e for e in events if e.startswith("launch")]
    collects = [e for e in events if e.startswith("collect")]
    assert launches == ["launch[1, 2]", "launch[3, 4]", "launch[5, 6]"]
    assert collects == ["collect[1, 2]", "collect[3, 4]", "collect[5, 6]"]
    assert events.index("launch[3, 4]") < events.index("collect[1, 2]")


async def test_pipelined_model_thread_goes_from_launch_to_launch_while_results_are_collected_elsewhere() -> None:
    """Batch 1's results are only ready once batch 3 is being launched (a device still busy): the worker must
    have queued launches 2 and 3 in the model thread and collect batch 1 in another thread (a worker that
    collected in the model thread, or picked batch 3 only after delivering batch 1, would never finish)."""
    third_launch_started = threading.Event()
    launch_threads: set[int] = set()
    collect_threads: set[int] = set()

    def launch(payloads: list[int], lane: str):  # type: ignore[no-untyped-def]
        launch_threads.add(threading.get_ident())
        if payloads[0] == 5:
            third_launch_started.set()

        def collect() -> list[int]:
            collect_threads.add(threading.get_ident())
            if payloads[0] == 1:
                assert third_launch_started.wait(WAIT_S), "batch 3 was not launched while batch 1 was in flight"
            return [p * 10 for p in payloads]

        return collect

    assert await _pipelined_six(launch) == [10, 20, 30, 40, 50, 60]
    assert len(launch_threads) == 1
    assert len(collect_threads) == 1
    assert launch_threads.isdisjoint(collect_threads)


@pytest.mark.parametrize("stage", ["launch", "collect"])
async def test_a_pipelined_batch_that_fails_is_run_again_synchronously(stage: str) -> None:
    """A failed launch or collect is retried through ``run_batch``: every item is still answered."""
    ran: list[list[int]] = []

    def run_batch(payloads: list[int], lane: str) -> list[int]:
        ran.append(list(payloads))
        return [p * 10 for p in payloads]

    def launch(payloads: list[int], lane: str):  # type: ignore[no-untyped-def]
        if stage == "launch" and 3 in payloads:
            raise RuntimeError("launch failed")

        def collect() -> list[int]:
            if stage == "collect" and 3 in payloads:
                raise RuntimeError("device failed")
            return [p * 10 for p in payloads]

        return collect

    assert await _pipelined_six(launch, run_batch) == [10, 20, 30, 40, 50, 60]
    assert ran == [[3, 4]]


async def test_priority_lane_is_never_pipelined() -> None:
    from servers.scheduler import BatchLimits, TokenBudgetScheduler

    launched: list[list[int]] = []

    def run_batch(payloads: list[int], lane: str) -> list[int]:
        return [p + 1 for p in payloads]

    def launch(payloads: list[int], lane: str):  # type: ignore[no-untyped-def]
        launched.append(payloads)
        return lambda: [p + 1 for p in payloads]

    scheduler: TokenBudgetScheduler[int, int] = TokenBudgetScheduler(
        run_batch, BatchLimits(max_batch_tokens=8, max_batch_size=4, max_wait_ms=0)
    )
    scheduler.enable_pipelining(launch)
    await scheduler.start()
    try:
        assert await scheduler.submit([1], [1], priority=True) == [2]
    finally:
        await scheduler.stop()
    assert launched == []


async def test_stopping_while_a_pipelined_batch_is_collected_answers_its_request() -> None:
    """The batch whose results are being waited for when the server stops gets the shutdown error too."""
    collecting = threading.Event()
    release = threading.Event()

    def launch(payloads: list[int], lane: str):  # type: ignore[no-untyped-def]
        def collect() -> list[int]:
            collecting.set()
            release.wait(WAIT_S)
            return [p * 10 for p in payloads]

        return collect

    scheduler: TokenBudgetScheduler[int, int] = TokenBudgetScheduler(
        _times_ten, BatchLimits(max_batch_tokens=4, max_batch_size=2, max_wait_ms=0)
    )
    scheduler.enable_pipelining(launch)
    await scheduler.start()
    request = asyncio.create_task(scheduler.submit([1, 2], [1, 1], priority=False))
    assert await asyncio.to_thread(collecting.wait, WAIT_S)
    # The collector may only finish once stop() has cancelled the worker (else the batch would simply be
    # delivered). A done callback registered now runs before stop() resumes from awaiting the worker (callbacks
    # run in registration order), so the collector is released before stop() joins its thread.
    scheduler._lanes["bulk"].tasks[0].add_done_callback(lambda _: release.set())
    await scheduler.stop()
    with pytest.raises(ServingError, match="shutting down"):
        await asyncio.wait_for(request, WAIT_S)
