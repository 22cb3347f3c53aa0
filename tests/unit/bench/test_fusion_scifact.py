"""``bench.fusion_scifact`` without SciFact (a fresh clone): the table, the plot, the rerank reorder, the
in-place rule, and the fusion notebook's cells when SciFact is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fusion_scifact as fs

NOTEBOOK = fs.REPO_ROOT / "notebooks" / "02_fusion_ablation.ipynb"


def _rows() -> list[dict[str, object]]:
    """Hand-made rows of every kind the bench writes (not SciFact numbers: make test reads no SciFact)."""
    rows: list[dict[str, object]] = [
        {"method": "full alone (exact)", "kind": "field", "param": "full", "ndcg@10": 0.6, "recall@100": 0.9},
        {"method": "title alone (exact)", "kind": "field", "param": "title", "ndcg@10": 0.5, "recall@100": 0.8},
    ]
    rows += [{"method": f"RRF k={k}", "kind": "rrf", "param": k, "ndcg@10": 0.55 + k / 1000, "recall@100": 0.9}
             for k in fs.DEFAULT_RRF_KS]
    rows += [{"method": f"weighted α={a:g} (full) / {1 - a:g} (title)", "kind": "weighted", "param": a,
              "ndcg@10": 0.5 + a / 10, "recall@100": 0.85} for a in fs.DEFAULT_ALPHAS]
    return rows


def test_table_and_plot_of_the_bench_rows() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    rows = _rows()
    table = fs.markdown_table(rows)
    assert table.splitlines()[0].startswith("| method | nDCG@10 | Recall@100 |")
    assert "| full alone (exact) | 0.6000 | 0.9000 |" in table
    assert len(table.splitlines()) == 2 + len(rows)
    fig = fs.plot_rows(rows, "hand-made")
    assert len(fig.axes) == 4
    rrf_line = fig.axes[0].lines[0]
    assert list(rrf_line.get_xdata()) == list(fs.DEFAULT_RRF_KS)


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


def test_notebook_without_scifact_says_where_to_read_it_and_shows_no_numbers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The notebook's SciFact cells, run with no SciFact folder: Part 1 names the folder it reads in place and
    computes nothing (no numbers from any file of the repository)."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("IPython")
    missing = tmp_path / "missing"
    monkeypatch.setenv("RAG_SCIFACT_DIR", str(missing))
    shown: list[str] = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    start = next(i for i, source in enumerate(cells) if "fs.data_folder()" in source)
    namespace: dict[str, object] = {}
    for source in cells[start : start + 2]:  # no `stack` defined: without SciFact no server is called
        exec(compile(source, "fusion-cell", "exec"), namespace)
    assert namespace["live"] is False
    assert namespace["sci_rows"] == []
    (text,) = shown
    assert str(missing) in text
    assert "../shared/data/scifact" in text
    assert fs.FULL_COMMAND in text
    assert "|" not in text  # no table
