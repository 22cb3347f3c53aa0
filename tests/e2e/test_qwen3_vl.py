"""Qwen3-VL-Embedding and Qwen3-VL-Reranker: real ``rag-serve`` processes on tiny random-weight Qwen3-VL models.

The references below are the official recipes written out plainly, one input at a time (no padding, the
model's own position ids): the Qwen3-VL chat turn with the generation prompt, ``<|image_pad|>`` expanded to
the image's token count from the image processor's grid (patch 16, 2x2 merge), and

* embedding: system = the instruction (a full stop added when it does not end in punctuation) or
  ``Represent the user's input.``; the last token's hidden state, L2-normalised;
* reranking: the judge system prompt, user ``<Instruct>: {task}<Query>:{query}\\n<Document>:{doc}``;
  ``P(yes) = sigmoid(logit_yes - logit_no)`` at the last position of the full LM.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from testkit.random_models import save_qwen3_vl_embedding, save_qwen3_vl_reranker
from tests.e2e.mm_fixtures import png_bytes
from tests.support.serve import rag_serve

#: Small pixel range so images give 4..64 tokens on the toy models (the real default is 4..1800 x 32²).
MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 64 * 32 * 32
SIZES = [(60, 40), (200, 120), (33, 97), (90, 90)]
QUERY_TASK = "Retrieve images or text relevant to the user's query."
DOCUMENT_PROMPT = "Represent the user's input."
RERANK_TASK = "Given a search query, retrieve relevant candidates that answer the query."
JUDGE = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that '
    'the answer can only be "yes" or "no".'
)
Side = tuple[str | None, bytes | None]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Qwen3VLReference:
    """Shared plain pieces: tokenizer, image processor, the full ``Qwen3VLForConditionalGeneration``."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(
            str(model_dir), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
        )
        assert self.processor.patch_size == 16
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def content(self, text: str | None, image: bytes | None, pixels: list[Any], grids: list[Any]) -> str:
        out = ""
        if image is not None:
            processed = self.processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
            n = int(processed["image_grid_thw"][0].prod()) // 4  # 2x2 patches per token
            out += "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
            pixels.append(processed["pixel_values"])
            grids.append(processed["image_grid_thw"])
        return out + (text or "")

    def run(self, prompt: str, pixels: list[Any], grids: list[Any]) -> Any:
        torch = self.torch
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs = {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}
        with torch.no_grad():
            return self.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == 151655).int(), **kwargs
            )

    def embed(self, text: str | None, image: bytes | None, system: str) -> np.ndarray:
        pixels: list[Any] = []
        grids: list[Any] = []
        content = self.content(text, image, pixels, grids)
        prompt = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
        ids = self.torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs = {"pixel_values": self.torch.cat(pixels), "image_grid_thw": self.torch.cat(grids)}
        with self.torch.no_grad():
            hidden = self.model.model(
                input_ids=ids, attention_mask=self.torch.ones_like(ids), mm_token_type_ids=(ids == 151655).int(),
                **kwargs,
            ).last_hidden_state
        vec = hidden[0, -1].float().numpy()
        return vec / np.linalg.norm(vec)

    def score(self, query: Side, doc: Side, task: str = RERANK_TASK) -> float:
        pixels: list[Any] = []
        grids: list[Any] = []
        q = self.content(*query, pixels, grids) or "NULL"
        d = self.content(*doc, pixels, grids) or "NULL"
        prompt = (
            f"<|im_start|>system\n{JUDGE}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {task}<Query>:{q}\n<Document>:{d}<|im_end|>\n<|im_start|>assistant\n"
        )
        logits = self.run(prompt, pixels, grids).logits[0, -1]
        yes, no = self.tokenizer.convert_tokens_to_ids(["yes", "no"])
        return 1.0 / (1.0 + math.exp(-float(logits[yes] - logits[no])))


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png_bytes(size, seed=60 + i) for i, size in enumerate(SIZES)]


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    return save_qwen3_vl_embedding(tmp_path_factory.mktemp("tiny-qwen3-vl-embedding"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_plain_dir: Path) -> Path:
    return save_qwen3_vl_reranker(tmp_path_factory.mktemp("tiny-qwen3-vl-reranker"), qwen_tokenizer_plain_dir)


@pytest.fixture(scope="module")
def embed_server(embedding_dir: Path) -> Iterator[str]:
    with rag_serve("mm-embed", embedding_dir, "--min-pixels", str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS),
                   "--max-batch-tokens", "4096") as base:
        yield base


@pytest.fixture(scope="module")
def rerank_server(reranker_dir: Path) -> Iterator[str]:
    with rag_serve("rerank", reranker_dir, "--min-pixels", str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS),
                   "--max-batch-tokens", "4096") as base:
        yield base


@pytest.fixture(scope="module")
def embed_reference(embedding_dir: Path) -> Qwen3VLReference:
    return Qwen3VLReference(embedding_dir)


@pytest.fixture(scope="module")
def rerank_reference(reranker_dir: Path) -> Qwen3VLReference:
    return Qwen3VLReference(reranker_dir)


