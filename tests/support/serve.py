"""Start real ``rag-serve`` processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def rag_serve(kind: str, model: Path | str, *extra: str, env: dict[str, str] | None = None,
              startup_timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``rag-serve KIND --model MODEL`` on a free port; yield its base URL once /health is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "servers.cli", kind, "--model", str(model), "--device", "cpu",
           "--host", "127.0.0.1", "--port", str(port), *extra]
    log_path = Path(os.environ.get("PYTEST_SERVER_LOG_DIR", "/tmp")) / f"rag-serve-{kind}-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rag-serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(base + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"rag-serve not healthy after {startup_timeout_s}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
