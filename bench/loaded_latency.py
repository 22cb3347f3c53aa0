"""Query latency under bulk load, and where its tail goes: stages, lanes and garbage-collection pauses.

    python -m bench.loaded_latency                                        # CPU, tiny random Qwen3-Embedding
    python -m bench.loaded_latency --variant= --variant=--no-gc-freeze  # A/B of server flags (the default)
    python -m bench.loaded_latency --device cuda:0 --shape 0.6b           # a GPU and a real shape
    python -m bench.loaded_latency --py-spy /tmp/spy                      # + who holds the GIL (needs py-spy)

Per variant (extra ``rag-serve embed`` flags) and repeat, it starts a server on a random-weight
Qwen3-Embedding repository of ``--shape`` (:mod:`testkit.random_models`), warms it up, then runs
:func:`bench.embed_throughput.loaded_probe`: ``--concurrency`` clients in a child process keep the server
saturated with ``--client-batch``-text requests of a random-word corpus (token lengths uniform in
``--min-tokens..--max-tokens``) while single queries arrive at ``--rps`` for ``--seconds``. Reported per run:
bulk tokens/s meanwhile, query p50/p90/p99/max, and from the server's ``/metrics`` of the probe window the
garbage-collection pauses by generation and how many queries were slow in which stage (over 10/25/50/100
ms). With ``--py-spy DIR`` each variant's first run also records which threads held the server's GIL over
the probe window (:mod:`bench.gil_profile`). Variants alternate run by run, so a drift of the machine hits
each alike. Prints a markdown table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.embed_throughput import (
    LOADED_PROBE_LEAD_S,
    TAIL_THRESHOLDS_MS,
    add_bulk_load_arguments,
    bulk_load,
    loaded_probe,
    make_corpus,
    wait_accelerated,
)
from bench.gil_profile import record_gil, summarize_gil
from servers.process import ServerProcess
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import save_qwen3_embedding

DEFAULT_VARIANTS = ("", "--no-gc-freeze")
QUERY = "what protein causes cell growth in human tissue samples"


def run_variant(model_dir: Path, device: str, flags: str, batches: list[list[str]], args: argparse.Namespace,
                log_path: Path, spy_path: Path | None = None) -> dict[str, Any]:
    """One server with ``flags``: warm it, then the loaded probe (with a py-spy GIL recording when
    ``spy_path`` is given)."""
    import asyncio

    with ServerProcess("embed", model_dir, device=device, extra_args=flags.split(), log_path=log_path) as server:
        base = server.base_url
        # On a GPU: measure the accelerated server, not the eager path while it compiles (and its GC).
        acceleration = wait_accelerated(base, 900)
        asyncio.run(bulk_load(base, batches[: 2 * args.concurrency], args.concurrency))
        window = min(LOADED_PROBE_LEAD_S, args.seconds) + args.seconds
        spy = record_gil(server.pid, window, spy_path) if spy_path is not None and server.pid else None
        probe = loaded_probe(base, batches, [QUERY], args.concurrency, args.rps, args.seconds, device=args.device)
        gil: dict[str, Any] | None = None
        if spy_path is not None:
            if spy is None:
                gil = {"error": "py-spy is not installed"}
            else:
                spy.wait(timeout=window + 60)
                gil = summarize_gil(spy_path, window) if spy_path.exists() else {"error": "py-spy wrote nothing"}
    return {"variant": flags or "(defaults)", "acceleration": acceleration, **probe,
            **({"gil": gil} if gil is not None else {})}


def summary_row(run: dict[str, Any]) -> dict[str, Any]:
    """The table's columns of one run."""
    means, tails = run["stages_ms"], run["stage_tails"]
    full = tails.get("gc_pause[2]", {})
    # Priority lane only: the whole request (route/lane), its tokenize and its queue + forward.
    slow = {k: v.get(">25ms", 0) for k, v in tails.items() if k.endswith("/priority]")}
    return {
        "variant": run["variant"], "bulk_tokens_per_s": round(run["bulk_tokens_per_s_during_probe"]),
        "p50_ms": round(run["p50_ms"], 1), "p90_ms": round(run["p90_ms"], 1), "p99_ms": round(run["p99_ms"], 1),
        "max_ms": round(run["max_ms"], 1), "full_gc": full.get("n", 0), "full_gc_mean_ms": means.get("gc_pause[2]"),
        "gen1_gc_mean_ms": means.get("gc_pause[1]"), "priority_stages_over_25ms": slow,
        "gpu_utilization": run.get("gpu_utilization"),
    }


