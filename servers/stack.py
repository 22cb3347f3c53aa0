"""``rag-serve up|status|logs|down``: a supervised stack of servers, one process per entry, each on its device.

stack.yaml (the full format, client settings included, is in ``rag_plugins/stack.py``)::

    state_dir: .rag-serve          # state, pid and log files (default: .rag-serve next to the config)
    supervisor: {max_restarts: 5}  # restart policy; every key is also an `up` flag and RAG_SERVE_* variable
    servers:
      text:   {kind: embed,  model: Qwen/Qwen3-Embedding-0.6B, device: cuda:0, port: 8001}
      rerank: {kind: rerank, model: Qwen/Qwen3-Reranker-0.6B,  device: cuda:1, port: 8002}

``up`` starts a supervisor daemon for the stack (``servers/supervisor.py``) which starts the servers and
restarts any that exits or stops answering ``/health``; ``status`` shows what it sees; ``down`` stops the
supervisor, which drains and stops every server, and then checks by pid that nothing is left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from rag_plugins.stack import StackFile, load_stack_file
from servers.settings import SupervisorSettings, env_var_name, supervisor_settings
from servers.supervisor import LOG_FILE, pid_alive, probe_health, read_state

EXAMPLE_GPU = """\
# stack.yaml: three servers on three GTX 1080 Ti (11 GB, Pascal: fp16, SDPA; never bf16 or FlashAttention-2)
state_dir: .rag-serve
supervisor: {max_restarts: 5, backoff_initial_s: 1, backoff_max_s: 60}
servers:
  text:
    kind: embed
    model: Qwen/Qwen3-Embedding-0.6B
    device: cuda:0
    dtype: float16
    attention: sdpa
    port: 8001
    max_length: 8192
    max_batch_tokens: 16384      # docs/production.md: sizing for an 11 GB card
    api_key: change-me
    client: {dimensions: 1024}
  images:
    kind: mm-embed
    model: Alibaba-NLP/gme-Qwen2-VL-2B-Instruct
    device: cuda:1
    dtype: float16
    attention: sdpa
    port: 8002
    max_batch_tokens: 8192
    image_root: [/data/images]
    api_key: change-me
  rerank:
    kind: rerank
    model: Qwen/Qwen3-Reranker-0.6B
    device: cuda:2
    dtype: float16
    attention: sdpa
    port: 8003
    max_length: 4096
    max_batch_tokens: 16384
    api_key: change-me
"""

EXAMPLE_CPU = """\
# stack.yaml: CPU only (small models; fp32)
state_dir: .rag-serve
servers:
  text:   {kind: embed,  model: sentence-transformers/all-MiniLM-L6-v2, device: cpu, port: 8001,
           max_batch_tokens: 4096}
  rerank: {kind: rerank, model: cross-encoder/ms-marco-MiniLM-L6-v2,    device: cpu, port: 8002,
           max_batch_tokens: 4096}
