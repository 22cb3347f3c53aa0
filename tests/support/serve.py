"""Start real ``rag-serve`` processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers.process import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
__all__ = ["REPO_ROOT", "free_port", "rag_serve"]


@contextmanager
def rag_serve(kind: str, model: Path | str | None, *extra: str, env: dict[str, str] | None = None,
              startup_timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``rag-serve KIND --model MODEL --device cpu`` on a free port; yield its base URL once /health is 200."""
    log_dir = Path(os.environ.get("PYTEST_SERVER_LOG_DIR", "/tmp"))
    server = ServerProcess(kind, model, device="cpu", extra_args=list(extra), env=env)
    server.log_path = log_dir / f"rag-serve-{kind}-{server.port}.log"
    server.start(timeout_s=startup_timeout_s)
    try:
        yield server.base_url
    finally:
        server.stop(grace_s=20)
