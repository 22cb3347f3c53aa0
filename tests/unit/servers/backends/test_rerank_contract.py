"""The one backend contract of reranking: every backend prepares, launches and finishes the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servers.backends.multimodal_rerank import QwenVLPairScorer
from servers.backends.rerank import (
    BiEncoderScorer,
    CrossEncoderPairScorer,
    DecoderPairScorer,
    PairScoringBackend,
    PreparedScoring,
    scores_per_item,
)
from servers.engines import rerank as rerank_engine

CONTRACT = ("prepare", "launch", "forward", "finish", "describe", "start_acceleration", "stop_acceleration",
            "acceleration_info")


@pytest.mark.parametrize("backend", [DecoderPairScorer, CrossEncoderPairScorer, BiEncoderScorer, QwenVLPairScorer])
def test_every_rerank_backend_has_the_contract(backend: type) -> None:
    for name in CONTRACT:
        assert callable(getattr(backend, name, None)), f"{backend.__name__} lacks {name}"
    assert set(CONTRACT) <= set(dir(PairScoringBackend))


def test_engine_never_asks_which_backend_it_holds() -> None:
    source = Path(rerank_engine.__file__).read_text()
    for backend in ("QwenVLPairScorer", "BiEncoderScorer", "DecoderPairScorer", "CrossEncoderPairScorer"):
        assert f"isinstance(self.backend, {backend})" not in source
        assert f"isinstance(backend, {backend})" not in source


def test_pair_scorer_finish_is_one_raw_score_per_pair() -> None:
    prepared = PreparedScoring(items=["a", "b", "c"], costs=[1, 2, 3])
    raw = scores_per_item(prepared, [np.float32(0.5), np.float32(-1.0), np.float32(2.0)])
    assert raw.dtype == np.float32
    assert raw.tolist() == [0.5, -1.0, 2.0]


def test_bi_encoder_finish_is_the_cosine_of_each_pairs_rows() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=8).astype(np.float32) for _ in range(4)]  # q0, d0, d1, d2
    rows = np.array([[0, 1], [0, 3], [0, 2], [0, 1]])
    prepared = PreparedScoring(items=list(range(4)), costs=[1] * 4, pair_rows=rows)
    got = BiEncoderScorer.finish(None, prepared, vectors)  # type: ignore[arg-type]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    want = [cosine(vectors[q], vectors[d]) for q, d in rows]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32
    assert got.shape == (4,)
