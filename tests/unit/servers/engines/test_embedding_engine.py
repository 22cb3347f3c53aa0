"""The embedding engine in-process: preparation lanes and both last-token padding modes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from servers.engines.embedding import EmbeddingEngine
from servers.settings import ServerSettings

TEXTS = ["short", "a somewhat longer text about vectors and batches", "x " * 40, "Which planet is red?"]


def _engine(model: Path, **overrides: object) -> EmbeddingEngine:
    return EmbeddingEngine.from_settings(ServerSettings(model=str(model), device="cpu", **overrides))  # type: ignore[arg-type]


async def test_small_requests_are_prepared_on_the_priority_thread(tiny_qwen3_embedding: Path) -> None:
    engine = _engine(tiny_qwen3_embedding, priority_max_items=2, warmup=False)

    def thread_name(items: list[str]) -> str:
        return threading.current_thread().name

    async with engine:
        small = await engine._off_loop(thread_name, ["one query"])
        bulk = await engine._off_loop(thread_name, ["a", "b", "c"])
    assert small.startswith("tokenize-priority_")
    assert bulk.startswith("tokenize_")


async def test_left_and_right_padding_give_the_same_vectors(tiny_qwen3_embedding: Path) -> None:
    """Right padding without a mask (default) and the card's left padding + mask agree for mixed lengths."""
    right = _engine(tiny_qwen3_embedding, last_token_padding="right")
    left = _engine(tiny_qwen3_embedding, last_token_padding="left")
    assert right.backend.padding == "right"  # type: ignore[attr-defined]
    assert left.backend.padding == "left"  # type: ignore[attr-defined]
    async with right:
        r = (await right.embed(TEXTS)).vectors
    async with left:
        lv = (await left.embed(TEXTS)).vectors
    np.testing.assert_allclose(r, lv, atol=1e-5)


async def test_stopping_the_engine_stops_the_background_acceleration(tiny_qwen3_embedding: Path) -> None:
    engine = _engine(tiny_qwen3_embedding, warmup=False)
    async with engine:
        decoder = engine.backend.decoder
        assert decoder is not None
        assert not decoder._stopping.is_set()
    assert decoder._stopping.is_set()  # a capture or compile still running ends at its next step


async def test_the_pipelined_bulk_lane_gives_the_vectors_of_the_plain_one(tiny_qwen3_embedding: Path) -> None:
    """The CUDA bulk path (launch queued ahead in the model thread, results collected in another) through the
    real backend, forced on here: many small batches of concurrent requests, every vector in its place."""
    import asyncio

    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(48)]
    requests = [texts[i : i + 6] for i in range(0, len(texts), 6)]

    async def run(pipelined: bool) -> np.ndarray:
        engine = _engine(tiny_qwen3_embedding, max_batch_tokens=128, max_length=128, max_batch_size=4,
                         priority_max_items=0, warmup=False)
        engine._pipelines = lambda: pipelined  # type: ignore[method-assign]
        async with engine:
            assert (engine.scheduler._launch_batch is not None) is pipelined
            results = await asyncio.gather(*(engine.embed(r) for r in requests))
        return np.concatenate([r.vectors for r in results])

    np.testing.assert_allclose(await run(True), await run(False), atol=1e-6)


async def test_bulk_packing_gives_the_vectors_of_padded_batches(tiny_qwen3_embedding: Path) -> None:
    """``--bulk-packing on``: the scheduler packs bulk batches by their tokens and the backend runs them
    padding-free; every vector matches the padded engine's (fp32, CPU reference attention)."""
    import asyncio

    texts = [f"{TEXTS[i % len(TEXTS)]} {'word ' * (i % 9)}{i}" for i in range(40)]
    requests = [texts[i : i + 8] for i in range(0, len(texts), 8)]

    async def run(packing: str) -> np.ndarray:
        engine = _engine(tiny_qwen3_embedding, bulk_packing=packing, priority_max_items=0, max_batch_tokens=256,
                         max_length=256, warmup=False)
        assert engine.backend.packs_bulk is (packing == "on")
        async with engine:
            assert engine.scheduler._packed_bulk is (packing == "on")
            assert engine.acceleration_facts()["acceleration"]["bulk_packing"] == packing
            results = await asyncio.gather(*(engine.embed(r) for r in requests))
        return np.concatenate([r.vectors for r in results])

    np.testing.assert_allclose(await run("on"), await run("off"), atol=1e-5)
