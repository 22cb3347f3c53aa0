"""The benchmarks' reader of /metrics stage histograms: means per series and counts over tail thresholds."""

from __future__ import annotations

from bench.embed_throughput import parse_stage_series, stage_means_ms, stage_tails
from servers.metrics import ServerMetrics


def _scrape(metrics: ServerMetrics) -> dict[str, float]:
    return parse_stage_series(metrics.render().decode())


def test_means_and_tails_between_two_scrapes_per_stage_lane_and_gc_generation() -> None:
    metrics = ServerMetrics()
    metrics.stage_seconds.labels("queue_and_forward", "priority").observe(0.5)  # before the window
    before = _scrape(metrics)
    for seconds in (0.004, 0.006, 0.030, 0.120):
        metrics.stage_seconds.labels("queue_and_forward", "priority").observe(seconds)
    metrics.stage_seconds.labels("tokenize", "bulk").observe(0.002)
    metrics.request_seconds.labels("/embed", "priority").observe(0.060)
    metrics.forward_seconds.labels("bulk").observe(0.040)
    metrics.gc_pause_seconds.labels("2").observe(0.2)
    after = _scrape(metrics)

    means = stage_means_ms(before, after)
    assert means["stage[queue_and_forward/priority]"] == 40.0  # (4 + 6 + 30 + 120) / 4, the 500 ms excluded
    assert means["stage[tokenize/bulk]"] == 2.0
    assert means["request[/embed/priority]"] == 60.0
    assert means["gc_pause[2]"] == 200.0

    tails = stage_tails(before, after)
    assert tails["stage[queue_and_forward/priority]"] == {"n": 4, ">10ms": 2, ">25ms": 2, ">50ms": 1, ">100ms": 1}
    assert tails["stage[tokenize/bulk]"] == {"n": 1, ">10ms": 0, ">25ms": 0, ">50ms": 0, ">100ms": 0}
    assert (tails["forward[bulk]"][">25ms"], tails["forward[bulk]"][">50ms"]) == (1, 0)
    assert tails["gc_pause[2]"] == {"n": 1, ">10ms": 1, ">25ms": 1, ">50ms": 1, ">100ms": 1}
    assert "stage[queue_and_forward/bulk]" not in tails  # no observation in the window


def test_label_order_does_not_matter() -> None:
    text = ('rag_stage_duration_seconds_count{stage="tokenize",lane="priority"} 3.0\n'
            'rag_stage_duration_seconds_bucket{le="0.01",lane="priority",stage="tokenize"} 2.0\n'
            'rag_other_total{lane="x"} 1.0\n')
    assert parse_stage_series(text) == {
        "rag_stage_duration_seconds_count[tokenize/priority]": 3.0,
        "rag_stage_duration_seconds_bucket[tokenize/priority]@0.01": 2.0,
    }
