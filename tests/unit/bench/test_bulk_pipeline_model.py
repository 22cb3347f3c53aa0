"""bench.bulk_pipeline_model: the real scheduler against a modelled device, padded and packed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.bulk_pipeline_model import main


def _run(tmp_path: Path, name: str, *flags: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    assert main(["--corpus-size", "640", "--rate", "4000000", "--concurrency", "16", *flags, "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text().startswith("# Bulk lane against a modelled device")
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    return rows[0]


def test_padded_batches_pay_padding_and_packed_ones_none(tmp_path: Path) -> None:
    padded = _run(tmp_path, "padded")
    packed = _run(tmp_path, "packed", "--packed")
    assert 0.0 < padded["padding_share"] < 0.3
    assert packed["padding_share"] == 0.0
    # The scheduler packs too (the modelled device alone would report no padding either way): a packed
    # budget counts tokens, not items x longest, so the same load needs fewer, fuller batches.
    assert packed["batches"] < padded["batches"]
    assert packed["mean_items"] > padded["mean_items"]
    for row in (padded, packed):
        assert 0.0 < row["share_of_rate"] <= 1.01
        assert row["batches"] >= 10  # ~170k tokens in batches of at most 16,384


def test_scenarios_are_rows_of_one_table(tmp_path: Path) -> None:
    out = tmp_path / "both.json"
    assert main(["--corpus-size", "320", "--rate", "4000000", "--scenario=", "--scenario=--packed", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["scenario"], r["packed"]) for r in rows] == [("", False), ("--packed", True)]
    table = out.with_suffix(".md").read_text()
    assert "| `(base)` |" in table
    assert "| `--packed` |" in table
