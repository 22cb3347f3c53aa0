"""Open-loop load generator for rag-serve (or any OpenAI/Cohere-style server).

Requests start on a fixed schedule (request i at ``t0 + i / rps``), never "when the previous one ended", so a
slow server faces the same arrival rate a real population of clients would put on it and its queueing shows
in the latencies (measured from the *scheduled* start, so a late start counts against the server too:
no coordinated omission). Each level is bounded by ``--requests`` and ``--duration``.

    # a few RPS levels against a running server, mixed queries / bulk documents / rerank requests
    python -m bench.load --url http://127.0.0.1:8001 --rerank-url http://127.0.0.1:8003 \
        --mix query=0.8,bulk=0.1,rerank=0.1 --rps 5,10,20 --duration 20 --out bench/results/load.json

    # GPU: start a random-weight Qwen3-0.6B-shape embedding server and climb the RPS ladder until p99 > 50 ms
    python -m bench.load --spawn qwen3-0.6b --device cuda:0 --mix query=1 \
        --rps 100,200,500,1000,2000,5000 --duration 20 --p99-target-ms 50 --out bench/results/load_gpu_0.6b.json

Request kinds (``--mix NAME=WEIGHT,...``): ``query`` (one short query to /embed), ``bulk`` (32 documents of
~100 words to /embed), ``openai`` (one string to /v1/embeddings), ``rerank`` (a query and 20 documents to
/rerank on ``--rerank-url``), or ``--mix-file`` with ``[{"name", "route", "body", "weight", "url"?}]``.
Every flag reads ``RAG_LOAD_<FLAG>`` too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

WORDS = ["graphics", "card", "memory", "bandwidth", "planet", "ocean", "river", "volcano", "forest", "protein", "enzyme", "bread", "oven", "network", "latency", "vector", "index", "retrieval", "ranking", "passage", "answer", "question", "model", "token"]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@dataclass(frozen=True)
class RequestKind:
    """One kind of request of the mix.

    Attributes:
        name: Shown in the report.
        url: Server root the request goes to.
        route: Path, e.g. ``/embed``.
        weight: Relative frequency in the mix.
        body: Fixed JSON body, or None to draw a fresh one per request (built-in kinds).
    """

    name: str
    url: str
    route: str
    weight: float
    body: Any = None

    def make_body(self, rng: random.Random) -> Any:
        if self.body is not None:
            return self.body
        if self.name == "query":
            return {"texts": [_text(rng, rng.randint(6, 14))], "input_type": "query"}
        if self.name == "bulk":
            return {"texts": [_text(rng, rng.randint(60, 140)) for _ in range(32)], "input_type": "document"}
        if self.name == "openai":
            return {"input": _text(rng, rng.randint(6, 14))}
        if self.name == "rerank":
            return {"query": _text(rng, 10), "docs": [_text(rng, rng.randint(40, 100)) for _ in range(20)]}
        raise ValueError(f"unknown request kind {self.name!r}")


BUILTIN_ROUTES = {"query": "/embed", "bulk": "/embed", "openai": "/v1/embeddings", "rerank": "/rerank"}


def parse_mix(spec: str, url: str, rerank_url: str | None) -> list[RequestKind]:
    """``query=0.8,bulk=0.2`` -> request kinds (rerank goes to ``rerank_url``)."""
    kinds = []
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in BUILTIN_ROUTES:
            raise ValueError(f"unknown request kind {name!r}; built-in: {', '.join(BUILTIN_ROUTES)}")
        target = (rerank_url or url) if name == "rerank" else url
        kinds.append(RequestKind(name, target.rstrip("/"), BUILTIN_ROUTES[name], float(weight or 1)))
    return kinds


def load_mix_file(path: Path, url: str) -> list[RequestKind]:
    items = json.loads(path.read_text(encoding="utf-8"))
    return [RequestKind(str(i["name"]), str(i.get("url", url)).rstrip("/"), str(i["route"]),
                        float(i.get("weight", 1)), i["body"]) for i in items]


def summarize(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds of the successful requests."""
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2), "max_ms": round(float(arr.max()), 2)}


