"""Lychee-Rerank-MM: a real ``rag-serve rerank`` on a tiny random-weight Qwen2.5-VL yes/no reranker.

The reference is Lychee-Rerank-MM's published usage code written out plainly, one pair at a time: the chat
messages (system = the judge prompt; user content parts ``<Instruct>: {instruction}``, ``<Query>:``, the
query's image and text, ``\\n<Document>:``, the document's image and text) rendered as the Qwen2.5-VL chat
template renders them (parts concatenated, an image part becomes
``<|vision_start|><|image_pad|>*n<|vision_end|>``, generation prompt added); every image through
qwen-vl-utils' ``fetch_image`` (sides rounded to multiples of 28 within 4..16384 x 28²) and then the image
processor with ``min_pixels = 4*28*28``, ``max_pixels = 1280*28*28``; the full model's forward (its own
M-RoPE positions); ``P(yes) = softmax([logit_no, logit_yes])[1]`` at the last position.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from testkit.random_models import save_lychee_rerank_mm
from tests.e2e.mm_fixtures import png_bytes
from tests.support.serve import rag_serve

JUDGE = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
         'Note that the answer can only be "yes" or "no".')
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
SIZES = [(60, 40), (333, 250), (97, 33)]
#: A user's own template (Qwen3-Reranker's spacing and empty think block).
CUSTOM_TEMPLATE = {
    "prefix": f"<|im_start|>system\n{JUDGE}<|im_end|>\n<|im_start|>user\n",
    "middle": "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}",
    "suffix": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
}

Side = tuple[str | None, bytes | None]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fetch_image(data: bytes) -> Image.Image:
    """qwen-vl-utils' fetch_image with its default bounds (factor 28, 4..16384 x 28² pixels)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    factor, min_pixels, max_pixels = 28, 4 * 28 * 28, 16384 * 28 * 28
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return image.resize((w_bar, h_bar))


class LycheeReference:
    """Lychee-Rerank-MM's usage code, plainly."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(
            str(model_dir), min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28
        )
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.yes = self.tokenizer.get_vocab()["yes"]
        self.no = self.tokenizer.get_vocab()["no"]

    def _image_part(self, data: bytes, pixels: list[Any], grids: list[Any]) -> str:
        out = self.processor(images=[fetch_image(data)], return_tensors="pt")
        pixels.append(out["pixel_values"])
        grids.append(out["image_grid_thw"])
        n = int(out["image_grid_thw"][0].prod()) // 4  # 2x2 merge: one token per 4 patches
        return "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"

    def _content(self, side: Side, pixels: list[Any], grids: list[Any]) -> str:
        text, image = side
        return (self._image_part(image, pixels, grids) if image is not None else "") + (text or "")

    def score(self, query: Side, doc: Side, instruction: str = DEFAULT_TASK,
              template: dict[str, str] | None = None) -> float:
        torch = self.torch
        pixels: list[Any] = []
        grids: list[Any] = []
        q = self._content(query, pixels, grids)
        d = self._content(doc, pixels, grids)
        if template is None:
            user = "<Instruct>: " + instruction + "<Query>:" + q + "\n<Document>:" + d
            text = f"<|im_start|>system\n{JUDGE}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        else:
            text = template["prefix"] + template["middle"].format(instruction=instruction, query=q, doc=d) + template["suffix"]
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs = {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                mm_token_type_ids=(ids == 151655).int(), **kwargs).logits[0, -1]
        probs = torch.softmax(torch.stack([logits[self.no], logits[self.yes]]).double(), dim=0)
        return float(probs[1])


@pytest.fixture(scope="module")
def tiny_lychee(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    return save_lychee_rerank_mm(tmp_path_factory.mktemp("tiny-lychee"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="module")
def lychee_server(tiny_lychee: Path) -> Iterator[str]:
    with rag_serve("rerank", tiny_lychee, "--max-batch-tokens", "4096") as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_lychee: Path) -> LycheeReference:
    return LycheeReference(tiny_lychee)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png_bytes(size, seed=60 + i) for i, size in enumerate(SIZES)]


def rerank(base: str, body: dict[str, Any]) -> list[float]:
    r = requests.post(base + "/rerank", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return [float(s) for s in r.json()["scores"]]


def test_all_modality_pairs_match_published_code(lychee_server: str, reference: LycheeReference,
                                                 images: list[bytes]) -> None:
    # text -> text and text -> image (one request, so these are batched together)
    query = "a noisy picture of a red square"
    docs: list[Any] = ["a red square", {"image": b64(images[0])}, {"text": "a caption", "image": b64(images[1])}]
    expected = [reference.score((query, None), ("a red square", None)),
                reference.score((query, None), (None, images[0])),
                reference.score((query, None), ("a caption", images[1]))]
    assert rerank(lychee_server, {"query": query, "docs": docs}) == pytest.approx(expected, abs=1e-5)
    # image -> text
    texts = ["two cats asleep on a sofa", "a bar chart"]
    expected = [reference.score((None, images[2]), (t, None)) for t in texts]
    assert rerank(lychee_server, {"query": {"image": b64(images[2])}, "docs": texts}) == pytest.approx(expected, abs=1e-5)
    # image + text -> image + text, custom instruction
    task = "Find the figure that matches"
    body = {"query": {"text": "find the figure", "image": b64(images[0])},
            "docs": [{"text": "chart of sales", "image": b64(images[1])}, {"text": "tall", "image": b64(images[2])}],
            "instruction": task}
    expected = [reference.score(("find the figure", images[0]), ("chart of sales", images[1]), task),
                reference.score(("find the figure", images[0]), ("tall", images[2]), task)]
    scores = rerank(lychee_server, body)
    assert scores == pytest.approx(expected, abs=1e-5)
    # alone equals batched
    alone = rerank(lychee_server, {"query": body["query"], "docs": body["docs"][1:], "instruction": task})
    assert alone[0] == pytest.approx(scores[1], abs=1e-5)


def test_info_names_the_recipe(lychee_server: str) -> None:
    info = requests.get(lychee_server + "/info", timeout=10).json()
    assert info["recipe"].startswith("qwen2_5_vl yes/no (lychee-rerank-mm template")
    assert info["max_length"] == 3200
    assert (info["min_pixels"], info["max_pixels"]) == (4 * 28 * 28, 1280 * 28 * 28)
    assert info["default_instruction"] == DEFAULT_TASK


def test_prompt_template_file_replaces_the_template(tmp_path: Path, tiny_lychee: Path, reference: LycheeReference,
                                                    images: list[bytes], lychee_server: str) -> None:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(CUSTOM_TEMPLATE))
    query, doc = "find the figure", {"text": "chart of sales", "image": b64(images[1])}
    default_score = rerank(lychee_server, {"query": query, "docs": [doc]})[0]
    with rag_serve("rerank", tiny_lychee, "--max-batch-tokens", "4096", "--prompt-template", str(path)) as base:
        custom_score = rerank(base, {"query": query, "docs": [doc]})[0]
        assert "template from" in requests.get(base + "/info", timeout=10).json()["recipe"]
    expected = reference.score((query, None), ("chart of sales", images[1]), template=CUSTOM_TEMPLATE)
    assert custom_score == pytest.approx(expected, abs=1e-5)
    assert abs(custom_score - default_score) > 1e-3
