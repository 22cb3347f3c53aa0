"""``/metrics`` splits each request's stages by the lane it took, so a query's time under bulk load can be
read apart from the bulk requests' (the benchmark's loaded-query stage table reads these series)."""

from __future__ import annotations

import time

import requests

from bench.embed_throughput import scrape_stages
from tests.e2e.conftest import QWEN_MAX_CLIENT_BATCH

TIMEOUT_S = 60


def _stage_counts(base: str) -> dict[tuple[str, str], float]:
    """``{(stage, lane): observations}`` through the benchmark's own /metrics reader (checked here too)."""
    prefix = "rag_stage_duration_seconds_count["
    counts: dict[tuple[str, str], float] = {}
    for key, n in scrape_stages(base).items():
        if key.startswith(prefix):
            stage, _, lane = key[len(prefix):-1].partition("/")
            counts[(stage, lane)] = n
    return counts


def _request_counts(base: str) -> dict[str, float]:
    """``{lane: /embed requests}`` of the request histogram (route and lane labels)."""
    prefix = "rag_request_duration_seconds_count[/embed/"
    return {key[len(prefix):-1]: n for key, n in scrape_stages(base).items() if key.startswith(prefix)}


def test_stage_latencies_are_labelled_with_the_lane(qwen_server: str) -> None:
    requests_before = _request_counts(qwen_server)
    before = _stage_counts(qwen_server)
    one = requests.post(f"{qwen_server}/embed", json={"texts": ["a single query"], "input_type": "query"},
                        timeout=TIMEOUT_S)
    assert one.status_code == 200, one.text
    after_query = _stage_counts(qwen_server)
    many = requests.post(f"{qwen_server}/embed", json={"texts": [f"document {i}" for i in range(20)]},
                         timeout=TIMEOUT_S)
    assert many.status_code == 200, many.text
    after_bulk = _stage_counts(qwen_server)

    def grew(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float], key: tuple[str, str]) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    # One small request: tokenized on the priority thread and run in the priority lane, nothing on bulk.
    assert grew(before, after_query, ("tokenize", "priority")) == 1
    assert grew(before, after_query, ("queue_and_forward", "priority")) == 1
    assert grew(before, after_query, ("queue_and_forward", "bulk")) == 0
    # Twenty texts (over --priority-max-items 8): the bulk lane.
    assert grew(after_query, after_bulk, ("tokenize", "bulk")) == 1
    assert grew(after_query, after_bulk, ("queue_and_forward", "bulk")) == 1
    assert grew(after_query, after_bulk, ("queue_and_forward", "priority")) == 0
    # The whole request's latency carries the lane too: one query, one bulk request.
    requests_after = _request_counts(qwen_server)
    assert requests_after.get("priority", 0) - requests_before.get("priority", 0) == 1
    assert requests_after.get("bulk", 0) - requests_before.get("bulk", 0) == 1


def test_the_start_up_heap_is_frozen_and_gc_pauses_are_measured(qwen_server: str) -> None:
    """A real server freezes its start-up heap before it reports healthy (servers/heap.py), says so in
    /info, and times every garbage collection into /metrics."""
    info = requests.get(f"{qwen_server}/info", timeout=TIMEOUT_S).json()
    assert info["gc_freeze"] is True
    assert info["gc_freezes"][0]["reason"] == "engine ready"
    # torch + transformers + the model: hundreds of thousands of objects the collector no longer walks (a
    # frozen object freed by its reference count leaves the count, so it drifts down as the server runs).
    assert info["gc_freezes"][0]["objects"] > 100_000
    assert info["gc_frozen_objects"] > 100_000, info["gc_frozen_objects"]
    # No acceleration on the CPU, so no second freeze.
    assert [f["reason"] for f in info["gc_freezes"]] == ["engine ready"]
    young = "rag_gc_pause_seconds_count[0]"
    before = scrape_stages(qwen_server).get(young, 0)
    # A young collection runs once ~700 more container objects are alive than were freed, so how many
    # requests that takes depends on what a request leaves allocated (a leaner tokenizer call needed more
    # than 20). Send requests until one runs; with the GC callbacks broken none is ever counted.
    texts = [f"text {i} " * 8 for i in range(QWEN_MAX_CLIENT_BATCH)]  # the most a request may hold here
    deadline = time.monotonic() + 60
    sent = 0
    while scrape_stages(qwen_server).get(young, 0) <= before:
        assert time.monotonic() < deadline, f"no young collection timed into /metrics after {sent} requests"
        assert requests.post(f"{qwen_server}/embed", json={"texts": texts},
                             timeout=TIMEOUT_S).status_code == 200
        sent += 1
    print(f"a young collection was timed after {sent} requests")
