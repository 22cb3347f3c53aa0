"""Both notebooks execute headless (nbclient, kernel = this Python) against real rag-serve processes.

The servers are the session fixtures shared with the other e2e tests (MiniLM text, MiniLM rerank, tiny
random-weight GME-Qwen2-VL); the notebooks attach to them through ``RAG_NOTEBOOK_*_URL`` instead of starting
their own (``bench.small_stack.SmallStack``), which keeps this test short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipykernel  # noqa: F401  (the kernel the notebooks run in; make test installs the notebooks extra)
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest

from tests.support.serve import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


@pytest.fixture
def notebook_servers(monkeypatch: pytest.MonkeyPatch, minilm_server: str, minilm_rerank_server: str,
                     mm_server_no_urls: str) -> None:
    monkeypatch.setenv("RAG_NOTEBOOK_TEXT_URL", minilm_server)
    monkeypatch.setenv("RAG_NOTEBOOK_IMAGE_URL", mm_server_no_urls)
    monkeypatch.setenv("RAG_NOTEBOOK_RERANK_URL", minilm_rerank_server)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def execute(name: str) -> Any:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) when a cell fails
    return nb


def outputs(nb: Any) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.usefixtures("notebook_servers")
def test_quickstart_notebook_runs(tmp_path: Path) -> None:
    nb = execute("01_quickstart.ipynb")
    outs = outputs(nb)
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) for o in outs)
    assert "'ImageNode'" in text  # the hybrid query returned image hits
    assert "'image-space dim': 64" in text


def _numbers(line: str) -> list[float]:
    """The metric cells of a Markdown table row (``–`` where a row has no value)."""
    return [float(v) for v in line.strip("| ").split(" | ")[1:] if v != "–"]


@pytest.mark.slow
@pytest.mark.usefixtures("notebook_servers")
def test_fusion_ablation_notebook_produces_table_and_plot() -> None:
    from bench.fusion_scifact import DEFAULT_ALPHAS, DEFAULT_RRF_KS, FULL_COMMAND, data_folder

    nb = execute("02_fusion_ablation.ipynb")
    outs = outputs(nb)
    assert not [o for o in outs if o.get("output_type") == "error"]
    tables = [o["data"]["text/markdown"] for o in outs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 2
    scifact, table = tables

    # Part 1: SciFact, title + full-text fields, a live subset read in place from ../shared/data/scifact (as in
    # CI); a checkout without it gets where to put it and no numbers.
    sci_rows = [line for line in scifact.splitlines() if line.startswith("| ") and "method" not in line]
    if data_folder().is_dir():
        assert "this run" in scifact
        assert len(sci_rows) == 2 + len(DEFAULT_RRF_KS) + len(DEFAULT_ALPHAS)
        for needle in ("| full alone (exact) |", "| title alone (exact) |", "| RRF k=60 |",
                       "| weighted α=0.7 (full) / 0.3 (title) |", "nDCG@10", "Recall@100", "nDCG@10 + rerank"):
            assert needle in scifact
        assert all(len(_numbers(line)) == 4 for line in sci_rows)
        assert all(0.0 <= v <= 1.0 for line in sci_rows for v in _numbers(line))
    else:
        assert "SciFact not found" in scifact
        assert FULL_COMMAND in scifact
        assert sci_rows == []

    # Part 2: the generated-set pipeline check.
    assert "not quality" in table
    for needle in ("Recall@1", "Recall@5", "Recall@10", "MRR", "| text-only |", "| text+image RRF |",
                   "| weighted α=0.5 |", "| text+image RRF + rerank |"):
        assert needle in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "config" not in line]
    assert len(rows) == 9
    for line in rows:  # every metric is a number in [0, 1] produced by the run
        values = _numbers(line)
        assert len(values) == 4
        assert all(0.0 <= v <= 1.0 for v in values)
    pngs = [o for o in outs if "image/png" in o.get("data", {})]
    # The sample strip and the ablation plot, and the SciFact plot when SciFact was read.
    assert len(pngs) >= (3 if data_folder().is_dir() else 2)
