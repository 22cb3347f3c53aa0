"""The per-stack supervisor: a daemon that keeps every server of a stack file running.

``rag-serve up`` starts it detached (``python -m servers.supervisor --config stack.yaml``, own session, log
in ``STATE_DIR/supervisor.log``); it starts one ``rag-serve`` child per entry and, once per tick:

* a child that exited is restarted after an exponential backoff (``backoff_initial_s`` doubling up to
  ``backoff_max_s``); a child that was healthy and then failed ``health_failures`` ``/health`` checks in a
  row, or was never healthy within ``start_timeout_s``, is killed (SIGKILL: it is wedged) and restarted;
* ``max_restarts`` restarts in a row without ``stable_s`` of health is a crash loop: the entry is marked
  ``failed``, logged, and left stopped (a broken model path would otherwise restart forever);
* the state of every child (pid, port, device, start time, restarts, health, last exit) is written
  atomically to ``STATE_DIR/supervisor.json`` for ``rag-serve status`` and ``down``.

On SIGTERM/SIGINT it SIGTERMs every child (each drains: servers/drain.py), waits ``stop_grace_s``, SIGKILLs
what is left, writes the final state and exits 0. Children share the supervisor's process group and get
``PR_SET_PDEATHSIG`` on Linux, so even a SIGKILLed supervisor leaves no server behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_plugins.stack import StackEntry, StackFile, load_stack_file
from servers.settings import SupervisorSettings, supervisor_settings

logger = logging.getLogger("rag-serve.supervisor")

STATE_FILE = "supervisor.json"
LOG_FILE = "supervisor.log"
TICK_S = 0.25


def server_argv(entry: StackEntry) -> list[str]:
    """``python -m servers.cli KIND --flag value ...`` of one stack entry."""
    args = [sys.executable, "-m", "servers.cli", entry.kind]
    for key, value in entry.options.items():
        flag = "--" + key.replace("_", "-")
        if key in {"api_keys", "api_key"}:
            continue  # passed in the environment (server_env): a command line is readable by every local user
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def server_env(entry: StackEntry) -> dict[str, str]:
    """The child's environment: ours, plus the entry's API keys as ``RAG_SERVE_API_KEYS``."""
    env = dict(os.environ)
    if entry.api_keys:
        env["RAG_SERVE_API_KEYS"] = ",".join(entry.api_keys)
    return env


def probe_health(url: str, timeout_s: float) -> str:
    """``healthy``, ``loading`` (503), ``http NNN`` or ``unreachable``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return "healthy" if resp.status == 200 else f"http {resp.status}"
    except urllib.error.HTTPError as exc:
        return "loading" if exc.code == 503 else f"http {exc.code}"
    except OSError:
        return "unreachable"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The supervisor's last state file, or None when there is none (or it is being replaced)."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# Loaded once in the parent: the pre-exec hook below must not load libraries in the forked child.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: SIGTERM it (so it drains) when the supervisor dies. Linux only.

    Only a C call here: code in a forked child of a threaded parent must not take locks.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


@dataclass
class Child:
    """What the supervisor knows about one server."""

    entry: StackEntry
    proc: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # starting | healthy | unhealthy | backoff | failed | stopped
    started_at: float | None = None
    started_mono: float = 0.0
    healthy_since: float | None = None
    ever_healthy: bool = False
    restarts: int = 0
    failures_in_a_row: int = 0
    bad_checks: int = 0
    next_start_at: float = 0.0
    last_exit: int | None = None
    last_reason: str | None = None
    health: str = "-"
    next_check_at: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "name": self.entry.name, "kind": self.entry.kind, "port": self.entry.port,
            "device": self.entry.device, "pid": self.proc.pid if self.proc and self.proc.poll() is None else None,
            "state": self.state, "health": self.health, "started_at": self.started_at,
            "restarts": self.restarts, "last_exit": self.last_exit, "last_reason": self.last_reason,
            "health_url": self.entry.health_url,
        }