"""

SUPERVISOR_HELP: dict[str, str] = {
    "max_restarts": "restarts in a row (without stable_s of health) before a server is given up",
    "backoff_initial_s": "wait before the first restart; doubles each restart in a row",
    "backoff_max_s": "cap of the restart wait",
    "health_interval_s": "seconds between /health checks of each server",
    "health_failures": "failed /health checks in a row before a (once healthy) server is killed and restarted",
    "health_timeout_s": "timeout of one /health check",
    "start_timeout_s": "a server not healthy this long after its start is killed and restarted",
    "stable_s": "seconds of health after which the restart counter and backoff start again",
    "stop_grace_s": "down: seconds each server gets to drain before SIGKILL",
}


def _state_dir(stack: StackFile) -> Path:
    return stack.state_dir


def _supervisor_pid(state_dir: Path) -> int | None:
    pid_file = state_dir / "supervisor.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def up(stack: StackFile, settings: SupervisorSettings, wait_s: float) -> int:
    """Start the stack's supervisor (unless running) and wait until every server is healthy or failed."""
    state_dir = _state_dir(stack)
    state_dir.mkdir(parents=True, exist_ok=True)
    pid = _supervisor_pid(state_dir)
    if pid is not None:
        print(f"supervisor already running (pid {pid}); waiting for its servers")
    else:
        (state_dir / "supervisor.json").unlink(missing_ok=True)
        log = (state_dir / LOG_FILE).open("ab")
        # Own session: the daemon outlives this shell and a Ctrl-C here. Its children share its process group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "servers.supervisor", "--config", str(stack.path.resolve()),
             "--settings-json", json.dumps(settings.__dict__)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        pid = proc.pid
        (state_dir / "supervisor.pid").write_text(str(pid))
        print(f"supervisor started (pid {pid}); log: {state_dir / LOG_FILE}")
    deadline = time.monotonic() + wait_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            print(f"supervisor exited:\n{_tail(state_dir / LOG_FILE, 1500)}")
            return 1
        state = read_state(state_dir) or {}
        rows = list(state.get("servers", []))
        if rows and all(r["state"] in ("healthy", "failed") for r in rows):
            break
        time.sleep(0.3)
    code = 0
    for row in rows:
        if row["state"] == "healthy":
            print(f"{row['name']}: healthy {row['kind']} on port {row['port']}, {row['device']} (pid {row['pid']})")
        elif row["state"] == "failed":
            code = 1
            print(f"{row['name']}: FAILED ({row['last_reason']}); see `rag-serve logs {row['name']}`:\n"
                  f"{_tail(state_dir / (row['name'] + '.log'), 1500)}")
        else:
            code = 1
            print(f"{row['name']}: not healthy after {wait_s:.0f}s ({row['state']}); see `rag-serve logs {row['name']}`")
    if not rows:
        print(f"no server reported within {wait_s:.0f}s; see {state_dir / LOG_FILE}")
        return 1
    return code


def status_rows(stack: StackFile) -> list[dict[str, Any]]:
    """One row per server: the supervisor's view plus a live ``/health`` check and the uptime."""
    state_dir = _state_dir(stack)
    state = read_state(state_dir) or {}
    sup_pid = _supervisor_pid(state_dir)
    known = {r["name"]: r for r in state.get("servers", [])}
    rows = []
    now = time.time()
    for entry in stack.entries:
        row = known.get(entry.name, {})
        pid = row.get("pid") if sup_pid is not None else None
        running = pid is not None and pid_alive(int(pid))
        started = row.get("started_at")
        rows.append({
            "name": entry.name, "kind": entry.kind, "port": entry.port, "device": entry.device,
            "pid": pid if running else None,
            "process": "running" if running else "stopped",
            "state": row.get("state", "stopped") if sup_pid is not None else "stopped",
            "health": probe_health(entry.health_url, 2.0) if running else "-",
            "uptime_s": round(now - started, 1) if running and started else None,
            "restarts": row.get("restarts", 0),
            "last_exit": row.get("last_exit"),
            "last_reason": row.get("last_reason"),
            "supervisor_pid": sup_pid,
        })
    return rows


def status(stack: StackFile, as_table: bool) -> int:
    rows = status_rows(stack)
    if not as_table:
        print(json.dumps(rows, indent=2))
    else:
        sup = rows[0]["supervisor_pid"] if rows else None
        print(f"supervisor: {'pid ' + str(sup) if sup else 'not running'}")
        cols = ("name", "kind", "device", "port", "pid", "state", "health", "uptime_s", "restarts", "last_reason")
        table = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
        widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for t in table:
            print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    return 0 if rows and all(r["health"] == "healthy" for r in rows) else 3


