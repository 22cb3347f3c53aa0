"""The BEIR metric functions of ``bench.beir_eval`` on hand-made judgements (pytrec_eval definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.beir_eval import evaluate, exact_search, ndcg_at_k, ranked_doc_ids, recall_at_k


def test_perfect_ranking_scores_one() -> None:
    qrels = {"d1": 1, "d2": 1}
    scores = {"d1": 0.9, "d2": 0.8, "d3": 0.1}
    assert ndcg_at_k(qrels, scores, 10) == pytest.approx(1.0)
    assert recall_at_k(qrels, scores, 100) == pytest.approx(1.0)


def test_single_relevant_at_rank_two() -> None:
    assert ndcg_at_k({"d2": 1}, {"d1": 0.9, "d2": 0.8}, 10) == pytest.approx(1 / math.log2(3))


def test_graded_relevance_uses_linear_gain() -> None:
    qrels = {"a": 2, "b": 1}
    scores = {"b": 0.9, "a": 0.8}
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(qrels, scores, 10) == pytest.approx(expected)


def test_cutoff_ignores_hits_below_k() -> None:
    scores = {f"x{i}": 1 - i / 100 for i in range(10)} | {"rel": 0.0}
    assert ndcg_at_k({"rel": 1}, scores, 10) == 0.0
    assert ndcg_at_k({"rel": 1}, scores, 11) == pytest.approx(1 / math.log2(12))
    assert recall_at_k({"rel": 1}, scores, 10) == 0.0


def test_ideal_dcg_counts_relevant_documents_never_retrieved() -> None:
    # Two relevant, only one retrieved at rank 1: DCG 1, IDCG 1 + 1/log2(3).
    assert ndcg_at_k({"a": 1, "missing": 1}, {"a": 0.5}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert recall_at_k({"a": 1, "missing": 1}, {"a": 0.5}, 100) == pytest.approx(0.5)


def test_zero_judgements_are_not_relevant() -> None:
    qrels = {"a": 0, "b": 1}
    scores = {"a": 0.9, "b": 0.8}
    assert ndcg_at_k(qrels, scores, 10) == pytest.approx(1 / math.log2(3))
    assert recall_at_k(qrels, scores, 100) == pytest.approx(1.0)
    assert ndcg_at_k({"a": 0}, scores, 10) == 0.0
    assert recall_at_k({"a": 0}, scores, 100) == 0.0


def test_ties_break_by_document_id_descending_like_trec_eval() -> None:
    scores = {"a": 0.5, "c": 0.5, "b": 0.5, "z": 0.9}
    assert ranked_doc_ids(scores) == ["z", "c", "b", "a"]
    assert ndcg_at_k({"a": 1}, {"a": 0.5, "b": 0.5}, 10) == pytest.approx(1 / math.log2(3))


def test_evaluate_averages_over_queries_in_both_qrels_and_run() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 1.0, "d2": 0.5}, "q2": {"d1": 1.0, "d2": 0.5}, "q9": {"d1": 1.0}}
    result = evaluate(qrels, run, ks_ndcg=(10,), ks_recall=(1, 100))
    assert result["queries"] == 2
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@100"] == pytest.approx(1.0)
    assert set(result["per_query"]) == {"q1", "q2"}


def test_exact_search_is_cosine_top_k_and_drops_identical_ids() -> None:
    docs = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    queries = np.array([[2.0, 0.1]], dtype=np.float32)
    run = exact_search(queries, docs, ["q"], ["d0", "d1", "d2"], top_k=2, ignore_identical_ids=True)
    assert list(ranked_doc_ids(run["q"])) == ["d0", "d2"]
    assert run["q"]["d0"] == pytest.approx(2.0 / math.hypot(2.0, 0.1))
    # A document that shares the query's id is dropped, and the list is still top_k long.
    run = exact_search(queries, docs, ["d0"], ["d0", "d1", "d2"], top_k=2, ignore_identical_ids=True)
    assert list(ranked_doc_ids(run["d0"])) == ["d2", "d1"]
    run = exact_search(queries, docs, ["d0"], ["d0", "d1", "d2"], top_k=2, ignore_identical_ids=False)
    assert list(ranked_doc_ids(run["d0"])) == ["d0", "d2"]
