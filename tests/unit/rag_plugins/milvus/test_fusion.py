"""Fusion correctness on random vectors, against rankings computed independently with numpy.

Real Milvus Lite (in process, FLAT = exact search); the embedders are ``TableEmbedder`` doubles that return
the query vectors the test chose (see ``tests/support/milvus_doubles.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from rag_plugins.milvus.errors import FusionConfigError
from rag_plugins.milvus.fusion import Fusion
from rag_plugins.milvus.retriever import HybridRetriever
from tests.unit.rag_plugins.milvus.conftest import RandomStore


def brute_force_ranking(vectors: dict[str, np.ndarray], query: np.ndarray, limit: int) -> list[str]:
    """Ids by cosine similarity to ``query``, best first (ties by id), top ``limit``."""
    scored = [(float(np.dot(v, query) / (np.linalg.norm(v) * np.linalg.norm(query))), k) for k, v in vectors.items()]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [k for _, k in scored[:limit]]


def rrf(rankings: list[list[str]], k: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion written out: score(d) = Σ_lists 1 / (k + rank), rank counted from 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda s: (-s[1], s[0]))


@pytest.mark.parametrize(("rrf_k", "text_limit", "image_limit"), [(60, 20, 20), (1, 15, 25), (5, 30, 10)])
def test_rrf_equals_independent_rrf(random_store: RandomStore, rrf_k: int, text_limit: int, image_limit: int) -> None:
    for query, (qt, qi) in random_store.queries.items():
        text_rank = brute_force_ranking(random_store.text_vecs, qt, text_limit)
        image_rank = brute_force_ranking(random_store.image_vecs, qi, image_limit)
        expected = rrf([text_rank, image_rank], rrf_k)
        retriever = HybridRetriever(random_store.store, top_k=len(expected), fusion="rrf", rrf_k=rrf_k,
                                    text_limit=text_limit, image_limit=image_limit)
        got = retriever.retrieve(query)
        assert [n.node.node_id for n in got] == [doc for doc, _ in expected]
        np.testing.assert_allclose([n.score for n in got], [s for _, s in expected], rtol=1e-5)


def test_rrf_top_k_cut_keeps_best_scores(random_store: RandomStore) -> None:
    qt, qi = random_store.queries["q1"]
    expected = rrf([brute_force_ranking(random_store.text_vecs, qt, 20),
                    brute_force_ranking(random_store.image_vecs, qi, 20)], 60)
    got = HybridRetriever(random_store.store, top_k=10, text_limit=20, image_limit=20).retrieve("q1")
    assert len(got) == 10
    np.testing.assert_allclose([n.score for n in got], [s for _, s in expected[:10]], rtol=1e-5)
    expected_scores = dict(expected)
    for n in got:  # same id set up to ties at the cut
        assert expected_scores[n.node.node_id] == pytest.approx(n.score, rel=1e-5)


@pytest.mark.parametrize(("weights", "field"), [((1.0, 0.0), "text"), ((0.0, 1.0), "image")])
def test_weighted_extremes_reproduce_single_field_ranking(
    random_store: RandomStore, weights: tuple[float, float], field: str
) -> None:
    retriever = HybridRetriever(random_store.store, top_k=15, fusion="weighted", weights=weights)
    for query, (qt, qi) in random_store.queries.items():
        vectors, q = (random_store.text_vecs, qt) if field == "text" else (random_store.image_vecs, qi)
        got = [n.node.node_id for n in retriever.retrieve(query)]
        assert got == brute_force_ranking(vectors, q, 15)


def test_fusion_overridable_per_query(random_store: RandomStore) -> None:
    retriever = HybridRetriever(random_store.store, top_k=10, fusion="rrf")
    qt, _ = random_store.queries["q2"]
    got = retriever.retrieve_with("q2", fusion="weighted", weights=(1.0, 0.0))
    assert [n.node.node_id for n in got] == brute_force_ranking(random_store.text_vecs, qt, 10)
    assert retriever.fusion.name == "rrf"  # the override did not stick


def test_null_vectors_never_hit_their_field(random_store: RandomStore) -> None:
    retriever = HybridRetriever(random_store.store, top_k=200, text_limit=200, image_limit=200,
                                fusion="weighted", weights=(1.0, 0.0))
    # Rows without a text_vec are found only through image_vec: with α=1 their fused score is 0.
    for n in retriever.retrieve("q0"):
        if n.node.node_id not in random_store.text_vecs:
            assert n.score == pytest.approx(0.0)
    text_only = HybridRetriever(random_store.store, top_k=200, text_limit=200, use_image=False).retrieve("q0")
    assert {n.node.node_id for n in text_only} == set(random_store.text_vecs)


def test_scalar_filters(random_store: RandomStore) -> None:
    retriever = HybridRetriever(random_store.store, top_k=50, filters={"doc_id": "doc3"})
    got = retriever.retrieve("q0")
    assert got
    assert {n.node.metadata["doc_id"] for n in got} == {"doc3"}
    got = retriever.retrieve_with("q0", filters='page == 2 and meta["i"] > 60')
    assert got
    assert all(n.node.metadata["page"] == 2 and n.node.metadata["i"] > 60 for n in got)
    assert random_store.store.count({"doc_id": ["doc1", "doc2"]}) == 24


def test_nodes_carry_scalars(random_store: RandomStore) -> None:
    got = HybridRetriever(random_store.store, top_k=5).retrieve("q3")
    for n in got:
        assert n.node.metadata["chunk_id"] == n.node.get_content().split()[-1]
        assert n.node.ref_doc_id == n.node.metadata["doc_id"]
        assert type(n.node).__name__ == ("ImageNode" if n.node.metadata["modality"] == "image" else "TextNode")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fusion": "max"}, "unknown fusion 'max'.*fusion='rrf'.*fusion='weighted'"),
        ({"fusion": "weighted", "weights": (0.7, 0.7)}, "sum to 1.*weights=\\(alpha, 1 - alpha\\)"),
        ({"fusion": "weighted", "weights": (1.2, -0.2)}, "in \\[0, 1\\]"),
        ({"rrf_k": 0}, "rrf_k"),
    ],
)
def test_bad_fusion_config_is_a_clear_error(random_store: RandomStore, kwargs: dict, match: str) -> None:
    with pytest.raises(FusionConfigError, match=match):
        HybridRetriever(random_store.store, **kwargs)


def test_bad_per_query_override_is_a_clear_error(random_store: RandomStore) -> None:
    retriever = HybridRetriever(random_store.store)
    with pytest.raises(FusionConfigError, match="unknown fusion"):
        retriever.retrieve_with("q0", fusion="sum")
    with pytest.raises(FusionConfigError, match="sum to 1"):
        retriever.retrieve_with("q0", fusion="weighted", weights=(0.2, 0.2))


def test_fusion_weights_map_to_fields() -> None:
    ranker = Fusion("weighted", weights=(0.3, 0.7)).ranker(["image_vec"])
    assert "0.7" in str(ranker.dict())
