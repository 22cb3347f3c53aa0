"""bench.tokenize_gil: both ways give the same ids, and the table and JSON carry every row."""

from __future__ import annotations

import json
from pathlib import Path

from bench.tokenize_gil import main


def test_rows_for_both_ways_with_consistent_times(tmp_path: Path) -> None:
    """The run itself checks that both ways give the same ids (``measure`` asserts it before timing)."""
    out = tmp_path / "tok.json"
    assert main(["--texts", "8", "--words", "40", "--seconds", "0.05", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["texts"] == 8
    assert data["tokens"] > 8 * 40
    ways = [row["way"] for row in data["rows"]]
    assert ways == ["Hugging Face call", "encode_ids (Rust encode_batch_fast)"]
    for row in data["rows"]:
        assert row["repeats"] >= 5
        assert row["ms_per_batch"] > 0
        assert row["rust_ms_per_batch"] > 0
    assert "| Qwen3 | encode_ids (Rust encode_batch_fast) |" in out.with_suffix(".md").read_text()
