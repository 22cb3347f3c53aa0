"""Multimodal engine lanes: text queries and single-image queries are interactive, multi-image requests bulk."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from servers.engines.multimodal import MultiModalEmbeddingEngine, MultiModalInput
from servers.settings import ServerSettings


@pytest.fixture(scope="module")
def engine_model(tiny_gme: Path) -> Path:
    return tiny_gme


async def test_multi_image_requests_never_take_the_priority_thread_or_lane(engine_model: Path) -> None:
    settings = ServerSettings(model=str(engine_model), kind="mm-embed", device="cpu", warmup=False,
                              min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    engine = MultiModalEmbeddingEngine.from_settings(settings)
    seen: list[tuple[str, bool]] = []
    prepare = engine.backend.prepare

    def spy_prepare(*args: Any, **kwargs: Any) -> Any:
        seen.append(("thread", threading.current_thread().name.startswith("tokenize-priority_")))
        return prepare(*args, **kwargs)

    engine.backend.prepare = spy_prepare  # type: ignore[method-assign]
    image = Image.new("RGB", (56, 56), "red")
    async with engine:
        submit = engine.scheduler.submit

        async def spy_submit(payloads: Any, costs: Any, priority: bool = False) -> Any:
            seen.append(("lane", priority))
            return await submit(payloads, costs, priority=priority)

        engine.scheduler.submit = spy_submit  # type: ignore[method-assign]
        cases = {
            "text query": [MultiModalInput(text="a red square")],
            "image query": [MultiModalInput(text="like this", image=image)],
            # Two small images fit the priority token bound, but a request with several images is ingestion.
            "two images": [MultiModalInput(image=image), MultiModalInput(image=image)],
        }
        observed = {}
        for name, items in cases.items():
            seen.clear()
            await engine.embed_inputs(items)
            threads = {v for k, v in seen if k == "thread"}
            lanes = [v for k, v in seen if k == "lane"]
            observed[name] = (threads, lanes)
    assert observed["text query"] == ({True}, [True])
    assert observed["image query"] == ({True}, [True])
    assert observed["two images"] == ({False}, [False])


def test_long_text_is_cut_at_its_end_keeping_template_and_image(engine_model: Path) -> None:
    from transformers import AutoTokenizer

    from servers.errors import RequestTooLargeError

    settings = ServerSettings(model=str(engine_model), kind="mm-embed", device="cpu", warmup=False, max_length=64,
                              min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    backend = MultiModalEmbeddingEngine.from_settings(settings).backend
    tok = AutoTokenizer.from_pretrained(str(engine_model))
    recipe = backend.recipe
    text = " ".join(f"word{i}" for i in range(80))
    text_ids = tok(text, add_special_tokens=False)["input_ids"]
    image = Image.new("RGB", (56, 56), "red")
    for with_image in (False, True):
        p = backend.prepare(text, image if with_image else None, "document", None)
        head = tok(recipe.prefix("document", None) + ("<|vision_start|><|image_pad|><|vision_end|>" if with_image
                                                       else ""), add_special_tokens=False)["input_ids"]
        if with_image:
            at = head.index(backend.image_token_id)
            head = [*head[:at], *[backend.image_token_id] * p.ids.count(backend.image_token_id), *head[at + 1:]]
        tail = tok(recipe.suffix(), add_special_tokens=False)["input_ids"]
        keep = 64 - len(head) - len(tail)
        assert p.ids == (*head, *text_ids[:keep], *tail)
        assert p.truncated
        assert p.original_length == len(head) + len(text_ids) + len(tail)
    with pytest.raises(RequestTooLargeError, match="truncate=true"):
        backend.prepare(text, None, "document", None, truncate=False)
    short = backend.prepare("a short text", None, "document", None, truncate=False)
    assert not short.truncated
