"""The server's bulk lane against a modelled GPU: what the scheduler and the pipeline cost, on any machine.

The real :class:`~servers.scheduler.TokenBudgetScheduler` (the server's limits and pipelining, padded or
packed batches) is fed the load of ``bench.embed_throughput`` (b): ``--concurrency`` clients sending
``--client-batch`` texts of 16-512 tokens (+1 end token) until the corpus is done. The device is modelled:

* a batch costs ``padded tokens / --rate`` seconds of device time, split over ``--layers`` layers;
* the model thread holds the GIL for ``--prep-ms`` per batch and ``--layer-host-ms`` per layer launch, and
  runs at most ``--layers-ahead`` layers ahead of the device (the server's bulk gate);
* ``--sync`` makes each forward wait for the device before it launches (what transformers' mask building
  did once per eager forward until the decoders passed a ready mask mapping);
* ``--loop-stall-ms`` blocks the event loop that often (every 2 ms of idle), standing in for HTTP work and
  garbage collections.

It reports the throughput as a share of ``--rate`` (the compiled ceiling (a') when ``--rate`` is that), the
device's busy share, and the batch mix (items, padding), so a GPU run's bulk figure can be split into what
batching costs (padding) and what the host costs (idle device). What it cannot say is how fast the kernels
run on the batch shapes: that is the GPU's own measurement.

Example (the H200 run of 2026-12-04: (a') 411,612 tokens/s at 62 x 264), one row per scenario::

    python -m bench.bulk_pipeline_model --rate 411612 --scenario= --scenario=--sync \
        --scenario='--loop-stall-ms 8' --scenario='--packed'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.embed_throughput import add_bulk_load_arguments
from servers.scheduler import BatchLimits, Lane, TokenBudgetScheduler
from servers.settings import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def spin(ms: float) -> None:
    """Host work that holds the GIL for ``ms``."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


class ModelledDevice:
    """A device timeline fed by launches (see the module docstring); thread-safe."""

    def __init__(self, rate: float, layers: int, layers_ahead: int, layer_host_ms: float, prep_ms: float,
                 sync: bool, packed: bool) -> None:
        self.rate, self.layers, self.layers_ahead = rate, layers, layers_ahead
        self.layer_host_ms, self.prep_ms, self.sync, self.packed = layer_host_ms, prep_ms, sync, packed
        self.free_at = 0.0
        self.busy_s = 0.0
        self.real_tokens = 0
        self.padded_tokens = 0
        self.batches = 0
        self.items = 0
        self._lock = threading.Lock()

    def launch(self, lengths: list[int], lane: Lane) -> Any:
        padded = sum(lengths) if self.packed else len(lengths) * max(lengths)
        per_layer = padded / self.rate / self.layers
        spin(self.prep_ms)
        if self.sync:
            sleep_until(self.free_at)
        ends: list[float] = []
        for _ in range(self.layers):
            spin(self.layer_host_ms)
            with self._lock:
                start = max(time.perf_counter(), self.free_at)
                self.free_at = start + per_layer
                self.busy_s += per_layer
                ends.append(self.free_at)
            if len(ends) > self.layers_ahead:
                sleep_until(ends[-1 - self.layers_ahead])
        with self._lock:
            self.real_tokens += sum(lengths)
            self.padded_tokens += padded
            self.batches += 1
            self.items += len(lengths)
        done = ends[-1]

        def collect() -> list[int]:
            sleep_until(done)
            return lengths

        return collect

    def run(self, lengths: list[int], lane: Lane) -> list[int]:
        result: list[int] = self.launch(lengths, lane)()
        return result


async def run_model(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    lengths = (rng.integers(args.min_tokens, args.max_tokens + 1, size=args.corpus_size) + 1).tolist()
    requests = [lengths[i : i + args.client_batch] for i in range(0, len(lengths), args.client_batch)]
    device = ModelledDevice(args.rate, args.layers, args.layers_ahead, args.layer_host_ms, args.prep_ms,
                            args.sync, args.packed)
    scheduler: TokenBudgetScheduler[int, int] = TokenBudgetScheduler(
        device.run, BatchLimits(max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size))
    scheduler.enable_pipelining(device.launch)
    if args.packed:
        scheduler.enable_packing()
    await scheduler.start()
    queue = list(reversed(requests))
    running = True

    async def event_loop_work() -> None:
        while running:
            spin(args.loop_stall_ms)
            await asyncio.sleep(0.002)

    async def client() -> None:
        while queue:
            request = queue.pop()
            await scheduler.submit(request, request)

    stalls = asyncio.create_task(event_loop_work()) if args.loop_stall_ms > 0 else None
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    running = False
    if stalls is not None:
        await stalls
    await scheduler.stop()
    real = device.real_tokens
    return {
        "rate": args.rate, "packed": args.packed, "sync": args.sync, "loop_stall_ms": args.loop_stall_ms,
        "layer_host_ms": args.layer_host_ms, "prep_ms": args.prep_ms, "layers_ahead": args.layers_ahead,
        "wall_s": round(wall, 2), "tokens_per_s": round(real / wall), "share_of_rate": round(real / wall / args.rate, 3),
        "device_busy_share": round(device.busy_s / wall, 3), "batches": device.batches,
        "mean_items": round(device.items / device.batches, 1),
        "padding_share": round(1 - real / device.padded_tokens, 4),
    }


def markdown(rows: list[dict[str, Any]], argv: str) -> str:
    lines = [
        "# Bulk lane against a modelled device", "",
        f"`python -m bench.bulk_pipeline_model {argv}`", "",
        "| scenario | batches | mean items | padding | device busy | tokens/s | share of rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| `{row['scenario'] or '(base)'}` | {row['batches']} | {row['mean_items']} | {100 * row['padding_share']:.1f}% | "
        f"{100 * row['device_busy_share']:.1f}% | {row['tokens_per_s']:,} | {row['share_of_rate']:.3f} |"
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=411_612.0, help="device tokens/s on padded tokens ((a'))")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--layers-ahead", type=int, default=4, help="the bulk gate's limit")
    p.add_argument("--layer-host-ms", type=float, default=0.15, help="GIL-held host time per layer launch")
    p.add_argument("--prep-ms", type=float, default=1.0, help="GIL-held host time per batch before its layers")
    p.add_argument("--sync", action="store_true", help="each forward waits for the device before launching")
    p.add_argument("--packed", action="store_true", help="packed (padding-free) bulk batches")
    p.add_argument("--loop-stall-ms", type=float, default=0.0, help="event-loop stall after every 2 ms idle")
    add_bulk_load_arguments(p, corpus_size=20_000)
    p.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenario", action="append", default=None,
                   help="flags of this page added to the others for one row, written --scenario='--sync "
                        "--loop-stall-ms 8' (--scenario= : the others alone); repeatable")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (and .md beside it)")
    given = list(argv if argv is not None else sys.argv[1:])
    args = p.parse_args(given)
    rows = []
    for scenario in args.scenario or [""]:
        rows.append({"scenario": scenario, **asyncio.run(run_model(p.parse_args([*given, *shlex.split(scenario)])))})
    shown = shlex.join(given)
    text = markdown(rows, shown)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": shown, "rows": rows}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
