"""``ServerProcess``: run one ``rag-serve`` server as a child process (demos, notebooks, benchmarks).

    with ServerProcess("embed", model="Qwen/Qwen3-Embedding-0.6B", device="cuda:0") as server:
        client = EmbeddingClient(server.base_url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (all held open while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


class ServerProcess:
    """A ``python -m servers.cli KIND`` child process, stopped with SIGTERM (then SIGKILL) on exit.

    Args:
        kind: ``embed``, ``rerank``, ``mm-embed`` or ``search``.
        model: Model directory or Hub ID (None for ``search``, which holds no model).
        device: ``cpu``, ``cuda:N`` or ``auto`` (model servers only).
        port: Port to bind (a free one when None).
        host: Address to bind.
        extra_args: More ``rag-serve`` flags, e.g. ``("--max-batch-tokens", "8192")``.
        log_path: Where the server's output goes (a temp file when None).
        env: Extra environment variables for the server process.
    """

    def __init__(
        self,
        kind: str,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] | list[str] = (),
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.model = None if model is None else str(model)
        self.device = device
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"rag-serve-{kind}-{self.port}.log"
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id once started (profilers attach to it)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout_s: float = 600.0) -> str:
        """Start the process and wait until ``/health`` is 200; return the base URL.

        Raises:
            RuntimeError: the process exited, or was not healthy within ``timeout_s`` (log tail included).
        """
        placement = [] if self.model is None else ["--model", self.model, "--device", self.device]
        cmd = [sys.executable, "-m", "servers.cli", self.kind, *placement,
               "--host", self.host, "--port", str(self.port), *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        repo_root = Path(__file__).resolve().parents[1]
        python_path = os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path, **self.env}
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rag-serve {self.kind} exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._healthy():
                return self.base_url
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rag-serve {self.kind} not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
