"""``bench.milvus_hybrid --smoke``: the benchmark runs end to end on Milvus Lite (file URI) and is self-consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.milvus_hybrid import exact_rrf, main, make_dataset, recall_at_k


def test_smoke_run_writes_results_and_flat_matches_numpy_rrf(tmp_path: Path) -> None:
    out = tmp_path / "milvus_hybrid"
    report = main(["--smoke", "--targets", "file", "--queries", "10", "--out", str(out),
                   "--workdir", str(tmp_path)])
    (result,) = report["results"]
    assert result["target"] == "file"
    assert result["n"] == 2000
    assert result["rows_counted"] == 2000
    assert result["hnsw_ingest_rows_s"] > 0
    assert result["flat_ingest_rows_s"] > 0
    assert 0 < result["hnsw_p50_ms"] <= result["hnsw_p95_ms"]
    # FLAT is exact: its fused ranking is the RRF of the exact per-field rankings, computed here in numpy.
    assert result["flat_equals_numpy_rrf"] == 1.0
    assert result["recall_at_k_hnsw_vs_flat"] >= 0.9
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"][0]["rows_counted"] == 2000
    md = out.with_suffix(".md").read_text()
    assert "| file | 2,000 |" in md
    # The store's default (in-process copy) was searched, reopened from its side files, and is exact here.
    assert result["local_recall_vs_exact"] == 1.0
    assert result["extra"]["local_loaded_from_side_files"] is True
    assert 0 < result["local_p50_ms"] <= result["local_p95_ms"]


def test_memory_target_runs_without_milvus_and_is_exact_at_smoke_size() -> None:
    report = main(["--smoke", "--targets", "memory", "--queries", "10", "--clients", "2", "--out", ""])
    (result,) = report["results"]
    assert result["target"] == "memory"
    assert result["rows_counted"] == 2000
    assert result["local_recall_vs_exact"] == 1.0  # below the IVF threshold: exact (IVF: test_local_ann.py)
    assert result["local_qps"] > 0


def test_recall_and_exact_rrf_helpers() -> None:
    assert recall_at_k([["a", "b", "c"]], [["c", "d", "a"]], 3) == pytest.approx(2 / 3)
    data = make_dataset(50, 8, 12, n_queries=3, noise=0.1, seed=1)
    fused = exact_rrf(data, top_k=5, candidates=10, rrf_k=60)
    assert [len(f) for f in fused] == [5, 5, 5]
    with pytest.raises(ValueError, match="query-noise"):
        make_dataset(10, 4, 4, n_queries=1, noise=0.0, seed=0)
