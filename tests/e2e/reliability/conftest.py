"""Reliability suite (issue 11): a supervised CPU stack of three servers, shared by the tests of this folder.

The stack is what a user starts: ``rag-serve up --config stack.yaml`` with MiniLM (text), a tiny random GME
(multimodal) and a tiny random Qwen3-Reranker, all behind one API key. Every test records what it checked
through the ``report`` fixture; the lines are printed in the terminal summary (with or without ``-s``) and
kept as JUnit properties.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servers.process import free_ports
from servers.supervisor import pid_alive
from tests.e2e.mm_fixtures import MM_MAX_PIXELS, MM_MIN_PIXELS
from tests.support.serve import REPO_ROOT

API_KEY = "rel-suite-key-7c1e9a"
_REPORT: list[str] = []


@pytest.fixture
def report(request: pytest.FixtureRequest, record_property: Callable[[str, Any], None]) -> Callable[..., None]:
    """``report("what", value)``: a line in the suite's summary and a JUnit property of the test."""

    def add(what: str, value: Any) -> None:
        line = f"{request.node.name}: {what} = {value}"
        _REPORT.append(line)
        print(line, file=sys.stderr)
        record_property(what, value)

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("reliability suite: what was checked")
        for line in _REPORT:
            terminalreporter.write_line(line)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servers.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Stack:
    """A running supervised stack: its file, state dir and one base URL per entry name."""

    config: Path
    state_dir: Path
    urls: dict[str, str]
    api_key: str

    def status(self) -> list[dict[str, Any]]:
        out = cli("status", "--config", str(self.config), timeout=60)
        return list(json.loads(out.stdout))

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.status() if r["name"] == name)

    def wait_healthy(self, name: str, timeout_s: float, not_pid: int | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            row = self.row(name)
            if row["health"] == "healthy" and row["pid"] is not None and row["pid"] != not_pid:
                return row
            assert time.monotonic() < deadline, f"{name} not healthy again within {timeout_s}s: {row}"
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.state_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")


def write_stack(path: Path, servers: dict[str, str], state_dir: Path, supervisor: str) -> None:
    lines = [f"state_dir: {state_dir}", f"supervisor: {supervisor}", "servers:"]
    lines += [f"  {name}: {spec}" for name, spec in servers.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def cpu_stack(
    tmp_path_factory: pytest.TempPathFactory, minilm: Path, tiny_gme: Path, tiny_qwen3_causal_lm: Path
) -> Iterator[Stack]:
    """``rag-serve up`` of MiniLM text + tiny GME multimodal + tiny Qwen3 reranker on CPU, one API key."""
    base = tmp_path_factory.mktemp("rel-stack")
    ports = dict(zip(("text", "images", "rerank"), free_ports(3), strict=True))
    common = f"device: cpu, api_key: {API_KEY}, drain_grace_s: 10"
    write_stack(
        base / "stack.yaml",
        {
            "text": f"{{kind: embed, model: '{minilm}', port: {ports['text']}, {common}, max_batch_tokens: 4096, "
                    "served_model_name: all-MiniLM-L6-v2}",
            "images": f"{{kind: mm-embed, model: '{tiny_gme}', port: {ports['images']}, {common}, "
                      f"min_pixels: {MM_MIN_PIXELS}, max_pixels: {MM_MAX_PIXELS}, max_batch_tokens: 4096}}",
            "rerank": f"{{kind: rerank, model: '{tiny_qwen3_causal_lm}', port: {ports['rerank']}, {common}, "
                      "max_length: 128, max_batch_tokens: 512}",
        },
        base / "state",
        "{backoff_initial_s: 0.5, health_interval_s: 0.5, health_failures: 3, stable_s: 5, stop_grace_s: 20}",
    )
    up = cli("up", "--config", str(base / "stack.yaml"), "--wait", "240", timeout=300)
    stack = Stack(base / "stack.yaml", base / "state",
                  {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}, API_KEY)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        state = json.loads((base / "state" / "supervisor.json").read_text())
        pids = [r["pid"] for r in state["servers"] if r.get("pid")] + [state["supervisor_pid"]]
        down = cli("down", "--config", str(base / "stack.yaml"), timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        alive = [p for p in pids if p and pid_alive(int(p))]
        assert not alive, f"processes left after down: {alive}"
        _REPORT.append(f"cpu_stack teardown: down left no process (checked pids {pids})")