def post(base: str, route: str, body: dict[str, Any]) -> Any:
    r = requests.post(base + route, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------- embedding
def test_embedding_text_image_fused_match_recipe(
    embed_server: str, embed_reference: Qwen3VLReference, images: list[bytes]
) -> None:
    texts = ["a red square", "two cats on a sofa, sleeping", "a tall picture"]
    queries = np.asarray(post(embed_server, "/embed", {"texts": texts, "input_type": "query"})["embeddings"])
    docs = np.asarray(post(embed_server, "/embed", {"texts": texts, "input_type": "document"})["embeddings"])
    only = np.asarray(post(embed_server, "/embed_image", {"images": [b64(x) for x in images[:3]]})["embeddings"])
    fused = np.asarray(post(embed_server, "/embed_image", {
        "images": [b64(x) for x in images[:3]], "texts": texts, "input_type": "query",
    })["embeddings"])
    for i, t in enumerate(texts):
        np.testing.assert_allclose(queries[i], embed_reference.embed(t, None, QUERY_TASK), atol=1e-5)
        np.testing.assert_allclose(docs[i], embed_reference.embed(t, None, DOCUMENT_PROMPT), atol=1e-5)
        np.testing.assert_allclose(only[i], embed_reference.embed(None, images[i], DOCUMENT_PROMPT), atol=1e-5)
        np.testing.assert_allclose(fused[i], embed_reference.embed(t, images[i], QUERY_TASK), atol=1e-5)
    # An instruction without final punctuation gets a full stop; Unicode punctuation counts as one.
    custom = np.asarray(post(embed_server, "/embed", {
        "texts": texts[:1] * 2, "input_type": "query", "instruction": "Find a diagram",
    })["embeddings"])
    np.testing.assert_allclose(custom[0], embed_reference.embed(texts[0], None, "Find a diagram."), atol=1e-5)
    cjk = np.asarray(post(embed_server, "/embed", {
        "texts": texts[:1], "input_type": "query", "instruction": "找一张图。",
    })["embeddings"])
    np.testing.assert_allclose(cjk[0], embed_reference.embed(texts[0], None, "找一张图。"), atol=1e-5)


def test_embedding_independent_of_batch_and_info(embed_server: str, images: list[bytes]) -> None:
    alone = np.asarray(post(embed_server, "/embed_image", {"images": [b64(images[0])]})["embeddings"][0])
    data = post(embed_server, "/v1/embeddings", {"input": [
        "a text-only item that is somewhat longer than the others",
        {"image": b64(images[1])},
        {"image": "data:image/png;base64," + b64(images[0])},
        {"text": "fused", "image": {"base64": b64(images[2])}},
        "short",
    ]})["data"]
    np.testing.assert_allclose(np.asarray(data[2]["embedding"]), alone, atol=1e-5)
    text_alone = np.asarray(post(embed_server, "/embed", {"texts": ["short"]})["embeddings"][0])
    np.testing.assert_allclose(np.asarray(data[4]["embedding"]), text_alone, atol=1e-5)
    info = requests.get(embed_server + "/info", timeout=10).json()
    assert info["recipe"] == "qwen3-vl-embedding"
    assert info["default_instruction"] == QUERY_TASK
    assert (info["min_pixels"], info["max_pixels"]) == (MIN_PIXELS, MAX_PIXELS)


# ------------------------------------------------------------------------------------------- reranking
def test_rerank_matches_recipe_in_every_direction(
    rerank_server: str, rerank_reference: Qwen3VLReference, images: list[bytes]
) -> None:
    # text -> image
    scores = post(rerank_server, "/rerank", {
        "query": "a noisy picture", "docs": [{"image": b64(x)} for x in images],
    })["scores"]
    for s, img in zip(scores, images, strict=True):
        assert math.isclose(s, rerank_reference.score(("a noisy picture", None), (None, img)), abs_tol=1e-5)
    # image -> text, with a custom instruction
    docs = ["a cat", "a red square on white", "?"]
    scores = post(rerank_server, "/rerank", {
        "query": {"image": b64(images[1])}, "docs": docs, "instruction": "Find the caption",
    })["scores"]
    for s, d in zip(scores, docs, strict=True):
        expected = rerank_reference.score((None, images[1]), (d, None), "Find the caption")
        assert math.isclose(s, expected, abs_tol=1e-5)
    # image+text -> image+text
    scores = post(rerank_server, "/rerank", {
        "query": {"text": "this chart", "image": b64(images[0])},
        "docs": [{"text": "page two", "image": b64(images[3])}, {"text": "page three", "image": b64(images[2])}],
    })["scores"]
    expected = [rerank_reference.score(("this chart", images[0]), ("page two", images[3])),
                rerank_reference.score(("this chart", images[0]), ("page three", images[2]))]
    for s, e in zip(scores, expected, strict=True):
        assert math.isclose(s, e, abs_tol=1e-5)


def test_rerank_score_independent_of_batch_and_info(rerank_server: str, images: list[bytes]) -> None:
    query = {"text": "find this", "image": b64(images[2])}
    alone = post(rerank_server, "/rerank", {"query": query, "docs": [{"image": b64(images[0])}]})["scores"][0]
    batched = post(rerank_server, "/rerank", {"query": query, "docs": [
        "a long text-only document " * 5, {"image": b64(images[1])}, {"image": b64(images[0])},
        {"text": "fused", "image": b64(images[3])},
    ]})["scores"]
    assert math.isclose(batched[2], alone, abs_tol=1e-5)
    info = requests.get(rerank_server + "/info", timeout=10).json()
    assert info["recipe"].startswith("qwen3_vl yes/no (qwen3-vl-reranker template")
    assert info["default_instruction"] == RERANK_TASK
    assert info["modalities"] == ["text", "image", "text+image"]
