"""Deterministic stand-in embedders for the Milvus store tests.

These are NOT mocks of our servers. ``TableEmbedder`` returns vectors a test chose (random-vector tests of
fusion); ``HashImageSpaceEmbedder`` stands in for the multimodal (image-space) embedding server, which is
built separately (``rag_plugins.multimodal_client``) and may not exist yet: it maps texts and images to
fixed unit vectors, so tests can check the store's behaviour with an image field. Text vectors in the
e2e tests come from a real rag-serve process (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
import re
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np


def unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _seeded_unit(key: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return unit(np.random.default_rng(seed), dim)


class TableEmbedder:
    """Looks texts up in a table of vectors the test made (a KeyError means the test forgot one)."""

    def __init__(self, table: dict[str, np.ndarray], dim: int) -> None:
        self.table = table
        self.dim = dim
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, self.dim))

    async def aembed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        return self.embed(texts, input_type)

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "model": "table"}


class HashImageSpaceEmbedder:
    """Stand-in for the multimodal embedding server: bag-of-words hash vectors in one shared space.

    A text maps to the normalized sum of per-word seeded random vectors; an image given by path maps to the
    vector of the words in its file stem (``red_planet.png`` → "red planet"), an image given as bytes to a
    hash of the bytes. So the query "red planet" lands next to ``red_planet.png`` — enough to test that image
    hits come back, nothing about model quality.
    """

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.image_calls = 0
        self.text_calls = 0

    def _text_vec(self, text: str) -> np.ndarray:
        words = re.findall(r"[a-z0-9]+", text.lower()) or [""]
        v = np.sum([_seeded_unit("w:" + w, self.dim) for w in words], axis=0)
        return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)

    def _image_vec(self, image: Any) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return self._text_vec(Path(str(image)).stem.replace("_", " "))
        data = image.getvalue() if isinstance(image, BytesIO) else bytes(image)
        return _seeded_unit("img:" + hashlib.sha256(data).hexdigest(), self.dim)

    def embed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        self.text_calls += 1
        return np.stack([self._text_vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    async def aembed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        return self.embed(texts, input_type)

    def embed_images(self, images: list[Any], texts: list[str] | None = None,
                     input_type: str = "document") -> np.ndarray:
        self.image_calls += 1
        return np.stack([self._image_vec(i) for i in images]) if images else np.zeros((0, self.dim), np.float32)

    async def aembed_images(self, images: list[Any], texts: list[str] | None = None,
                            input_type: str = "document") -> np.ndarray:
        return self.embed_images(images, texts, input_type)

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "model": "hash-image-space"}
