"""Start a real ``rag-serve`` process for a benchmark (a thin wrapper over :class:`servers.process.ServerProcess`)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from servers.process import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["REPO_ROOT", "free_port", "get_json", "rag_serve"]


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    """GET ``url`` and parse its JSON body (stdlib only)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read().decode("utf-8"))


@contextmanager
def rag_serve(
    kind: str,
    model: str | Path,
    *,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    startup_timeout_s: float = 600.0,
) -> Iterator[str]:
    """Run ``rag-serve KIND --model MODEL --device DEVICE`` and yield its base URL once healthy."""
    server = ServerProcess(kind, model, device=device, extra_args=list(extra_args), log_path=log_path, env=env)
    server.start(timeout_s=startup_timeout_s)
    try:
        yield server.base_url
    finally:
        server.stop(grace_s=30)
