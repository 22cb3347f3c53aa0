"""Overload: a tiny queue answers 429 + Retry-After; the clients retry and lose or mix up nothing."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests

from rag_plugins import EmbeddingClient, LocalEmbedding
from tests.support.embed_http import assert_healthy, embed, max_abs_diff
from tests.support.serve import rag_serve

TOL = 1e-5
QUEUE_ITEMS = 8


@pytest.fixture(scope="module")
def small_queue_server(tiny_qwen3_embedding: Path) -> Iterator[str]:
    with rag_serve(
        "embed", tiny_qwen3_embedding,
        "--max-queue-items", str(QUEUE_ITEMS), "--max-batch-size", "2", "--max-wait-ms", "0",
        "--priority-max-items", "0",  # every request uses the one bulk lane
    ) as base:
        yield base


def metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def rejected_total(base: str) -> float:
    return metric(base, "rag_rejected_requests_total")


def distinct_texts(n: int) -> list[str]:
    return [f"item {i}: " + " ".join(f"w{(i * 7 + k) % 97}" for k in range(5 + i % 40)) for i in range(n)]


async def test_flood_gets_429_with_retry_after(small_queue_server: str) -> None:
    text = "a fairly long input that takes the model a moment " * 20
    body = {"texts": [f"{i} {text}" for i in range(6)]}  # 6 items: a second such request cannot fit

    async def one(session: aiohttp.ClientSession) -> tuple[int, str | None, dict[str, object]]:
        async with session.post(f"{small_queue_server}/embed", json=body) as resp:
            return resp.status, resp.headers.get("Retry-After"), await resp.json()

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(one(session) for _ in range(40)))
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0, "the flood never filled the queue"
    assert statuses.count(200) > 0
    for status, retry_after, payload in answers:
        if status == 429:
            assert retry_after is not None
            assert int(retry_after) >= 1
            assert payload["error"]["type"] == "overloaded_error"  # type: ignore[index]
            assert "queue is full" in payload["error"]["message"]  # type: ignore[index]
        else:
            assert len(payload["embeddings"]) == 6  # type: ignore[arg-type]
    assert rejected_total(small_queue_server) >= statuses.count(429)
    assert_healthy(small_queue_server)


async def test_embedding_client_retries_until_every_input_is_embedded_once(small_queue_server: str) -> None:
    texts = distinct_texts(300)
    client = EmbeddingClient(base_url=small_queue_server, batch_size=3)  # default retry policy
    rejected_before = rejected_total(small_queue_server)
    # 60 concurrent calls of 5 texts (each split into requests of 3 + 2), all at once.
    calls = [texts[i : i + 5] for i in range(0, len(texts), 5)]
    results = await asyncio.gather(*(client.aembed(chunk) for chunk in calls))
    await client.http.aclose()
    got = np.concatenate(results)
    assert got.shape == (300, 64)
    assert rejected_total(small_queue_server) > rejected_before, "no request was refused: nothing was retried"
    # Every vector is the one of its own text computed alone: none lost, duplicated or out of order.
    alone = np.concatenate([embed(small_queue_server, [t]) for t in texts])
    assert max_abs_diff(got, alone) <= TOL
    assert len({row.tobytes() for row in got.astype(np.float32)}) == 300


async def test_local_embedding_retries_under_load(small_queue_server: str) -> None:
    texts = distinct_texts(80)
    model = LocalEmbedding(base_url=small_queue_server, embed_batch_size=4)  # default retry policy
    rejected_before = rejected_total(small_queue_server)
    singles = asyncio.gather(*(model.aget_text_embedding(t) for t in texts[:40]))
    batches = asyncio.gather(*(model.aget_text_embedding_batch(texts[i : i + 8]) for i in range(40, 80, 8)))
    got_singles, got_batches = await asyncio.gather(singles, batches)
    await model.client.http.aclose()
    got = np.asarray(list(got_singles) + [v for batch in got_batches for v in batch])
    assert rejected_total(small_queue_server) > rejected_before
    alone = np.concatenate([embed(small_queue_server, [t]) for t in texts])
    assert max_abs_diff(got, alone) <= TOL


def test_request_larger_than_the_queue_is_413_not_429(small_queue_server: str) -> None:
    texts = [f"t{i}" for i in range(QUEUE_ITEMS + 1)]
    resp = requests.post(f"{small_queue_server}/embed", json={"texts": texts}, timeout=30)
    assert resp.status_code == 413, resp.text
    assert "--max-queue-items" in resp.json()["error"]["message"]
    assert embed(small_queue_server, texts[:QUEUE_ITEMS]).shape == (QUEUE_ITEMS, 64)


@pytest.fixture(scope="module")
def one_by_one_server(tiny_qwen3_embedding: Path) -> Iterator[str]:
    with rag_serve("embed", tiny_qwen3_embedding, "--max-batch-size", "1", "--max-wait-ms", "0") as base:
        yield base


def test_client_disconnect_drops_its_queued_items(one_by_one_server: str) -> None:
    texts = [f"{i} " + "lorem ipsum dolor sit amet " * 300 for i in range(100)]
    body = json.dumps({"texts": texts}).encode()
    ran_before = metric(one_by_one_server, 'rag_batch_size_items_count{lane="bulk"}')
    port = int(one_by_one_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while metric(one_by_one_server, 'rag_batch_size_items_count{lane="bulk"}') == ran_before:
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.02)
        # The request's items are queued and the first ran: now the caller goes away.
    # The server notices within its disconnect poll and drops the rest; every item ends run or dropped. Poll
    # rather than sleep: a loaded runner can take longer than any fixed pause. Had dropping broken, all 100
    # items would run and ``dropped`` stay 0.
    deadline = time.monotonic() + 60
    while True:
        dropped = metric(one_by_one_server, 'rag_dropped_items_total{lane="bulk"}')
        ran = metric(one_by_one_server, 'rag_batch_size_items_count{lane="bulk"}') - ran_before
        if ran + dropped >= len(texts):
            break
        assert time.monotonic() < deadline, f"items unaccounted for: ran {ran}, dropped {dropped}"
        time.sleep(0.05)
    assert dropped > 0, "no queued item was dropped after the client left"
    assert ran + dropped == len(texts)
    assert_healthy(one_by_one_server)