def down(stack: StackFile, settings: SupervisorSettings) -> int:
    """SIGTERM the supervisor (it drains and stops every server); then make sure, by pid, nothing is left."""
    state_dir = _state_dir(stack)
    state = read_state(state_dir) or {}
    server_pids = [int(r["pid"]) for r in state.get("servers", []) if r.get("pid")]
    sup = _supervisor_pid(state_dir)
    if sup is not None:
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + settings.stop_grace_s + 10
        while pid_alive(sup) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(sup):
            print(f"supervisor {sup} did not stop; SIGKILL")
            os.kill(sup, signal.SIGKILL)
    # Servers of a supervisor that was SIGKILLed (or of an older state file): stop them by pid.
    leftovers = [p for p in server_pids if pid_alive(p)]
    for pid in leftovers:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.stop_grace_s
    while any(pid_alive(p) for p in leftovers) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in leftovers:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    (state_dir / "supervisor.pid").unlink(missing_ok=True)
    alive = [p for p in [*server_pids, *([sup] if sup else [])] if pid_alive(p)]
    for entry in stack.entries:
        print(f"{entry.name}: stopped")
    if alive:
        print(f"still alive: {alive}")
        return 1
    print(f"stack down: supervisor {'pid ' + str(sup) if sup else '(none)'} and "
          f"{len(server_pids)} server process(es) gone")
    return 0


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def add_stack_commands(sub: Any) -> None:
    for name, text in (("up", "start a supervised stack (see the example printed when the file is missing)"),
                       ("status", "show each server: pid, port, device, uptime, restarts, health"),
                       ("logs", "print a server's (or the supervisor's) log"),
                       ("down", "drain and stop every server and the supervisor")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", default=os.environ.get("RAG_SERVE_CONFIG", "stack.yaml"),
                       help="stack file [env RAG_SERVE_CONFIG; default stack.yaml]")
        if name == "logs":
            p.add_argument("server", help="entry name in the stack file, or 'supervisor'")
            p.add_argument("--lines", type=int, default=int(os.environ.get("RAG_SERVE_LINES", "100")),
                           help="lines to print [env RAG_SERVE_LINES; default 100]")
        if name == "status":
            p.add_argument("--table", action=argparse.BooleanOptionalAction,
                           default=os.environ.get("RAG_SERVE_TABLE", "") in ("1", "true", "yes"),
                           help="a table instead of JSON [env RAG_SERVE_TABLE]")
        if name == "up":
            p.add_argument("--wait", type=float, default=float(os.environ.get("RAG_SERVE_WAIT", "600")),
                           help="seconds to wait for every /health [env RAG_SERVE_WAIT; default 600]")
        if name in ("up", "down"):
            for f in fields(SupervisorSettings):
                if name == "down" and f.name != "stop_grace_s":
                    continue
                p.add_argument("--" + f.name.replace("_", "-"), type=int if f.type == "int" else float,
                               default=None,
                               help=f"{SUPERVISOR_HELP[f.name]} [env {env_var_name(f.name)}; default {f.default}]")


def run_stack_command(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if not path.exists():
        if args.command == "up":
            print(f"no stack file at {path}. Write one like these and run `rag-serve up --config FILE`:\n")
            print(EXAMPLE_GPU)
            print(EXAMPLE_CPU)
            return 2
        print(f"no stack file at {path} (--config / RAG_SERVE_CONFIG)", file=sys.stderr)
        return 2
    stack = load_stack_file(path)
    explicit = {f.name: getattr(args, f.name, None) for f in fields(SupervisorSettings)}
    settings = supervisor_settings(stack.supervisor, **explicit)
    if args.command == "up":
        return up(stack, settings, args.wait)
    if args.command == "status":
        return status(stack, args.table)
    if args.command == "down":
        return down(stack, settings)
    name = "supervisor" if args.server == "supervisor" else stack.entry(args.server).name
    log = stack.state_dir / f"{name}.log"
    if not log.exists():
        print(f"no log for {args.server!r} in {stack.state_dir}", file=sys.stderr)
        return 1
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-args.lines :]
    print("\n".join(lines))
    return 0
