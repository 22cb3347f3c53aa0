"""``rag-serve up|status|logs|down``: a stack of servers, one process per entry, each on its own device.

stack.yaml::

    state_dir: .rag-serve          # pid and log files (default: .rag-serve next to the config)
    servers:
      text:   {kind: embed,  model: Qwen/Qwen3-Embedding-0.6B, device: cuda:0, port: 8001}
      rerank: {kind: rerank, model: Qwen/Qwen3-Reranker-0.6B,  device: cuda:1, port: 8002}

Keys of an entry are the ``rag-serve`` flags with underscores (``max_batch_tokens: 8192``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers.settings import SERVER_KINDS


@dataclass(frozen=True)
class StackEntry:
    name: str
    kind: str
    options: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.options.get("port", 8000))

    @property
    def host(self) -> str:
        return str(self.options.get("host", "127.0.0.1"))

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "servers.cli", self.kind]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            elif key in {"api_keys", "api_key"}:
                for k in value if isinstance(value, list) else [value]:
                    args += ["--api-key", str(k)]
            else:
                args += [flag, str(value)]
        return args


def load_stack(path: Path) -> tuple[Path, list[StackEntry]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    servers = data.get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ValueError(f"{path}: needs a 'servers:' mapping of name -> {{kind, model, device, port, ...}}")
    entries = []
    for name, spec in servers.items():
        spec = dict(spec or {})
        kind = spec.pop("kind", None)
        if kind not in SERVER_KINDS:
            raise ValueError(f"{path}: server {name!r} needs kind: one of {', '.join(SERVER_KINDS)}")
        entries.append(StackEntry(str(name), str(kind), spec))
    state_dir = Path(data.get("state_dir") or path.parent / ".rag-serve")
    return state_dir, entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child (a zombie still answers kill(pid, 0))."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def _health(entry: StackEntry) -> str:
    try:
        with urllib.request.urlopen(f"http://{entry.host}:{entry.port}/health", timeout=2) as resp:
            return "healthy" if resp.status == 200 else f"http {resp.status}"
    except urllib.error.HTTPError as exc:
        return "loading" if exc.code == 503 else f"http {exc.code}"
    except OSError:
        return "unreachable"


def up(state_dir: Path, entries: list[StackEntry], wait_s: float) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        pid_file = state_dir / f"{entry.name}.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"{entry.name}: already running (pid {pid_file.read_text().strip()})")
            continue
        log = (state_dir / f"{entry.name}.log").open("ab")
        proc = subprocess.Popen(entry.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        print(f"{entry.name}: started {entry.kind} on port {entry.port} (pid {proc.pid})")
    deadline = time.monotonic() + wait_s
    pending = list(entries)
    failed: list[StackEntry] = []
    while pending and time.monotonic() < deadline:
        still = []
        for e in pending:
            pid = int((state_dir / f"{e.name}.pid").read_text())
            if not _alive(pid) or _reaped(pid):
                failed.append(e)
            elif _health(e) != "healthy":
                still.append(e)
        pending = still
        if pending:
            time.sleep(0.5)
    for entry in failed:
        tail = (state_dir / f"{entry.name}.log").read_text(encoding="utf-8", errors="replace")[-1500:]
        print(f"{entry.name}: exited during start-up:\n{tail}")
    for entry in pending:
        print(f"{entry.name}: not healthy after {wait_s:.0f}s; see `rag-serve logs {entry.name}`")
    return 1 if pending or failed else 0


def status(state_dir: Path, entries: list[StackEntry]) -> int:
    rows = []
    for entry in entries:
        pid_file = state_dir / f"{entry.name}.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        running = pid is not None and _alive(pid)
        rows.append({"name": entry.name, "kind": entry.kind, "port": entry.port, "pid": pid,
                     "process": "running" if running else "stopped",
                     "health": _health(entry) if running else "-"})
    print(json.dumps(rows, indent=2))
    return 0


def down(state_dir: Path, entries: list[StackEntry], grace_s: float = 15.0) -> int:
    for entry in entries:
        pid_file = state_dir / f"{entry.name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        print(f"{entry.name}: stopped")
    return 0


def add_stack_commands(sub: Any) -> None:
    for name, text in (("up", "start every server of a stack"), ("status", "show the stack's processes"),
                       ("logs", "print a server's log"), ("down", "stop the stack")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=os.environ.get("RAG_SERVE_CONFIG", "stack.yaml"),
                       help="stack file [env RAG_SERVE_CONFIG]")
        if name == "logs":
            p.add_argument("server", help="entry name in the stack file")
            p.add_argument("--lines", type=int, default=100)
        if name == "up":
            p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for every /health")


def run_stack_command(args: argparse.Namespace) -> int:
    state_dir, entries = load_stack(Path(args.config))
    if args.command == "up":
        return up(state_dir, entries, args.wait)
    if args.command == "status":
        return status(state_dir, entries)
    if args.command == "down":
        return down(state_dir, entries)
    log = state_dir / f"{args.server}.log"
    if not log.exists():
        print(f"no log for {args.server!r} in {state_dir}", file=sys.stderr)
        return 1
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-args.lines :]
    print("\n".join(lines))
    return 0