def gil_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Per recorded run: how busy the GIL was and which threads held it, with their top frames."""
    lines: list[str] = []
    for run in runs:
        gil = run.get("gil")
        if not gil:
            continue
        if "error" in gil:
            lines += ["", f"GIL profile of `{run['variant']}`: {gil['error']}."]
            continue
        lines += ["", f"GIL held {100 * gil['gil_held_share']:.0f}% of the probe window, `{run['variant']}` "
                      "(py-spy --gil; share of the window per thread, then its top frames):", ""]
        for name, t in gil["threads"].items():
            frames = ", ".join(f"{label} {100 * share:.0f}%" for label, share in t["top"][:4])
            lines.append(f"- {name} {100 * t['share']:.1f}%: {frames}")
    return lines


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], runs: list[dict[str, Any]] | None = None) -> str:
    lines = [
        f"# Query latency under bulk load ({meta['device']}, shape {meta['shape']}, {meta['date']})", "",
        f"`python -m bench.loaded_latency {meta['argv']}`: {meta['concurrency']} bulk clients x {meta['client_batch']} "
        f"texts ({meta['min_tokens']}-{meta['max_tokens']} tokens), one query every {1000 / meta['rps']:.0f} ms for "
        f"{meta['seconds']:.0f} s; GC pauses and slow stages from the server's /metrics of the probe window "
        f"(thresholds {', '.join(str(t) for t in TAIL_THRESHOLDS_MS)} ms).", "",
        "| variant | bulk tokens/s | query p50 / p90 / p99 / max ms | full GCs (mean ms) | gen-1 GC mean ms "
        "| queries slower than 25 ms, by stage (server side) | GPU utilization mean / p10 % |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        slow = ", ".join(f"{k} {v}" for k, v in sorted(r["priority_stages_over_25ms"].items()))
        gpu = r.get("gpu_utilization")
        busy = f"{gpu['mean_percent']:.0f} / {gpu['p10_percent']:.0f}" if gpu and gpu.get("samples") else "n/a"
        lines.append(f"| {r['variant']} | {r['bulk_tokens_per_s']:,} | {r['p50_ms']} / {r['p90_ms']} / {r['p99_ms']} / "
                     f"{r['max_ms']} | {r['full_gc']} ({r['full_gc_mean_ms']}) | {r['gen1_gc_mean_ms']} | {slow} "
                     f"| {busy} |")
    lines += gil_lines(runs or [])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="tiny", help="random-weight Qwen3-Embedding shape (testkit.random_models)")
    p.add_argument("--variant", action="append", default=None,
                   help="extra rag-serve flags of one server, written --variant='--no-gc-freeze --bulk-workers 2' "
                        "(--variant= : the defaults; repeatable)")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating")
    add_bulk_load_arguments(p, corpus_size=4000)
    p.add_argument("--rps", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--py-spy", type=Path, default=None,
                   help="directory: record who holds the server's GIL (py-spy --gil) in each variant's first run")
    p.add_argument("--out", type=Path, default=Path("bench/results/loaded_latency.json"))
    args = p.parse_args(argv)
    variants = args.variant if args.variant is not None else list(DEFAULT_VARIANTS)

    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="loaded-latency-"))
    tokenizer_dir = save_qwen_tokenizer(work / "tokenizer")
    model_dir = save_qwen3_embedding(work / "model", tokenizer_dir, args.shape,
                                     device=args.device, dtype="bfloat16" if args.device != "cpu" else "float32")
    texts, _ = make_corpus(AutoTokenizer.from_pretrained(str(model_dir)), args.corpus_size, args.min_tokens,
                           args.max_tokens, seed=0)
    batches = [texts[i : i + args.client_batch] for i in range(0, len(texts), args.client_batch)]
    runs = []
    for repeat in range(args.repeats):
        for i, flags in enumerate(variants):
            started = time.perf_counter()
            spy = args.py_spy / f"gil_variant{i}.txt" if args.py_spy is not None and repeat == 0 else None
            run = run_variant(model_dir, args.device, flags, batches, args, work / f"server_{i}_{repeat}.log", spy)
            runs.append(run)
            print(f"[{time.strftime('%H:%M:%S')}] {run['variant']} run {repeat + 1}: "
                  f"{json.dumps(summary_row(run))} ({time.perf_counter() - started:.0f} s)", flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"), "device": args.device if args.device != "cpu" else
        f"CPU ({platform.processor() or platform.machine()})", "shape": args.shape,
        "argv": " ".join(argv) if argv is not None else " ".join(__import__("sys").argv[1:]),
        **{k: getattr(args, k) for k in ("concurrency", "client_batch", "min_tokens", "max_tokens", "rps", "seconds")},
    }
    rows = [summary_row(r) for r in runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    table = markdown(meta, rows, runs)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