async def run_level(
    kinds: list[RequestKind], rps: float, duration_s: float, max_requests: int, headers: dict[str, str],
    timeout_s: float, seed: int = 0,
) -> dict[str, Any]:
    """One open-loop level: ``min(max_requests, rps * duration_s)`` requests at ``rps``.

    Returns:
        Target and achieved RPS, latency percentiles (ms, from the scheduled start), statuses by count and
        per-kind statuses.
    """
    rng = random.Random(seed)
    n = max(1, min(max_requests, round(rps * duration_s)))
    weights = [k.weight for k in kinds]
    plan = [(rng.choices(kinds, weights)[0]) for _ in range(n)]
    bodies = [json.dumps(k.make_body(rng)).encode() for k in plan]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {k.name: Counter() for k in kinds}
    late_starts = 0
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Content-Type": "application/json", **headers}) as session:

        async def one(kind: RequestKind, body: bytes, scheduled: float) -> None:
            try:
                async with session.post(kind.url + kind.route, data=body) as resp:
                    await resp.read()
                    status = str(resp.status)
            except asyncio.TimeoutError:
                status = "timeout"
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            statuses[status] += 1
            by_kind[kind.name][status] += 1
            if status == "200":
                latencies.append(time.perf_counter() - scheduled)

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i, (kind, body) in enumerate(zip(plan, bodies, strict=True)):
            scheduled = t0 + i / rps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late_starts += 1  # the generator itself could not keep up: reported, so the table is honest
            tasks.append(asyncio.create_task(one(kind, body, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    ok = statuses.get("200", 0)
    return {
        "target_rps": rps, "requests": n, "ok": ok, "achieved_rps": round(n / elapsed, 2),
        "ok_rps": round(ok / elapsed, 2), "elapsed_s": round(elapsed, 2), **summarize(latencies),
        "statuses": dict(sorted(statuses.items())), "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "late_starts": late_starts,
    }


def table(levels: list[dict[str, Any]]) -> str:
    """Markdown table of the levels."""
    head = "| target RPS | requests | achieved RPS | ok RPS | p50 ms | p95 ms | p99 ms | max ms | statuses |"
    lines = [head, "|" + "---|" * 9]
    for lv in levels:
        statuses = ", ".join(f"{k}: {v}" for k, v in lv["statuses"].items())
        lines.append(f"| {lv['target_rps']:g} | {lv['requests']} | {lv['achieved_rps']} | {lv['ok_rps']} | "
                     f"{lv['p50_ms']} | {lv['p95_ms']} | {lv['p99_ms']} | {lv['max_ms']} | {statuses} |")
    return "\n".join(lines)


def spawn_server(stack: ExitStack, which: str, device: str, extra: list[str]) -> str:
    """Start a local server for the run: ``minilm`` (real weights) or a random-weight ``qwen3-0.6b``/``qwen3-tiny``."""
    from servers.process import ServerProcess

    if which == "minilm":
        from testkit.random_models import minilm_dir

        model = minilm_dir()
    else:
        from testkit.qwen_tokenizer import save_qwen_tokenizer
        from testkit.random_models import save_qwen3_embedding

        shape = which.removeprefix("qwen3-")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-load-")))
        tok = save_qwen_tokenizer(tmp / "tok", with_eos_postprocessor=True)
        dtype = "float32" if device == "cpu" else "bfloat16"
        model = save_qwen3_embedding(tmp / "model", tok, shape, device=device, dtype=dtype)
    server = ServerProcess("embed", model, device=device, extra_args=extra)
    server.start(timeout_s=900)
    stack.callback(server.stop)
    from bench.embed_throughput import wait_accelerated

    # Measure the server as it runs for weeks: with its CUDA graphs and compiled layers in place.
    print(f"acceleration: {wait_accelerated(server.base_url, 600)}", flush=True)
    return server.base_url


def _env(name: str, default: str) -> str:
    return os.environ.get("RAG_LOAD_" + name.upper(), default)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=_env("url", "http://127.0.0.1:8001"), help="embedding server [RAG_LOAD_URL]")
    p.add_argument("--rerank-url", default=_env("rerank_url", "") or None, help="rerank server [RAG_LOAD_RERANK_URL]")
    p.add_argument("--api-key", default=_env("api_key", "") or None, help="Bearer key [RAG_LOAD_API_KEY]")
    p.add_argument("--mix", default=_env("mix", "query=1"), help="kinds and weights [RAG_LOAD_MIX]")
    p.add_argument("--mix-file", default=_env("mix_file", "") or None, help="JSON list of requests [RAG_LOAD_MIX_FILE]")
    p.add_argument("--rps", default=_env("rps", "5,10,20"), help="comma-separated RPS levels [RAG_LOAD_RPS]")
    p.add_argument("--duration", type=float, default=float(_env("duration", "15")),
                   help="seconds per level [RAG_LOAD_DURATION]")
    p.add_argument("--requests", type=int, default=int(_env("requests", "100000")),
                   help="max requests per level [RAG_LOAD_REQUESTS]")
    p.add_argument("--timeout", type=float, default=float(_env("timeout", "60")),
                   help="seconds per request [RAG_LOAD_TIMEOUT]")
    p.add_argument("--p99-target-ms", type=float, default=float(_env("p99_target_ms", "0")) or None,
                   help="stop the ladder at the first level whose p99 exceeds this (or that has errors) and "
                        "report the highest level within it [RAG_LOAD_P99_TARGET_MS]")
    p.add_argument("--spawn", default=_env("spawn", "") or None, choices=["minilm", "qwen3-tiny", "qwen3-0.6b"],
                   help="start this server for the run instead of using --url [RAG_LOAD_SPAWN]")
    p.add_argument("--device", default=_env("device", "cpu"), help="device of --spawn [RAG_LOAD_DEVICE]")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra rag-serve flag for --spawn, repeatable (e.g. --server-arg=--max-batch-tokens=8192)")
    p.add_argument("--note", default=_env("note", ""), help="free text stored with the results [RAG_LOAD_NOTE]")
    p.add_argument("--out", default=_env("out", "") or None, help="JSON file; a .md table is written next to it")
    args = p.parse_args(argv)

    with ExitStack() as stack:
        url = spawn_server(stack, args.spawn, args.device, args.server_arg) if args.spawn else args.url
        kinds = load_mix_file(Path(args.mix_file), url) if args.mix_file else parse_mix(args.mix, url, args.rerank_url)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        levels: list[dict[str, Any]] = []
        best: float | None = None
        for rps in [float(x) for x in args.rps.split(",")]:
            level = asyncio.run(run_level(kinds, rps, args.duration, args.requests, headers, args.timeout))
            levels.append(level)
            print(table([level]).splitlines()[-1], flush=True)
            if args.p99_target_ms is not None:
                within = (level["p99_ms"] is not None and level["p99_ms"] <= args.p99_target_ms
                          and level["ok"] == level["requests"])
                if not within:
                    break
                best = rps
        info: dict[str, Any] = {}
        try:
            import requests as http

            info = http.get(url + "/info", headers=headers, timeout=10).json()
        except Exception:
            info = {}
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.node()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs", "note": args.note, "mix": [k.__dict__ | {"body": None} for k in kinds],
        "duration_s": args.duration, "server": {k: info.get(k) for k in ("model", "kind", "dim", "dtype", "device")},
        "p99_target_ms": args.p99_target_ms, "highest_rps_within_target": best, "levels": levels,
    }
    print()
    print(table(levels))
    if best is not None or args.p99_target_ms is not None:
        print(f"\nhighest RPS with p99 <= {args.p99_target_ms} ms and no errors: {best}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        md = [f"# Load: {result['server'].get('model')} on {result['server'].get('device')}", "",
              f"{result['when']}, {result['machine']}. {args.note}", "",
              f"Mix: {args.mix if not args.mix_file else args.mix_file}; {args.duration:g} s per level, open loop "
              "(latency from the scheduled start).", "", table(levels), ""]
        out.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
