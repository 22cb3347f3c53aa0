"""The `make demo` job and the `rag-serve up/status/down` stack commands, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import requests

from servers.process import free_port
from tests.support.serve import REPO_ROOT


def test_demo_prints_ranked_hits_and_exits_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [sys.executable, "-m", "demo.run", "--query", "Which GPUs cannot use bfloat16?",
         "--query", "How long should bread bake?", "--milvus-uri", str(db)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    first_hits = [line.split()[2] for line in out.splitlines() if line.strip().startswith("1. ")]
    assert first_hits == ["01-pascal-cards.md", "12-cooking.md"], out
    assert "servers stopped" in out
    assert "Unclosed" not in proc.stderr
    # The vectors went to the Milvus Lite file: one row per corpus document, each with a text vector.
    assert "12 rows with a text vector" in out
    # The whole job ran through rag-serve search: per-stage timings (embed, search, rerank) per query, and
    # rerank scores beside the fused scores.
    assert "rag-serve search healthy" in out
    timings = re.findall(r"\[embed (\d+\.\d) ms  search (\d+\.\d) ms  rerank (\d+\.\d) ms\]", out)
    assert len(timings) == 2, out
    assert all(float(v) > 0 for row in timings for v in row[::2]), timings  # embed and rerank really ran
    first_lines = [line for line in out.splitlines() if line.strip().startswith("1. ")]
    assert all("(fused " in line for line in first_lines), first_lines
    assert all(float(line.split()[1]) > 0.5 for line in first_lines), first_lines  # MiniLM cosine of the best hit
    from rag_plugins.milvus.settings import MilvusStoreSettings
    from rag_plugins.milvus.store import MultiVectorMilvusStore

    store = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=str(db), collection_name="rag_demo"), create=False)
    try:
        assert store.count("has_text_vec == true") == 12
        assert store.text_dim == 384
    finally:
        store.close()


def test_stack_up_status_down(tmp_path: Path, minilm: Path) -> None:
    port = free_port()
    config = tmp_path / "stack.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "servers:\n"
        f"  text: {{kind: embed, model: '{minilm}', device: cpu, port: {port}, max_batch_tokens: 4096}}\n"
    )
    cli = [sys.executable, "-m", "servers.cli"]
    try:
        up = subprocess.run([*cli, "up", "--config", str(config), "--wait", "120"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        info = requests.get(f"http://127.0.0.1:{port}/info", timeout=5).json()
        assert info["max_batch_tokens"] == 4096
        status = subprocess.run([*cli, "status", "--config", str(config)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60)
        rows = json.loads(status.stdout)
        assert rows[0]["process"] == "running"
        assert rows[0]["health"] == "healthy"
        logs = subprocess.run([*cli, "logs", "text", "--config", str(config)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
        assert "warm-up forward passed" in logs.stdout
    finally:
        subprocess.run([*cli, "down", "--config", str(config)], cwd=REPO_ROOT, capture_output=True, timeout=60)
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        reachable = True
    except requests.ConnectionError:
        reachable = False
    assert not reachable