class Supervisor:
    """Keeps the servers of one stack running (see the module doc).

    Args:
        stack: The parsed stack file.
        settings: Restart policy.
    """

    def __init__(self, stack: StackFile, settings: SupervisorSettings) -> None:
        self.stack = stack
        self.settings = settings
        self.state_dir = stack.state_dir
        self.children = [Child(e) for e in stack.entries]
        self.stopping = False
        self.started_at = time.time()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.children)), thread_name_prefix="health")

    # ------------------------------------------------------------------------------------------ control
    def request_stop(self, sig: int, frame: Any) -> None:
        logger.info("%s received: stopping every server", signal.Signals(sig).name)
        self.stopping = True

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; then stop every child. Returns the exit status (0)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        logger.info("supervisor %d for %s: %d server(s), %s", os.getpid(), self.stack.path, len(self.children),
                    self.settings)
        for child in self.children:
            self._start(child)
        self._write_state()
        while not self.stopping:
            self._tick()
            self._write_state()
            time.sleep(TICK_S)
        self._stop_all()
        self._write_state(final=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        logger.info("supervisor stopped; every server exited")
        return 0

    # --------------------------------------------------------------------------------------------- tick
    def _tick(self) -> None:
        now = time.monotonic()
        due: list[Child] = []
        for child in self.children:
            if child.state == "failed":
                continue
            if child.proc is None:
                if child.state == "backoff" and now >= child.next_start_at:
                    child.restarts += 1
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is not None:
                self._on_exit(child, code, f"exited with status {code}")
                continue
            if now >= child.next_check_at:
                due.append(child)
        # Health checks run concurrently, so one wedged server (timeout) does not delay the others.
        results = list(self._pool.map(lambda c: probe_health(c.entry.health_url, self.settings.health_timeout_s), due))
        for child, health in zip(due, results, strict=True):
            child.next_check_at = time.monotonic() + self.settings.health_interval_s
            self._on_health(child, health)

    def _on_health(self, child: Child, health: str) -> None:
        child.health = health
        now = time.monotonic()
        if health == "healthy":
            if child.state != "healthy":
                logger.info("%s: healthy (pid %d, port %d)", child.entry.name, child.proc.pid if child.proc else -1,
                            child.entry.port)
                child.healthy_since = now
            child.state, child.bad_checks, child.ever_healthy = "healthy", 0, True
            if child.failures_in_a_row and child.healthy_since and now - child.healthy_since >= self.settings.stable_s:
                logger.info("%s: stable for %.0fs; crash-loop counter reset", child.entry.name, self.settings.stable_s)
                child.failures_in_a_row = 0
            return
        if child.ever_healthy and child.state in ("healthy", "unhealthy"):
            child.bad_checks += 1
            child.state = "unhealthy"
            logger.warning("%s: /health %s (%d/%d)", child.entry.name, health, child.bad_checks,
                           self.settings.health_failures)
            if child.bad_checks >= self.settings.health_failures:
                self._kill_and_restart(child, f"stopped answering /health ({health})")
            return
        if now - child.started_mono > self.settings.start_timeout_s:
            self._kill_and_restart(child, f"not healthy {self.settings.start_timeout_s:.0f}s after start ({health})")

    def _kill_and_restart(self, child: Child, reason: str) -> None:
        assert child.proc is not None
        logger.error("%s: %s; killing pid %d", child.entry.name, reason, child.proc.pid)
        child.proc.kill()
        code = child.proc.wait()
        self._on_exit(child, code, reason)

    def _on_exit(self, child: Child, code: int, reason: str) -> None:
        child.proc = None
        child.last_exit, child.last_reason, child.health = code, reason, "-"
        child.healthy_since = None
        child.ever_healthy = False
        child.bad_checks = 0
        if self.stopping:
            child.state = "stopped"
            return
        child.failures_in_a_row += 1
        if child.failures_in_a_row > self.settings.max_restarts:
            child.state = "failed"
            logger.error(
                "%s: %s; gave up after %d restarts in a row (crash loop); see %s", child.entry.name, reason,
                self.settings.max_restarts, self.state_dir / f"{child.entry.name}.log",
            )
            return
        delay = self.settings.backoff_s(child.failures_in_a_row)
        child.state = "backoff"
        child.next_start_at = time.monotonic() + delay
        logger.warning("%s: %s; restart %d/%d in %.1fs", child.entry.name, reason, child.failures_in_a_row,
                       self.settings.max_restarts, delay)

    def _start(self, child: Child) -> None:
        log_path = self.state_dir / f"{child.entry.name}.log"
        with log_path.open("ab") as log:
            log.write(f"\n=== rag-serve supervisor: start {child.restarts + 1} at {time.ctime()} ===\n".encode())
            log.flush()
            child.proc = subprocess.Popen(
                server_argv(child.entry), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_env(child.entry), preexec_fn=_set_parent_death_signal,
            )
        child.state, child.health = "starting", "-"
        child.started_at = time.time()
        child.started_mono = time.monotonic()
        child.next_check_at = time.monotonic() + 0.5
        logger.info("%s: started %s on port %d, device %s (pid %d, start %d)", child.entry.name, child.entry.kind,
                    child.entry.port, child.entry.device, child.proc.pid, child.restarts + 1)

    def _stop_all(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            logger.info("%s: SIGTERM to pid %d (drain)", child.entry.name, child.proc.pid)
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace_s
        for child in running:
            assert child.proc is not None
            try:
                code = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                logger.info("%s: exited with status %d", child.entry.name, code)
            except subprocess.TimeoutExpired:
                logger.error("%s: still running after %.0fs; SIGKILL", child.entry.name, self.settings.stop_grace_s)
                child.proc.kill()
                code = child.proc.wait()
            child.last_exit = code
        for child in self.children:
            child.proc = None
            child.state = "stopped" if child.state != "failed" else "failed"
            child.health = "-"

    def _write_state(self, final: bool = False) -> None:
        data = {
            "supervisor_pid": None if final else os.getpid(),
            "state": "stopped" if final else ("stopping" if self.stopping else "running"),
            "config": str(self.stack.path),
            "started_at": self.started_at,
            "written_at": time.time(),
            "settings": self.settings.__dict__,
            "servers": [c.row() for c in self.children],
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_dir / STATE_FILE)  # atomic: readers never see half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servers.supervisor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="stack file")
    parser.add_argument("--settings-json", default="{}", help="supervisor settings chosen by `rag-serve up`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    stack = load_stack_file(args.config)
    settings = supervisor_settings(stack.supervisor, **json.loads(args.settings_json))
    return Supervisor(stack, settings).run()


if __name__ == "__main__":
    sys.exit(main())
