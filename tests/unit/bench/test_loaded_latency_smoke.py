"""``bench.loaded_latency``: a short run on the CPU starts real servers, probes them under load and reads the
per-lane series of their /metrics (every probe query is counted in the priority lane's series)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.embed_throughput import PROBE_WARM_CONNECTIONS
from bench.loaded_latency import main

RPS, SECONDS = 20.0, 2.0


def test_short_run_writes_a_row_per_variant_with_the_queries_in_the_priority_series(tmp_path: Path) -> None:
    out = tmp_path / "loaded_latency.json"
    assert main(["--repeats", "1", "--variant=", "--variant=--no-gc-freeze", "--corpus-size", "128",
                 "--max-tokens", "64", "--concurrency", "4", "--client-batch", "16", "--rps", str(RPS),
                 "--seconds", str(SECONDS), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == ["(defaults)", "--no-gc-freeze"]
    queries = int(RPS * SECONDS)  # (16-text bulk requests are over --priority-max-items 8: the bulk lane)
    for run in saved["runs"]:
        assert run["count"] == queries
        assert run["bulk_errors"] == 0
        assert run["bulk_tokens_per_s_during_probe"] > 0
        tails = run["stage_tails"]
        # Each probe query (and each connection-opening one) is one priority-lane request, tokenized and
        # forwarded in that lane.
        sent = queries + PROBE_WARM_CONNECTIONS
        assert tails["request[/embed/priority]"]["n"] == sent
        assert tails["stage[queue_and_forward/priority]"]["n"] == sent
        assert tails["stage[tokenize/priority]"]["n"] == sent
        assert tails["request[/embed/bulk]"]["n"] > 0  # the load ran meanwhile, in the other lane
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    table = out.with_suffix(".md").read_text()
    assert "| (defaults) |" in table
    assert "| --no-gc-freeze |" in table
