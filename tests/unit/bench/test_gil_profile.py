"""The summary of a py-spy ``--gil`` recording (bench.gil_profile), on a hand-written raw file."""

from __future__ import annotations

from pathlib import Path

from bench.gil_profile import summarize_gil, thread_name


def test_thread_kinds_merge_pool_workers_and_keep_names() -> None:
    assert thread_name("thread (0x7f3a2c1b6640): model-bulk_0") == "model-bulk"
    assert thread_name("thread (20324): tokenize_1") == "tokenize"
    assert thread_name("thread (20324): MainThread") == "MainThread"


def test_shares_of_the_window_per_thread_and_their_top_frames(tmp_path: Path) -> None:
    raw = tmp_path / "gil.txt"
    raw.write_text(
        "thread (1): MainThread;run (asyncio/runners.py:118);Handle._run (asyncio/events.py:84) 30\n"
        "thread (2): tokenize_0;_worker (concurrent/futures/thread.py:83);tokenize (servers/x.py:10) 15\n"
        "thread (3): tokenize_1;_worker (concurrent/futures/thread.py:83);tokenize (servers/x.py:10) 5\n"
        "thread (4): model-bulk_0;run (servers/y.py:5);right_padded (servers/backends/accelerated.py:160) 40\n"
        "thread (4): model-bulk_0;run (servers/y.py:5);forward (torch/nn/module.py:1) 10\n"
        "a line that is not a sample\n"
    )
    summary = summarize_gil(raw, seconds=2.0, rate=100)
    assert summary["samples"] == 100
    assert summary["gil_held_share"] == 0.5  # 100 samples of 200 ticks
    threads = summary["threads"]
    assert list(threads) == ["model-bulk", "MainThread", "tokenize"]  # most GIL first
    assert threads["model-bulk"]["share"] == 0.25
    assert threads["model-bulk"]["top"] == [["right_padded (accelerated.py)", 0.8], ["forward (module.py)", 0.2]]
    assert threads["tokenize"] == {"share": 0.1, "top": [["tokenize (x.py)", 1.0]]}
