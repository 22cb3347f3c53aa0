"""The fast path on a GPU: CUDA-graphed queries and the compiled bulk forward agree with the eager path.

Run on the device machine: ``pytest -m gpu tests/gpu``. Each check builds an engine with graphs and
compilation on, waits until both are ready, and compares against the same engine's eager path in the
same dtype and against fp32 on the CPU.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TEXTS = [f"query {i}: " + "retrieval augmented generation " * (1 + i % 7) for i in range(24)]


def _embed_engine(model: Path, device: str, dtype: str, graphs: str, compile_: str, packing: str = "off") -> Any:
    from servers.engines.embedding import EmbeddingEngine
    from servers.settings import ServerSettings

    return EmbeddingEngine.from_settings(ServerSettings(
        model=str(model), device=device, dtype=dtype, cuda_graphs=graphs, compile=compile_, warmup=False,
        compile_cache_dir="/tmp/rag-plugins-test-inductor", compiled_graph_buckets=("1x64",), bulk_packing=packing,
    ))


async def _vectors(engine: Any, wait: bool, texts: list[str] = TEXTS) -> tuple[np.ndarray, np.ndarray]:
    async with engine:
        if wait:
            decoder = engine.backend.decoder
            assert decoder is not None
            assert decoder.wait(900)
            info = engine.backend.acceleration_info()
            assert info["graphs"] == "ready", info
            assert info["compiled_graphs"] == "ready", info
            assert info["compile"] == "ready", info
        batch = (await engine.embed(texts, input_type="document")).vectors  # bulk lane: compiled
        alone = np.stack([(await engine.embed([t], input_type="query")).vectors[0] for t in TEXTS[:6]])  # graphs
        if wait:
            # Every query fits the 1x64 compiled bucket: none may have taken another path.
            paths = engine.backend.acceleration_info()["priority_paths"]
            assert paths["compiled_graph"] >= 6, paths
            assert paths["eager"] == 0, paths
    return batch, alone


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_graphs_and_compile_agree_with_eager(tiny_qwen3_embedding: Path, dtype: str) -> None:
    eager_batch, eager_alone = asyncio.run(_vectors(_embed_engine(tiny_qwen3_embedding, "cuda:0", dtype, "off", "off"),
                                                    wait=False))
    fast_batch, fast_alone = asyncio.run(_vectors(_embed_engine(tiny_qwen3_embedding, "cuda:0", dtype, "on", "on"),
                                                  wait=True))
    ref_batch, ref_alone = asyncio.run(_vectors(_embed_engine(tiny_qwen3_embedding, "cpu", "float32", "off", "off"),
                                                wait=False))
    cos_fast = np.sum(fast_batch * eager_batch, axis=1)
    assert cos_fast.min() >= 0.999, cos_fast.min()
    assert np.sum(fast_alone * eager_alone, axis=1).min() >= 0.999
    # As close to fp32 as the eager half-precision path is (within rounding).
    err_fast = np.abs(fast_batch - ref_batch).max()
    err_eager = np.abs(eager_batch - ref_batch).max()
    assert err_fast <= 2 * err_eager + 1e-3, (err_fast, err_eager)
    # Bucket/batch invariance: a query alone in its graph bucket == the same text in a compiled bulk batch
    # (the query side differs only by its prompt, so embed the same strings as documents alone too).
    assert np.sum(fast_alone * np.stack([ref_alone[i] for i in range(6)]), axis=1).min() >= 0.99


def test_reranker_fast_path_agrees_with_eager(tiny_qwen3_causal_lm: Path) -> None:
    from servers.engines.rerank import RerankEngine
    from servers.settings import ServerSettings

    docs = [f"document {i} " + "about retrieval " * (1 + i % 5) for i in range(20)]

    async def scores(graphs: str, compile_: str, device: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        engine = RerankEngine.from_settings(ServerSettings(
            kind="rerank", model=str(tiny_qwen3_causal_lm), device=device, dtype=dtype, cuda_graphs=graphs,
            compile=compile_, warmup=False, compile_cache_dir="/tmp/rag-plugins-test-inductor",
            compiled_graph_buckets=("1x256",)))
        async with engine:
            decoder = getattr(engine.backend, "decoder", None)
            if decoder is not None and graphs == "on":
                assert decoder.wait(900)
            bulk = (await engine.score([("what is retrieval?", d) for d in docs])).raw_scores
            small = np.array([(await engine.score([("what is retrieval?", d)])).raw_scores[0] for d in docs[:4]])
            if decoder is not None and graphs == "on":
                assert decoder.info()["priority_paths"]["compiled_graph"] >= 4, decoder.info()
        return bulk, small

    fast_bulk, fast_small = asyncio.run(scores("on", "on", "cuda:0", "bfloat16"))
    eager_bulk, eager_small = asyncio.run(scores("off", "off", "cuda:0", "bfloat16"))
    ref_bulk, _ = asyncio.run(scores("off", "off", "cpu", "float32"))
    scale = max(1.0, float(np.abs(ref_bulk).max()))
    assert np.abs(fast_bulk - eager_bulk).max() <= 5e-2 * scale
    assert np.abs(fast_small - eager_small).max() <= 5e-2 * scale
    assert np.abs(fast_small - fast_bulk[:4]).max() <= 5e-2 * scale  # graph bucket vs compiled batch
    assert np.abs(fast_bulk - ref_bulk).max() <= 2 * np.abs(eager_bulk - ref_bulk).max() + 1e-2 * scale


def test_a_bulk_forward_never_synchronises_the_device() -> None:
    """An eager bulk forward, padded or packed, only queues work: no step waits for the GPU (with a sync, a
    bulk thread could not queue the next batch until this one had finished). Without the ready mask mapping,
    transformers' search for packed sequences synchronises, which shows that the check is live."""
    from dataclasses import replace

    from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
    from servers.backends.device import choose_placement
    from testkit.random_models import random_qwen3_causal_lm

    placement = choose_placement("cuda:0", "bfloat16", "sdpa")
    off = AccelerationSettings(cuda_graphs="off", compile="off", bulk_packing="off")
    padded_model = random_qwen3_causal_lm("tiny", device="cuda:0", dtype="bfloat16").model.eval()
    padded = LastTokenDecoder(padded_model, placement, 151643, None, off, 512)
    packed_model = random_qwen3_causal_lm("tiny", device="cuda:0", dtype="bfloat16").model.eval()
    packed = LastTokenDecoder(packed_model, placement, 151643, None, replace(off, bulk_packing="on"), 512)
    assert padded.info()["mask_free"] is True
    assert packed.packing, packed.info()
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 150000, size=n).tolist() for n in (40, 7, 300)]
    stream = torch.cuda.Stream()
    with torch.inference_mode(), torch.cuda.stream(stream):
        for decoder in (padded, packed):
            decoder.run(batch, "bulk")  # warm: lazy initialisations may synchronise once
        stream.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            padded.run(batch, "bulk")
            packed.run(batch, "bulk")
            padded._mask_free = {}
            with pytest.raises(RuntimeError, match="synchroniz"):
                padded.run(batch, "bulk")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        stream.synchronize()


