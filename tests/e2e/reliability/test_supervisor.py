"""Supervision: status shows every server; kill -9 is restarted, logged and counted; a crash loop gives up."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from servers.process import free_port
from servers.supervisor import pid_alive, read_state
from tests.e2e.reliability.conftest import Stack, cli, write_stack


def test_status_shows_pid_port_device_uptime_restarts_health(cpu_stack: Stack, report: Callable[..., None]) -> None:
    rows = cpu_stack.status()
    sup_log = (cpu_stack.state_dir / "supervisor.log").read_text()
    assert [r["name"] for r in rows] == ["text", "images", "rerank"]
    for row in rows:
        assert row["health"] == "healthy", row
        assert row["device"] == "cpu"
        assert row["pid"]
        assert pid_alive(row["pid"])
        assert row["port"] == int(cpu_stack.urls[row["name"]].rsplit(":", 1)[1])
        assert row["uptime_s"] is not None
        assert row["uptime_s"] >= 0
        # Other tests of the suite kill servers: the count must match the restarts the supervisor logged.
        logged = len(re.findall(rf"^.* {row['name']}: .*; restart \d+/", sup_log, re.MULTILINE))
        assert row["restarts"] == logged, (row, logged)
        assert row["supervisor_pid"]
        assert pid_alive(row["supervisor_pid"])
    table = cli("status", "--config", str(cpu_stack.config), "--table")
    assert table.returncode == 0
    assert "uptime_s" in table.stdout
    assert "restarts" in table.stdout
    report("servers healthy in status", len(rows))


def test_kill9_is_restarted_logged_and_counted(cpu_stack: Stack, report: Callable[..., None]) -> None:
    before = cpu_stack.row("rerank")
    killed_at = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)
    after = cpu_stack.wait_healthy("rerank", timeout_s=60, not_pid=before["pid"])
    healthy_after_s = time.monotonic() - killed_at
    state = read_state(cpu_stack.state_dir)
    assert state is not None
    restarted = next(r for r in state["servers"] if r["name"] == "rerank")
    restarted_after_s = restarted["started_at"] - (time.time() - (time.monotonic() - killed_at))
    assert restarted_after_s < 10, f"new process started {restarted_after_s:.1f}s after the kill"
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"] == -9
    log = (cpu_stack.state_dir / "supervisor.log").read_text()
    assert "rerank: exited with status -9; restart 1/5" in log
    assert "=== rag-serve supervisor: start 2" in cpu_stack.log("rerank")
    # The new process serves requests.
    resp = requests.post(f"{cpu_stack.urls['rerank']}/rerank", json={"query": "q", "docs": ["a", "b"]},
                         headers={"Authorization": f"Bearer {cpu_stack.api_key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    report("kill -9 -> new process started after (s)", round(restarted_after_s, 2))
    report("kill -9 -> healthy again after (s)", round(healthy_after_s, 2))
    report("restarts counted in status", after["restarts"])


def test_crash_loop_gives_up_and_down_leaves_nothing(tmp_path: Path, report: Callable[..., None]) -> None:
    config = tmp_path / "stack.yaml"
    # max_batch_size 0 is refused when the settings are built: the server exits at once, every time.
    write_stack(config, {"bad": f"{{kind: embed, model: /nonexistent, device: cpu, port: {free_port()}, "
                                "max_batch_size: 0}"},
                tmp_path / "state", "{max_restarts: 2, backoff_initial_s: 0.2, backoff_max_s: 0.4}")
    up = cli("up", "--config", str(config), "--wait", "60", timeout=90)
    try:
        assert up.returncode == 1, up.stdout
        assert "bad: FAILED" in up.stdout
        assert "max_batch_size must be >= 1" in up.stdout
        row: dict[str, Any] = next(r for r in read_state(tmp_path / "state")["servers"])  # type: ignore[index]
        assert row["state"] == "failed"
        assert row["restarts"] == 2
        log = (tmp_path / "state" / "supervisor.log").read_text()
        assert "gave up after 2 restarts in a row (crash loop)" in log
        sup_pid = int((tmp_path / "state" / "supervisor.pid").read_text())
    finally:
        down = cli("down", "--config", str(config))
    assert down.returncode == 0, down.stdout
    assert not pid_alive(sup_pid)
    report("crash loop: restarts before giving up", row["restarts"])


def test_up_without_config_prints_examples(tmp_path: Path) -> None:
    out = cli("up", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert "cuda:2" in out.stdout
    assert "float16" in out.stdout
    assert "device: cpu" in out.stdout
    import yaml

    from rag_plugins.stack import parse_stack
    from servers.stack import EXAMPLE_CPU, EXAMPLE_GPU

    for example in (EXAMPLE_GPU, EXAMPLE_CPU):  # the printed examples are valid stack files
        assert parse_stack(yaml.safe_load(example), tmp_path / "x.yaml").entries
