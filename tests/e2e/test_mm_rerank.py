"""Multimodal reranking: a real ``rag-serve rerank`` on a tiny random-weight Qwen2-VL yes/no reranker.

The reference below is the recipe written out plainly, one pair at a time (no padding, the model's own
position ids, the full vocabulary projection): the Qwen3-Reranker template with
``<|vision_start|><|image_pad|>*n<|vision_end|>`` before each side's text when it has an image,
``P(yes) = sigmoid(logit_yes - logit_no)`` at the last position.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.e2e.mm_fixtures import MM_MAX_PIXELS, MM_MIN_PIXELS, png_bytes
from tests.support.serve import rag_serve

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
SIZES = [(60, 40), (200, 120), (33, 97), (90, 90)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class VlRerankReference:
    """The Qwen-VL yes/no rerank recipe, plainly."""

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
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def _side(self, text: str | None, image: bytes | None, pixels: list[Any], grids: list[Any]) -> str:
        content = ""
        if image is not None:
            out = self.processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
            n = int(out["image_grid_thw"][0].prod()) // 4  # merge_size 2 -> 2x2 patches per token
            content += "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
        return content + (text or "")

    def score(self, query: tuple[str | None, bytes | None], doc: tuple[str | None, bytes | None],
              instruction: str = DEFAULT_TASK) -> float:
        torch = self.torch
        pixels: list[Any] = []
        grids: list[Any] = []
        q = self._side(*query, pixels, grids)
        d = self._side(*doc, pixels, grids)
        prompt = (
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
            'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
            f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs = {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}
        with torch.no_grad():
            logits = self.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == 151655).int(), **kwargs
            ).logits[0, -1]
        return 1.0 / (1.0 + math.exp(-float(logits[self.yes] - logits[self.no])))


@pytest.fixture(scope="module")
def vl_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """An image root holding img0.png .. img3.png (the SIZES), and their bytes."""
    root = tmp_path_factory.mktemp("vl-rerank-images")
    images = [png_bytes(size, seed=40 + i) for i, size in enumerate(SIZES)]
    for i, data in enumerate(images):
        (root / f"img{i}.png").write_bytes(data)
    return root, images


@pytest.fixture(scope="module")
def vl_rerank_server(tiny_vl_reranker: Path, vl_images: tuple[Path, list[bytes]]) -> Iterator[str]:
    with rag_serve(
        "rerank", tiny_vl_reranker, "--min-pixels", str(MM_MIN_PIXELS), "--max-pixels", str(MM_MAX_PIXELS),
        "--image-root", str(vl_images[0]), "--allow-url-images", "--max-batch-tokens", "4096",
    ) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_vl_reranker: Path) -> VlRerankReference:
    return VlRerankReference(tiny_vl_reranker)


def rerank(base: str, body: dict[str, Any]) -> list[float]:
    r = requests.post(base + "/rerank", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return [float(s) for s in r.json()["scores"]]


def test_text_to_image_matches_recipe(vl_rerank_server: str, reference: VlRerankReference,
                                      vl_images: tuple[Path, list[bytes]]) -> None:
    _, images = vl_images
    query = "a noisy picture of a red square"
    docs: list[Any] = [{"image": b64(images[0])}, {"image": {"path": "img1.png"}},
                       {"text": "a caption", "image": "data:image/png;base64," + b64(images[2])}, "plain text"]
    scores = rerank(vl_rerank_server, {"query": query, "docs": docs})
    expected = [
        reference.score((query, None), (None, images[0])),
        reference.score((query, None), (None, images[1])),
        reference.score((query, None), ("a caption", images[2])),
        reference.score((query, None), ("plain text", None)),
    ]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 4  # random weights still tell the pairs apart


def test_image_to_text_and_fused_match_recipe(vl_rerank_server: str, reference: VlRerankReference,
                                              vl_images: tuple[Path, list[bytes]]) -> None:
    _, images = vl_images
    docs = ["a red square", "two cats asleep on a sofa"]
    scores = rerank(vl_rerank_server, {"query": {"image": b64(images[3])}, "docs": docs})
    assert scores == pytest.approx([reference.score((None, images[3]), (d, None)) for d in docs], abs=1e-5)

    fused_docs = [{"text": "chart of sales", "image": b64(images[1])}, {"text": "a tall photo", "image": b64(images[2])}]
    body = {"query": {"text": "find the matching figure", "image": b64(images[0])}, "docs": fused_docs,
            "instruction": "Find the figure that matches"}
    scores = rerank(vl_rerank_server, body)
    expected = [
        reference.score(("find the matching figure", images[0]), ("chart of sales", images[1]), "Find the figure that matches"),
        reference.score(("find the matching figure", images[0]), ("a tall photo", images[2]), "Find the figure that matches"),
    ]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_score_independent_of_batch(vl_rerank_server: str, vl_images: tuple[Path, list[bytes]]) -> None:
    _, images = vl_images
    query = {"text": "which picture?", "image": b64(images[3])}
    target = {"text": "this one", "image": b64(images[0])}
    alone = rerank(vl_rerank_server, {"query": query, "docs": [target]})[0]
    batch: list[Any] = ["a long text-only document " * 6, {"image": b64(images[1])}, target,
                        {"text": "tall", "image": b64(images[2])}, "short"]
    batched = rerank(vl_rerank_server, {"query": query, "docs": batch})
    assert batched[2] == pytest.approx(alone, abs=1e-5)
    cohere = requests.post(vl_rerank_server + "/v1/rerank", json={"query": query, "documents": batch,
                                                                  "return_documents": True}, timeout=120)
    assert cohere.status_code == 200, cohere.text
    by_index = {r["index"]: r for r in cohere.json()["results"]}
    assert by_index[2]["relevance_score"] == pytest.approx(alone, abs=1e-5)
    assert by_index[2]["document"] == {"text": "this one"}


def test_info_and_bad_images(vl_rerank_server: str, vl_images: tuple[Path, list[bytes]]) -> None:
    info = requests.get(vl_rerank_server + "/info", timeout=10).json()
    assert info["modalities"] == ["text", "image", "text+image"]
    assert info["recipe"].startswith("qwen2_vl yes/no (qwen3-reranker template")
    root, _ = vl_images
    bad = [
        ({"image": {"path": str(root / ".." / "x.png")}}, 4),
        ({"image": {"url": "http://127.0.0.1:1/x.png"}}, 4),
        ({"image": b64(b"not an image at all")}, 4),
        ({"text": "<|image_pad|> smuggled"}, 4),
    ]
    for doc, family in bad:
        r = requests.post(vl_rerank_server + "/rerank", json={"query": "q", "docs": ["ok", doc]}, timeout=30)
        assert r.status_code // 100 == family, (doc, r.text)
        assert "pair 1" in r.json()["error"]["message"]
    assert requests.get(vl_rerank_server + "/health", timeout=10).status_code == 200


def test_text_reranker_refuses_images_with_400(qwen_rerank_server: str) -> None:
    for body in ({"query": {"text": "q", "image": "aGVsbG8="}, "docs": ["d"]},
                 {"query": "q", "docs": ["d", {"image": "aGVsbG8="}]}):
        r = requests.post(qwen_rerank_server + "/rerank", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert "text only" in r.json()["error"]["message"]
    r = requests.post(qwen_rerank_server + "/rerank", json={"query": {"text": "q"}, "docs": ["d"]}, timeout=30)
    assert r.status_code == 200, r.text


def test_local_rerank_sends_image_nodes(vl_rerank_server: str, vl_images: tuple[Path, list[bytes]]) -> None:
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

    from rag_plugins import LocalRerank
    from rag_plugins.errors import ServerResponseError

    root, images = vl_images
    nodes = [
        NodeWithScore(node=ImageNode(image=b64(images[0]), text=""), score=0.1),
        NodeWithScore(node=ImageNode(image_path=str(root / "img1.png"), text=""), score=0.2),
        NodeWithScore(node=TextNode(text="a plain text chunk"), score=0.3),
    ]
    query = "a noisy picture"
    direct = rerank(vl_rerank_server, {"query": query, "docs": [
        {"image": b64(images[0])}, {"image": {"path": str(root / "img1.png")}}, "a plain text chunk"]})
    out = LocalRerank(base_url=vl_rerank_server, top_n=None).postprocess_nodes(nodes, QueryBundle(query))
    got = {id(n.node): n.score for n in out}
    assert [got[id(n.node)] for n in nodes] == pytest.approx(direct, abs=1e-6)
    assert [n.score for n in out] == sorted(direct, reverse=True)[: len(out)]
    # An image query (QueryBundle.image_path) is sent as the query's image.
    image_query = QueryBundle(query_str="", image_path=str(root / "img3.png"))
    direct = rerank(vl_rerank_server, {"query": {"image": {"path": str(root / "img3.png")}},
                                       "docs": [{"image": b64(images[0])}, {"image": {"path": str(root / "img1.png")}},
                                                "a plain text chunk"]})
    out = LocalRerank(base_url=vl_rerank_server, top_n=None).postprocess_nodes(nodes, image_query)
    got = {id(n.node): n.score for n in out}
    assert [got[id(n.node)] for n in nodes] == pytest.approx(direct, abs=1e-6)
    # A URL image is sent as {"url"}: this server allows URLs but never loopback targets.
    url_node = NodeWithScore(node=ImageNode(image_url="http://127.0.0.1:9/x.png", text=""), score=0.0)
    with pytest.raises(ServerResponseError, match=r"(?i)refused|not allowed|private|loopback"):
        LocalRerank(base_url=vl_rerank_server, top_n=1, max_retries=0).postprocess_nodes([url_node], QueryBundle(query))
