"""GME-Qwen2-VL exactness: a real ``rag-serve mm-embed`` against the model-card recipe written out plainly.

The reference below is GME's own procedure, one input at a time (no padding, the model's own position ids):
build the chat template, expand ``<|image_pad|>`` to the image's token count from the image processor's
grid, run the model, take the last token's hidden state, L2-normalise.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.mm_fixtures import MM_MAX_PIXELS, MM_MIN_PIXELS, png_bytes

INSTRUCTION = "Find an image that matches the given text."
DOCUMENT_PROMPT = "You are a helpful assistant."
SIZES = [(60, 40), (200, 120), (33, 97)]


class GmeReference:
    """GME-Qwen2-VL recipe, plainly."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(
            str(model_dir), min_pixels=MM_MIN_PIXELS, max_pixels=MM_MAX_PIXELS
        )
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def embed(self, text: str | None, image: bytes | None, instruction: str) -> np.ndarray:
        torch = self.torch
        content = ""
        kwargs = {}
        if image is not None:
            out = self.processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
            n = int(out["image_grid_thw"][0].prod()) // 4  # merge_size 2 -> 2x2 patches per token
            content += "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
            kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        content += text or ""
        prompt = (
            f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>"
        )
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        mm_token_type_ids = (ids == 151655).int()
        with torch.no_grad():
            hidden = self.model.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm_token_type_ids, **kwargs
            ).last_hidden_state
        vec = hidden[0, -1].float().numpy()
        return vec / np.linalg.norm(vec)


@pytest.fixture(scope="module")
def reference(tiny_gme: Path) -> GmeReference:
    return GmeReference(tiny_gme)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(base: str, route: str, body: dict[str, object]) -> np.ndarray:
    r = requests.post(base + route, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], dtype=np.float32)


def test_text_only_matches_recipe(mm_server: str, reference: GmeReference) -> None:
    texts = ["a red square", "two cats on a sofa, sleeping"]
    queries = post(mm_server, "/embed", {"texts": texts, "input_type": "query"})
    docs = post(mm_server, "/embed", {"texts": texts, "input_type": "document"})
    for i, t in enumerate(texts):
        np.testing.assert_allclose(queries[i], reference.embed(t, None, INSTRUCTION), atol=1e-5)
        np.testing.assert_allclose(docs[i], reference.embed(t, None, DOCUMENT_PROMPT), atol=1e-5)
    custom = post(mm_server, "/embed", {"texts": texts[:1], "input_type": "query", "instruction": "Find a diagram"})
    np.testing.assert_allclose(custom[0], reference.embed(texts[0], None, "Find a diagram."), atol=1e-5)


def test_image_only_and_fused_match_recipe(mm_server: str, reference: GmeReference) -> None:
    images = [png_bytes(size, seed=i) for i, size in enumerate(SIZES)]
    texts = ["a chart", "noise", "a tall picture"]
    only = post(mm_server, "/embed_image", {"images": [b64(x) for x in images]})
    fused = post(mm_server, "/embed_image", {"images": [b64(x) for x in images], "texts": texts, "input_type": "query"})
    for i, img in enumerate(images):
        np.testing.assert_allclose(only[i], reference.embed(None, img, DOCUMENT_PROMPT), atol=1e-5)
        np.testing.assert_allclose(fused[i], reference.embed(texts[i], img, INSTRUCTION), atol=1e-5)


def test_vector_independent_of_batch(mm_server: str) -> None:
    images = [png_bytes(size, seed=10 + i) for i, size in enumerate(SIZES)]
    alone = post(mm_server, "/embed_image", {"images": [b64(images[0])]})[0]
    batched = requests.post(
        mm_server + "/v1/embeddings",
        json={"input": [
            "a text-only item that is somewhat longer than the others",
            {"image": b64(images[1])},
            {"image": "data:image/png;base64," + b64(images[0])},
            {"text": "fused", "image": {"base64": b64(images[2])}},
            "short",
        ]},
        timeout=120,
    )
    assert batched.status_code == 200, batched.text
    data = batched.json()["data"]
    assert [d["index"] for d in data] == list(range(5))
    np.testing.assert_allclose(np.asarray(data[2]["embedding"]), alone, atol=1e-5)
    text_alone = post(mm_server, "/embed", {"texts": ["short"]})[0]
    np.testing.assert_allclose(np.asarray(data[4]["embedding"]), text_alone, atol=1e-5)


def test_dimensions_info_and_paths(mm_server: str, mm_dirs: tuple[Path, Path]) -> None:
    full = post(mm_server, "/embed_image", {"images": [{"path": "ok.png"}]})[0]
    cut = post(mm_server, "/embed_image", {"images": [{"path": str(mm_dirs[0] / "ok.png")}], "dimensions": 32})[0]
    assert cut.shape == (32,)
    np.testing.assert_allclose(cut, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)
    info = requests.get(mm_server + "/info", timeout=10).json()
    assert info["kind"] == "mm-embed"
    assert info["dim"] == 64
    assert info["recipe"] == "gme-qwen2-vl"
