"""Who holds a server's GIL under load: a py-spy ``--gil`` recording and its per-thread summary.

A server process's threads (event loop, tokenizer pool, the lanes' model threads, background compilation)
share one GIL. When it is held most of the time the process is host-bound: the GPU waits for launches and a
query waits for its turn. ``py-spy record --gil`` samples only the thread holding the GIL, so the share of
samples over the window is how busy the GIL was, and each thread's top frames say with what.

    spy = record_gil(pid, seconds=20, out=Path("gil.txt"))   # a py-spy process, running in the background
    ...                                                      # the load
    spy.wait(); summary = summarize_gil(Path("gil.txt"), seconds=20, rate=GIL_SAMPLE_RATE)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

#: Samples per second: enough for 1 % resolution over a 20 s window, little enough not to slow the server.
GIL_SAMPLE_RATE = 200
_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\):? ?(.*)$")
_FRAME = re.compile(r"^(.*?) \(([^()]*?):\d+\)$")


def record_gil(pid: int, seconds: float, out: Path, rate: int = GIL_SAMPLE_RATE) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record --gil`` on ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks).

    Returns:
        The py-spy process, or None when py-spy is not installed (the caller reports "not recorded").
    """
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
               "--gil", "--threads", "--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def thread_name(frame: str) -> str:
    """``thread (0x7f..): model-bulk_0`` -> ``model-bulk`` (pool workers numbered alike are one thread kind)."""
    m = _THREAD.match(frame)
    name = (m.group(1) if m else frame).strip() or "unnamed"
    return re.sub(r"_\d+$", "", name)


def summarize_gil(raw: Path, seconds: float, rate: int = GIL_SAMPLE_RATE, top: int = 8) -> dict[str, Any]:
    """Summarize a ``record_gil`` file.

    Returns:
        ``gil_held_share``: samples / (seconds x rate), how much of the window some thread held the GIL;
        ``threads``: per thread kind, its share of the window and its ``top`` leaf frames (``function
        (file)``) with their share of that thread's samples.
    """
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame)"
        m = _FRAME.match(leaf)
        label = f"{m.group(1)} ({Path(m.group(2)).name})" if m else leaf
        per_thread[thread_name(frames[0])][label] += n
    ticks = max(1.0, seconds * rate)
    threads = {}
    for name, frames in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        held = sum(frames.values())
        threads[name] = {
            "share": round(held / ticks, 3),
            "top": [[label, round(k / held, 3)] for label, k in frames.most_common(top)],
        }
    return {"gil_held_share": round(total / ticks, 3), "samples": total, "seconds": seconds, "rate": rate,
            "threads": threads}