@pytest.mark.parametrize("compile_", ["off", "on"])
def test_packed_bulk_batches_agree_with_padded_ones(tiny_qwen3_embedding: Path, compile_: str) -> None:
    """FlashAttention-2's varlen kernel on packed bulk batches (eager, then inside the compiled layer) against
    the padded eager path in bf16 and fp32 on the CPU."""
    # Texts up to ~900 tokens: the kernel's max length takes several power-of-two values (64 ... 1024).
    texts = [*TEXTS, *("passage about long documents " * n for n in (30, 90, 180))]
    packed_engine = _embed_engine(tiny_qwen3_embedding, "cuda:0", "bfloat16", compile_, compile_, packing="on")
    decoder = packed_engine.backend.decoder
    assert decoder.info()["bulk_packing"] == "on", decoder.info()
    packed, _ = asyncio.run(_vectors(packed_engine, wait=compile_ == "on", texts=texts))
    if compile_ == "on":
        assert decoder.info().get("compiled_layer_fallbacks") == 0, decoder.info()
    padded, _ = asyncio.run(_vectors(_embed_engine(tiny_qwen3_embedding, "cuda:0", "bfloat16", "off", "off"),
                                     wait=False, texts=texts))
    ref, _ = asyncio.run(_vectors(_embed_engine(tiny_qwen3_embedding, "cpu", "float32", "off", "off"), wait=False,
                                  texts=texts))
    assert np.sum(packed * padded, axis=1).min() >= 0.999
    assert np.sum(packed * ref, axis=1).min() >= np.sum(padded * ref, axis=1).min() - 1e-3
