"""GPU checks (run on the device machine: ``pytest -m gpu tests/gpu``), never in CI.

Half-precision vectors and scores must stay close to the fp32 recipe, the hardware rule must pick bf16 on
compute capability >= 8.0 and fp16 below, and a text's vector must not depend on its batch on the GPU either.
Compilation is off here (tests/gpu/test_accelerated.py checks it): each engine would otherwise keep compiling
in the background after its test ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)"),
]


def _texts() -> list[str]:
    rng = np.random.default_rng(0)
    words = ["graph", "vector", "index", "query", "passage", "model", "token", "batch", "reranker", "milvus", "light", "fusion"]
    return [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(3, 300, size=50)]


def test_auto_dtype_follows_compute_capability(tiny_qwen3_embedding: Path) -> None:
    from servers.backends.device import choose_placement

    placement = choose_placement("cuda:0", "auto", "auto")
    major, _ = torch.cuda.get_device_capability(0)
    assert placement.dtype == (torch.bfloat16 if major >= 8 else torch.float16)
    assert placement.attention == "sdpa"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_close_to_fp32_and_batch_invariant(tiny_qwen3_embedding: Path, dtype: str) -> None:
    texts = _texts()

    async def run(dt: str, device: str) -> tuple[np.ndarray, np.ndarray]:
        from servers.engines.embedding import EmbeddingEngine
        from servers.settings import ServerSettings

        engine = EmbeddingEngine.from_settings(ServerSettings(model=str(tiny_qwen3_embedding), device=device, dtype=dt,
                                                                    compile="off"))
        async with engine:
            batch = (await engine.embed(texts)).vectors
            alone = np.stack([(await engine.embed([t])).vectors[0] for t in texts[:10]])
        return batch, alone

    ref, _ = asyncio.run(run("float32", "cpu"))
    half, alone = asyncio.run(run(dtype, "cuda:0"))
    cosine = np.sum(ref * half, axis=1)
    assert cosine.min() > 0.995, cosine.min()
    # bf16/fp16 kernels may pick other tiles for other batch shapes; the drift must stay at rounding level.
    assert np.abs(alone - half[:10]).max() < 2e-2


@pytest.mark.parametrize("family", ["gme", "qwen3-vl"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_multimodal_half_precision_close_to_fp32(
    qwen_tokenizer_plain_dir: Path, tmp_path: Path, family: str, dtype: str
) -> None:
    """Images, texts and fused inputs through the mm engine in half precision on the GPU vs fp32 on the CPU."""
    from PIL import Image

    from testkit.random_models import save_gme_qwen2_vl, save_qwen3_vl_embedding

    save = save_gme_qwen2_vl if family == "gme" else save_qwen3_vl_embedding
    model = save(tmp_path / family, qwen_tokenizer_plain_dir)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
              for w, h in ((64, 48), (200, 120), (33, 97), (300, 300))]

    async def run(dt: str, device: str) -> tuple[np.ndarray, np.ndarray]:
        from servers.engines.multimodal import MultiModalEmbeddingEngine, MultiModalInput
        from servers.settings import ServerSettings

        settings = ServerSettings(model=str(model), kind="mm-embed", device=device, dtype=dt, compile="off",
                                  min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32)
        engine = MultiModalEmbeddingEngine.from_settings(settings)
        items = [MultiModalInput(image=im) for im in images] + [
            MultiModalInput(text=t) for t in _texts()[:8]] + [MultiModalInput(text="fused", image=images[1])]
        async with engine:
            batch = (await engine.embed_inputs(items)).vectors
            alone = (await engine.embed_inputs(items[:1])).vectors[0]
        return batch, alone

    ref, _ = asyncio.run(run("float32", "cpu"))
    half, alone = asyncio.run(run(dtype, "cuda:0"))
    cosine = np.sum(ref * half, axis=1)
    assert cosine.min() > 0.99, cosine.min()
    assert np.abs(alone - half[0]).max() < 2e-2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lychee_rerank_half_precision_close_to_fp32(qwen_tokenizer_plain_dir: Path, tmp_path: Path, dtype: str) -> None:
    """Lychee-Rerank-MM (Qwen2.5-VL) raw yes/no logit differences in half precision on the GPU vs fp32 on the CPU."""
    from PIL import Image

    from testkit.random_models import save_lychee_rerank_mm

    model = save_lychee_rerank_mm(tmp_path / "lychee", qwen_tokenizer_plain_dir)
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
              for w, h in ((64, 48), (333, 250), (33, 97))]

    async def run(dt: str, device: str) -> np.ndarray:
        from servers.engines.rerank import RerankEngine
        from servers.images import MultiModalInput
        from servers.settings import ServerSettings

        engine = RerankEngine.from_settings(ServerSettings(model=str(model), kind="rerank", device=device, dtype=dt,
                                                                 compile="off"))
        docs = [MultiModalInput(image=im) for im in images] + ["a plain text document", MultiModalInput(
            text="fused", image=images[1])]
        async with engine:
            result = await engine.score([(MultiModalInput(text="which picture?", image=images[0]), d) for d in docs])
        return np.asarray(result.raw_scores)

    ref = asyncio.run(run("float32", "cpu"))
    half = asyncio.run(run(dtype, "cuda:0"))
    # Random weights give raw scores of order 1; half precision must stay at rounding level.
    assert np.abs(ref - half).max() < 5e-2 * max(1.0, float(np.abs(ref).max())), (ref, half)
