"""The rerank engine in-process: packed bulk batches of the yes/no decoder reranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servers.engines.rerank import RerankEngine
from servers.settings import ServerSettings


async def test_bulk_packing_gives_the_scores_of_padded_batches(tiny_qwen3_causal_lm: Path) -> None:
    """Qwen3-Reranker's yes/no head on packed bulk batches: the same raw scores as padded ones (fp32, CPU)."""
    docs = [f"document {i} " + "about retrieval and ranking " * (1 + i % 6) for i in range(30)]

    async def scores(packing: str) -> np.ndarray:
        engine = RerankEngine.from_settings(ServerSettings(
            kind="rerank", model=str(tiny_qwen3_causal_lm), device="cpu", bulk_packing=packing, warmup=False,
            priority_max_items=0, max_batch_tokens=2048, max_length=2048))
        assert engine.backend.packs_bulk is (packing == "on")
        async with engine:
            return np.asarray((await engine.rerank("what is retrieval?", docs)).raw_scores)

    packed, padded = await scores("on"), await scores("off")
    np.testing.assert_allclose(packed, padded, atol=1e-4)
    assert np.ptp(padded) > 0  # the scores differ by document: the check compares something
