"""Multimodal embedding recipes: resolved from ``config.json``'s model type, templates as the models' code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servers.recipes.multimodal import (
    GME_QWEN2_VL,
    QWEN3_VL_EMBEDDING,
    QWEN_VL_FETCH_IMAGE,
    resolve_multimodal_recipe,
)


def _model(tmp_path: Path, model_type: str) -> Path:
    target = tmp_path / "any-name-at-all"
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps({"model_type": model_type}))
    return target


def test_recipe_comes_from_the_model_type_not_the_name(tmp_path: Path) -> None:
    assert resolve_multimodal_recipe(_model(tmp_path, "qwen3_vl")) is QWEN3_VL_EMBEDDING
    with pytest.raises(ValueError, match="known: qwen2_vl, qwen3_vl"):
        resolve_multimodal_recipe(_model(tmp_path / "x", "llava"))


def test_qwen3_vl_template_ends_with_the_generation_prompt() -> None:
    r = QWEN3_VL_EMBEDDING
    assert r.model_class == "Qwen3VLModel"
    assert r.prefix("document", None) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
    )
    assert r.prefix("query", None) == (
        "<|im_start|>system\nRetrieve images or text relevant to the user's query.<|im_end|>\n<|im_start|>user\n"
    )
    assert r.suffix() == "<|im_end|>\n<|im_start|>assistant\n"
    assert (r.min_pixels, r.max_pixels) == (4 * 32 * 32, 1800 * 32 * 32)


def test_gme_template_keeps_its_endoftext_and_pixel_range() -> None:
    r = GME_QWEN2_VL
    assert r.model_class == "Qwen2VLModel"
    assert r.suffix() == "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    assert r.prefix("document", "ignored for documents").startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert (r.min_pixels, r.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)


@pytest.mark.parametrize(
    ("instruction", "gme", "qwen3_vl"),
    [
        # gme_inference.py uses instructions verbatim; Qwen3-VL's code appends a full stop unless the last
        # character is in a Unicode punctuation category.
        ("Find a diagram", "Find a diagram", "Find a diagram."),
        ("Find a diagram?", "Find a diagram?", "Find a diagram?"),
        ("找一张图。", "找一张图。", "找一张图。"),
        (" Find a diagram ", " Find a diagram ", "Find a diagram."),
        ("   ", "You are a helpful assistant.", "Represent the user's input."),
    ],
)
def test_query_instruction_punctuation_follows_each_models_code(instruction: str, gme: str, qwen3_vl: str) -> None:
    assert GME_QWEN2_VL.system_prompt("query", instruction) == gme
    assert QWEN3_VL_EMBEDDING.system_prompt("query", instruction) == qwen3_vl


def test_positions_and_pre_resize_follow_each_models_code() -> None:
    assert GME_QWEN2_VL.positions == "sequential"
    assert GME_QWEN2_VL.pre_resize == QWEN_VL_FETCH_IMAGE
    assert QWEN3_VL_EMBEDDING.positions == "mrope"
    assert QWEN3_VL_EMBEDDING.pre_resize is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((333, 250), (336, 252)),  # sides rounded to the nearest multiple of 28
        ((28, 28), (56, 56)),  # under 4 x 28² pixels: scaled up, sides rounded up
        ((10, 10), (56, 56)),
        ((1000, 90), (1008, 84)),
        ((4000, 4000), (3584, 3584)),  # over 16384 x 28²: scaled down, sides rounded down
        ((6000, 20), (5600, 28)),  # long/short side ratio capped at 200
    ],
)
def test_fetch_image_pre_resize_matches_qwen_vl_utils_rule(size: tuple[int, int], expected: tuple[int, int]) -> None:
    w, h = QWEN_VL_FETCH_IMAGE.target_size(*size)
    assert (w, h) == expected
    assert w % 28 == 0
    assert h % 28 == 0
