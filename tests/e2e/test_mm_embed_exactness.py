"""GME-Qwen2-VL exactness: a real ``rag-serve mm-embed`` against GME's published inference code, written plainly.

The reference follows ``gme_inference.py`` of ``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct`` (pinned to
transformers < 4.52), one input at a time:

* ``fetch_image``: the image is resized once so both sides are multiples of 28 within 4..16384 x 28² pixels
  (``image.resize((w, h))``, PIL's default filter), then the image processor resizes it again within the
  model's pixel range;
* the chat template with the instruction verbatim (queries) or ``You are a helpful assistant.`` (documents),
  ending ``<|im_start|>assistant\n<|endoftext|>``;
* image embeddings from the vision tower written into the ``<|image_pad|>`` positions of the input
  embeddings, then the *text decoder* called without ``position_ids`` (so positions are 0..n-1 over every
  token, image tokens included);
* the last token's hidden state, L2-normalised.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.mm_fixtures import MM_MAX_PIXELS, MM_MIN_PIXELS, png_bytes

INSTRUCTION = "Find an image that matches the given text."
DOCUMENT_PROMPT = "You are a helpful assistant."
# 333x250 and 1000x90: sides not multiples of 28, so GME's first resize changes the pixels the processor sees.
SIZES = [(60, 40), (200, 120), (33, 97), (333, 250), (1000, 90)]


def gme_smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                     max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize as copied into gme_inference.py (its module defaults)."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class GmeReference:
    """gme_inference.py's GmeQwen2VL.embed + forward, for one input."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(
            str(model_dir), min_pixels=MM_MIN_PIXELS, max_pixels=MM_MAX_PIXELS
        )
        full = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.visual = full.model.visual
        self.decoder = full.model.language_model  # what transformers < 4.52 called Qwen2VLModel
        self.image_token_id = full.config.image_token_id

    def fetch_image(self, data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = image.size
        resized_height, resized_width = gme_smart_resize(height, width)
        return image.resize((resized_width, resized_height))

    def embed(self, text: str | None, image: bytes | None, instruction: str) -> np.ndarray:
        torch = self.torch
        input_str = ""
        pixel: dict[str, Any] = {}
        if image is not None:
            out = self.processor(images=[self.fetch_image(image)], return_tensors="pt")
            n = int(out["image_grid_thw"][0].prod()) // 4  # the processor's 2x2 merge: one token per 4 patches
            input_str += "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
            pixel = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        if text is not None:
            input_str += text
        msg = (
            f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input_str}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>"
        )
        ids = torch.tensor([self.tokenizer(msg, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            embeds = self.decoder.get_input_embeddings()(ids)
            if pixel:
                image_embeds = self.visual(pixel["pixel_values"], grid_thw=pixel["image_grid_thw"])
                if not isinstance(image_embeds, torch.Tensor):
                    image_embeds = image_embeds.pooler_output
                embeds[ids == self.image_token_id] = image_embeds
            hidden = self.decoder(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).last_hidden_state
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
    # Instructions are used verbatim (gme_inference.py adds no punctuation).
    custom = post(mm_server, "/embed", {"texts": texts[:1], "input_type": "query", "instruction": "Find a diagram"})
    np.testing.assert_allclose(custom[0], reference.embed(texts[0], None, "Find a diagram"), atol=1e-5)


def test_image_only_and_fused_match_recipe(mm_server: str, reference: GmeReference) -> None:
    images = [png_bytes(size, seed=i) for i, size in enumerate(SIZES)]
    texts = ["a chart", "noise", "a tall picture", "a photo", "a banner"]
    only = post(mm_server, "/embed_image", {"images": [b64(x) for x in images]})
    fused = post(mm_server, "/embed_image", {"images": [b64(x) for x in images], "texts": texts, "input_type": "query"})
    fused_docs = post(mm_server, "/embed_image", {"images": [b64(x) for x in images], "texts": texts})
    for i, img in enumerate(images):
        np.testing.assert_allclose(only[i], reference.embed(None, img, DOCUMENT_PROMPT), atol=1e-5)
        np.testing.assert_allclose(fused[i], reference.embed(texts[i], img, INSTRUCTION), atol=1e-5)
        np.testing.assert_allclose(fused_docs[i], reference.embed(texts[i], img, DOCUMENT_PROMPT), atol=1e-5)
    # Alone (one item per request, the priority lane) equals batched.
    alone = post(mm_server, "/embed_image", {"images": [b64(images[3])], "texts": [texts[3]], "input_type": "query"})
    np.testing.assert_allclose(alone[0], fused[3], atol=1e-5)


def test_openai_route_matches_recipe(mm_server: str, reference: GmeReference) -> None:
    images = [png_bytes(size, seed=20 + i) for i, size in enumerate(SIZES[2:4])]
    r = requests.post(mm_server + "/v1/embeddings", json={
        "input": [{"image": b64(images[0])}, {"text": "a photo", "image": b64(images[1])}, "plain words"],
        "input_type": "query", "instruction": "Retrieve the matching picture",
    }, timeout=120)
    assert r.status_code == 200, r.text
    got = [np.asarray(d["embedding"], dtype=np.float32) for d in r.json()["data"]]
    task = "Retrieve the matching picture"
    np.testing.assert_allclose(got[0], reference.embed(None, images[0], task), atol=1e-5)
    np.testing.assert_allclose(got[1], reference.embed("a photo", images[1], task), atol=1e-5)
    np.testing.assert_allclose(got[2], reference.embed("plain words", None, task), atol=1e-5)


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


async def test_mrope_positions_are_a_named_option(tiny_gme: Path) -> None:
    """``--vision-positions mrope`` gives the get_rope_index (vLLM) vectors; the default gives GME's own."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from servers.engines.multimodal import MultiModalEmbeddingEngine, MultiModalInput
    from servers.settings import ServerSettings

    image = Image.open(io.BytesIO(png_bytes((333, 250), seed=5))).convert("RGB")
    common = dict(kind="mm-embed", model=str(tiny_gme), device="cpu", min_pixels=MM_MIN_PIXELS,
                  max_pixels=MM_MAX_PIXELS, max_batch_tokens=4096, warmup=False)
    vectors = {}
    for positions in ("recipe", "mrope"):
        engine = MultiModalEmbeddingEngine.from_settings(ServerSettings(**common, vision_positions=positions))
        async with engine:
            result = await engine.embed_inputs([MultiModalInput(text="a photo", image=image)])
        vectors[positions] = result.vectors[0]
        prepared = engine.backend.prepare("a photo", image, "document", None)
    # The M-RoPE reference: the full model's forward computes get_rope_index itself.
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_gme), dtype=torch.float32).eval()
    ids = torch.tensor([prepared.ids])
    with torch.no_grad():
        hidden = model.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == 151655).int(),
            pixel_values=torch.from_numpy(prepared.pixel_values), image_grid_thw=torch.tensor([prepared.grid_thw]),
        ).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(vectors["mrope"], hidden / np.linalg.norm(hidden), atol=1e-5)
    assert float(np.abs(vectors["mrope"] - vectors["recipe"]).max()) > 1e-3
