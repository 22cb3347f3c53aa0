"""Where bulk throughput goes: the engines in this process (no HTTP) under variants of the lane settings.

For a random-weight Qwen3 0.6B shape (a reranker, an embedder) this builds the real engine
(``RerankEngine`` / ``EmbeddingEngine`` from ``ServerSettings``, compiled layers and graphs on), waits until
it is accelerated, then measures:

* ``tokenize``: one thread tokenizing one 100-document request (pairs/s);
* ``alone``: an unloaded 100-document request (rerank) or 100-text request (embed), p50 of 5;
* ``bulk``: 16 concurrent in-process clients over 48 requests, tokens/s (real tokens);
* ``queries``: while that bulk load runs, one small priority request every 20 ms (50 RPS), p50/p99;
* ``gpu_busy``: for the default variant, the fraction of a bulk window the GPU spends in kernels (torch
  profiler, summed kernel time / wall), and the host operators that cost most.

Variants change one thing each: how far a bulk thread may launch ahead of the GPU (layers), and the number
of bulk workers. Comparing ``bulk`` here with the HTTP server's figure separates the HTTP layer's cost.

    PYTHONUNBUFFERED=1 python -m bench.bulk_profile --out /tmp/bulk_profile.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rerank_throughput import build_reranker, make_workload
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import save_qwen3_embedding

#: name -> (bulk layers ahead (None: unbounded), bulk workers, a priority forward pauses bulk launches)
VARIANTS: dict[str, tuple[int | None, int, bool]] = {
    "ahead4": (4, 1, True),
    "ahead12": (12, 1, True),
    "unbounded": (None, 1, True),
    "ahead4_workers2": (4, 2, True),
    "nopause_ahead4": (4, 1, False),
    "nopause_ahead12": (12, 1, False),
    "nopause_unbounded": (None, 1, False),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def run_variant(kind: str, model_dir: Path, workload: list[dict[str, Any]], variant: tuple[int | None, int, bool],
                      cache_dir: str, profile: bool, device: str, dtype: str, spy: str | None) -> dict[str, Any]:
    import torch

    import servers.backends.torch_runtime as runtime
    from servers.settings import ServerSettings

    ahead, workers, pause = variant
    runtime.BULK_LAYERS_AHEAD = ahead  # type: ignore[assignment]
    runtime.PRIORITY_PAUSES_BULK = pause
    settings = ServerSettings(kind=kind, model=str(model_dir), device=device, dtype=dtype,
                              bulk_workers=workers, compile_cache_dir=cache_dir)
    engine: Any
    if kind == "rerank":
        from servers.engines.rerank import RerankEngine

        engine = RerankEngine.from_settings(settings)
    else:
        from servers.engines.embedding import EmbeddingEngine

        engine = EmbeddingEngine.from_settings(settings)
    out: dict[str, Any] = {}
    async with engine:
        decoder = engine.backend.decoder
        decoder.wait(600)
        out["acceleration"] = {k: v for k, v in decoder.info().items() if k != "graph_buckets"}

        async def request(body: dict[str, Any]) -> int:
            if kind == "rerank":
                result = await engine.rerank(body["query"], body["docs"])
            else:
                result = await engine.embed(body["docs"], input_type="document")
            return int(result.prompt_tokens)

        async def query(body: dict[str, Any]) -> None:
            if kind == "rerank":
                await engine.rerank(body["query"], body["docs"][:1])
            else:
                await engine.embed([body["query"]], input_type="query")

        for body in workload[:2]:
            await request(body)
        pairs = [(workload[0]["query"], d) for d in workload[0]["docs"]]
        for _ in range(2):  # the first call in a thread copies the tokenizer (ThreadLocalTokenizer)
            started = time.perf_counter()
            if kind == "rerank":
                engine.backend.tokenize_pairs(pairs, "instruction")
            else:
                engine.backend.tokenize(workload[0]["docs"])
        out["tokenize_100_ms"] = round(1000 * (time.perf_counter() - started), 2)
        alone = []
        for body in workload[2:7]:
            started = time.perf_counter()
            await request(body)
            alone.append(time.perf_counter() - started)
        out["alone_100_p50_ms"] = round(1000 * statistics.median(alone), 1)
        idle = []
        for body in workload[:20]:
            started = time.perf_counter()
            await query(body)
            idle.append(1000 * (time.perf_counter() - started))
        out["idle_query_p50_ms"] = round(statistics.median(idle), 2)

        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        tokens = 0
        done = asyncio.Event()

        async def client() -> None:
            nonlocal tokens
            while not queue.empty():
                n = await request(queue.get_nowait())
                tokens += n

        for body in workload:
            queue.put_nowait(body)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(16)))
        out["unloaded_bulk_tokens_per_s"] = round(tokens / (time.perf_counter() - started))
        tokens = 0
        for body in workload:
            queue.put_nowait(body)

        latencies: list[float] = []

        async def prober() -> None:
            i = 0
            tasks = []

            async def one(body: dict[str, Any]) -> None:
                started = time.perf_counter()
                await query(body)
                latencies.append(1000 * (time.perf_counter() - started))

            while not done.is_set():
                tasks.append(asyncio.create_task(one(workload[i % len(workload)])))
                i += 1
                await asyncio.sleep(0.02)
            await asyncio.gather(*tasks)

        profiler = None
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            profiler = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])

        async def profiled_window() -> None:
            if profiler is None:
                return
            await asyncio.sleep(2.0)
            profiler.__enter__()
            window = time.perf_counter()
            await asyncio.sleep(2.0)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            profiler.__exit__(None, None, None)
            wall = time.perf_counter() - window
            events = [e for e in profiler.events() if e.device_type.name == "CUDA"]
            kernel_us = sum(e.device_time for e in events if getattr(e, "device_time", 0))
            out["gpu_busy_fraction"] = round(kernel_us / 1e6 / wall, 3)
            table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
            out["host_top_ops"] = table

        spy_process = None
        if spy:
            import os
            import subprocess

            command = ["py-spy", "record", "--pid", str(os.getpid()), "--duration", "4", "--rate", "400",
                       "--format", "raw", "--threads", "--nonblocking", "-o", spy]
            spy_process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
        started = time.perf_counter()
        probe = asyncio.create_task(prober())
        window = asyncio.create_task(profiled_window())
        await asyncio.gather(*(client() for _ in range(16)))
        wall = time.perf_counter() - started
        done.set()
        await probe
        await window
        if spy_process is not None:
            spy_process.wait(30)
        out["bulk_tokens_per_s"] = round(tokens / wall)
        out["loaded_over_unloaded"] = round(out["bulk_tokens_per_s"] / max(1, out["unloaded_bulk_tokens_per_s"]), 3)
        out["bulk_wall_s"] = round(wall, 2)
        out["queries_under_load"] = len(latencies)
        out["query_p50_ms"] = round(pct(latencies, 0.5), 2) if latencies else None
        out["query_p99_ms"] = round(pct(latencies, 0.99), 2) if latencies else None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=",".join(f"{k}/{v}" for k in ("rerank", "embed") for v in VARIANTS),
                   help="comma-separated KIND/VARIANT (kinds: rerank, embed; variants: " + ", ".join(VARIANTS) + ")")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("bench/results/bulk_profile.json"))
    p.add_argument("--torch-profile", action="store_true", help="torch profiler window in each kind's first run")
    p.add_argument("--py-spy", default="", help="py-spy raw stacks of each kind's first loaded window to PATH.KIND")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, two variants: proves the script runs")
    args = p.parse_args(argv)
    shape, device, dtype = ("tiny", "cpu", "float32") if args.smoke else ("0.6b", "cuda:0", "bfloat16")
    if args.smoke:
        args.requests, args.runs = 10, "rerank/ahead4,embed/nopause_ahead4"
    sys.setswitchinterval(0.0005)  # as rag-serve does (servers.cli)
    from transformers import AutoTokenizer

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bulk-profile-") as tmp:
        work = Path(tmp)
        tokenizer_dir = save_qwen_tokenizer(work / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        workload = make_workload(tokenizer, args.requests, 100, 32, 64, 512)
        cache = str(work / "inductor")
        profiled: set[str] = set()
        for run in args.runs.split(","):
            kind, name = run.split("/")
            model_dir = work / kind
            if not model_dir.exists():
                if kind == "rerank":
                    build_reranker(model_dir, shape, tokenizer_dir, device, dtype)
                else:
                    save_qwen3_embedding(model_dir, tokenizer_dir, shape, device=device, dtype=dtype)
            first = kind not in profiled
            profiled.add(kind)
            log(f"{kind} / {name}: (layers ahead, bulk workers, priority pauses bulk) = {VARIANTS[name]}")
            row = asyncio.run(run_variant(
                kind, model_dir, workload, VARIANTS[name], cache, profile=first and args.torch_profile,
                device=device, dtype=dtype, spy=f"{args.py_spy}.{kind}" if first and args.py_spy else None))
            top = row.pop("host_top_ops", None)
            log(f"{kind} / {name}: {json.dumps(row)}")
            if top:
                print(top, flush=True)
                row["host_top_ops"] = top
            results[f"{kind}/{name}"] = row
    lines = ["| kind / variant | unloaded bulk tokens/s | bulk tokens/s with 50 RPS queries | ratio "
             "| query p50 / p99 ms under load | idle query p50 ms "
             "| alone 100 p50 ms | tokenize 100 ms | GPU busy |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {key} | {r['unloaded_bulk_tokens_per_s']:,} | {r['bulk_tokens_per_s']:,} | "
                     f"{r['loaded_over_unloaded']} | {r['query_p50_ms']} / {r['query_p99_ms']} | "
                     f"{r['idle_query_p50_ms']} | {r['alone_100_p50_ms']} | {r['tokenize_100_ms']} | "
                     f"{r.get('gpu_busy_fraction', '')} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
