"""``bench.multimodal_set``: the generated set and the Recall@k / MRR functions the ablation notebook uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench.multimodal_set import (
    COLOURS,
    SHAPES,
    evaluate,
    generate_set,
    make_queries,
    markdown_table,
    recall_at_k,
    reciprocal_rank,
)


def test_generated_set_is_deterministic_and_labelled(tmp_path: Path) -> None:
    items = generate_set(tmp_path / "a", per_combo=2, size=64, seed=3)
    again = generate_set(tmp_path / "b", per_combo=2, size=64, seed=3)
    assert len(items) == len(COLOURS) * len(SHAPES) * 2
    assert [(i.id, i.caption) for i in items] == [(i.id, i.caption) for i in again]
    assert Image.open(items[0].path).size == (64, 64)
    assert items[0].path.read_bytes() == again[0].path.read_bytes()
    store_item = items[0].store_item()
    assert store_item.modality == "image"
    assert store_item.caption == items[0].caption
    assert "red" not in str(store_item.meta)  # labels never reach the store (or the reranker)
    queries = make_queries(items)
    assert len(queries) == len(COLOURS) * len(SHAPES)
    assert all(len(q.relevant) == 2 for q in queries)


def test_recall_and_mrr() -> None:
    assert recall_at_k(["a", "x", "b"], {"a", "b"}, 1) == 0.5
    assert recall_at_k(["a", "x", "b"], {"a", "b"}, 3) == 1.0
    assert reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"], {"a"}) == 0.0
    from bench.multimodal_set import SampleQuery

    queries = [SampleQuery("q1", frozenset({"a"})), SampleQuery("q2", frozenset({"b", "c"}))]
    got = evaluate({"q1": ["a", "b"], "q2": ["a", "b"]}, queries, ks=(1, 2))
    assert got == {"Recall@1": pytest.approx(0.5), "Recall@2": pytest.approx(0.75), "MRR": pytest.approx(0.75)}
    table = markdown_table([{"config": "x", "alpha": None, **got}])
    assert table.splitlines()[2] == "| x | 0.500 | 0.750 | 0.750 |"
