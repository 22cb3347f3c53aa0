"""``bench.fusion_scifact`` without SciFact (a fresh clone): the recorded full run, the table, the plot, the
rerank reorder, the in-place rule, and the fusion notebook's fallback cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fusion_scifact as fs

NOTEBOOK = fs.REPO_ROOT / "notebooks" / "02_fusion_ablation.ipynb"


def test_recorded_results_table_and_plot() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    report = fs.recorded_results()
    assert report["documents"] == 5183
    assert report["queries"] == 300
    rows = [r for r in report["results"] if not str(r["method"]).startswith("store:")]
    table = fs.markdown_table(rows)
    assert table.splitlines()[0].startswith("| method | nDCG@10 | Recall@100 |")
    assert "| full alone (exact) | 0.6451 | 0.9250 |" in table
    assert len(table.splitlines()) == 2 + len(rows)
    fig = fs.plot_rows(rows, "recorded")
    assert len(fig.axes) == 4
    rrf_line = fig.axes[0].lines[0]
    assert list(rrf_line.get_xdata()) == sorted(int(r["method"].split("=")[1]) for r in rows
                                                if r["method"].startswith("RRF"))


def test_markdown_table_marks_missing_rerank_cells() -> None:
    rows = [{"method": "a", "ndcg@10": 0.5, "recall@100": 0.9, "ndcg@10 reranked": 0.6, "recall@100 reranked": 0.9},
            {"method": "store: b", "ndcg@10": 0.4, "recall@100": 0.8}]
    lines = fs.markdown_table(rows).splitlines()
    assert lines[0] == "| method | nDCG@10 | Recall@100 | nDCG@10 + rerank | Recall@100 + rerank |"
    assert lines[2] == "| a | 0.5000 | 0.9000 | 0.6000 | 0.9000 |"
    assert lines[3] == "| store: b | 0.4000 | 0.8000 | – | – |"


def test_reranked_run_reorders_only_the_head() -> None:
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    scores = {"q": {"a": 0.1, "b": 0.3, "c": 0.2}}
    out = fs.reranked_run(run, scores, depth=3)
    assert [d for d, _ in fs.best_first(out["q"])] == ["b", "c", "a", "d"]


def test_data_inside_the_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never copy it into the repository"):
        fs.check_outside_repo(fs.REPO_ROOT / "data" / "scifact")
    assert fs.check_outside_repo(tmp_path) == tmp_path.resolve()


def test_notebook_falls_back_to_the_recorded_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The notebook's SciFact cell, run with no SciFact folder: it shows the recorded full run and says so."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("IPython")
    monkeypatch.setenv("RAG_SCIFACT_DIR", str(tmp_path / "missing"))
    shown: list[str] = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    start = next(i for i, source in enumerate(cells) if "fs.data_folder()" in source)
    namespace: dict[str, object] = {}
    for source in cells[start : start + 2]:  # no `stack` defined: the fallback needs no server
        exec(compile(source, "fusion-cell", "exec"), namespace)
    assert namespace["live"] is False
    assert len(shown) == 1
    text = shown[0]
    assert "recorded numbers of the full bench command" in text
    assert fs.FULL_COMMAND in text
    assert "bench/results/fusion_scifact.json" in text
    assert "| full alone (exact) | 0.6451 | 0.9250 |" in text
    assert "store:" not in text
