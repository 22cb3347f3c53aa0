"""The one place speed lives: a causal decoder's last-token forward, eager, CUDA-graphed or compiled.

Every backend whose model is a causal decoder read at its last real token (Qwen3-Embedding, the
Qwen3-Reranker yes/no head and its seq-cls conversion, the text-only batches of the Qwen-VL embedders and
rerankers) runs its batches through :class:`LastTokenDecoder`:

* inputs are padded on the **right** and run **without an attention mask**: in a causal decoder a real
  token only attends to the tokens before it, all real, so every real token's hidden state is the one the
  model computes for that text alone (bit-for-bit on CPU; within kernel rounding on a GPU). Positions are
  0..n-1 from the first token, as for an unpadded input. Right padding is what makes fixed-shape buckets
  exact: a batch of 3 texts of 20 tokens runs in the (4, 32) graph with one dummy row and 12 pad columns;
* **CUDA graphs** (``--cuda-graphs``): for the priority lane (search queries), one graph per (batch, length)
  bucket — batch 1, 2, 4 … ``--cuda-graph-max-batch``, length 32, 64 … ``--cuda-graph-max-length`` —
  captured from the eager forward in a background thread after start-up (so Pascal cards without Triton
  get them too), all buckets sharing one memory pool. A replay launches the whole forward at once;
* **compiled graphs** (``--compiled-graph-buckets``, needs compilation too): a few query buckets (default
  1x64 and 8x64) also get a *static-shape* ``torch.compile`` of the whole forward, captured as a
  CUDA graph: fused kernels and one launch. On the H200 (2026-12-04, Qwen3-Embedding-0.6B shape, bf16) a
  1x32 forward took 1.76 ms this way against 4.55 ms for the graph of the eager forward (probe of 12-02:
  cosine >= 0.9998 to eager), at ~40-50 s of compilation per bucket with a cold cache. A query takes the
  smallest compiled bucket it fits, else the smallest eager-graph bucket, else runs eager;
* **compilation** (``--compile``): regional ``torch.compile`` of the decoder *layer* with dynamic batch and
  length (the layers share one compiled graph, so compiling costs one layer, and every shape runs without
  bucket padding), compiled and warmed in the background with the inductor cache on disk (a restart is
  warm), then swapped into every layer at once. Between layers the forward stays Python, so the
  priority gate (:class:`~servers.backends.torch_runtime.PriorityGate`) still pauses bulk work for a query.
  The dynamic compiled layers are never captured (on the H200 run of 2026-12-02 each such call inside a
  capture fell back to eager); the compiled graphs above are static-shape compilations of their own. Needs
  Triton (compute capability >= 7.0);
* **packed bulk batches** (``--bulk-packing``, default ``auto``: CUDA with FlashAttention-2's varlen
  kernel): a bulk batch runs as one row of its texts back to back, no padding
  (:mod:`servers.backends.packed`), through the same (compiled) layers; the priority lane stays padded;
* every forward hands the decoder a ready, empty mask mapping where the model takes one
  (:func:`mask_free_kwargs`): transformers' own mask building synchronised the device once per forward;
* order of the background work: eager graphs (seconds), then the compiled graphs, then the regional
  compilation (the compiled graphs are traced before the layers are wrapped for it);
* until a bucket is captured or the compilation is done, that work runs eager: start-up is never blocked.

The graph/compiled output is the head's: pooled hidden states (embedders) or raw yes/no scores (rerankers),
float32, ``(n, out)``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from servers.backends.device import Placement
from servers.backends.packed import flash_varlen_available, pack, packed_inputs, use_packed_attention
from servers.settings import DEFAULT_COMPILED_GRAPH_BUCKETS, parse_graph_buckets

logger = logging.getLogger(__name__)

#: Smallest length bucket: queries with an instruction prefix are rarely shorter.
MIN_GRAPH_LENGTH = 32
#: Largest bucket in tokens (batch x length): the shared graph pool is sized by the largest bucket, and
#: search queries are short; a longer priority batch runs on the compiled or eager path instead.
MAX_GRAPH_TOKENS = 1024
#: Where inductor's compiled kernels are kept between runs unless ``--compile-cache-dir`` says otherwise.
DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "rag-plugins", "inductor")

Head = Callable[[torch.Tensor], torch.Tensor]
#: Least cosine between a probe's packed and padded outputs for packing to be switched on (kernel rounding
#: in half precision stays far above it; a wrong position or mask falls far below).
PACKING_MIN_COSINE = 0.999


@dataclass(frozen=True)
class AccelerationSettings:
    """What to accelerate and how (resolved from the server settings and the device).

    Attributes:
        cuda_graphs: ``auto`` (on for CUDA devices), ``on`` or ``off``.
        compile: ``auto`` (on for CUDA devices with Triton and compute capability >= 7.0), ``on`` or ``off``.
        graph_max_batch: Largest batch bucket of the priority-lane graphs (powers of two from 1).
        graph_max_length: Largest length bucket (powers of two from 32).
        compile_cache_dir: Inductor's on-disk cache (None: :data:`DEFAULT_COMPILE_CACHE`).
        compiled_graph_buckets: (batch, length) buckets that get a static compiled forward captured as a
            CUDA graph (needs both graphs and compilation on).
        bulk_packing: ``auto`` (default): bulk batches run packed, padding-free (:mod:`servers.backends.packed`)
            on CUDA devices with FlashAttention-2's varlen kernel, where the decoder allows it and a probe
            agrees with the padded forward; ``on``: the same anywhere (the CPU runs a per-text reference,
            exact but not faster), with a warning when refused; ``off``.
    """

    cuda_graphs: str = "auto"
    compile: str = "auto"
    graph_max_batch: int = 8
    graph_max_length: int = 512
    compile_cache_dir: str | None = None
    compiled_graph_buckets: tuple[tuple[int, int], ...] = parse_graph_buckets(DEFAULT_COMPILED_GRAPH_BUCKETS)
    bulk_packing: str = "auto"

    @classmethod
    def from_settings(cls, settings: Any) -> AccelerationSettings:
        return cls(
            cuda_graphs=settings.cuda_graphs, compile=settings.compile,
            graph_max_batch=settings.cuda_graph_max_batch, graph_max_length=settings.cuda_graph_max_length,
            compile_cache_dir=settings.compile_cache_dir,
            compiled_graph_buckets=parse_graph_buckets(settings.compiled_graph_buckets),
            bulk_packing=settings.bulk_packing,
        )


#: ``acceleration_info()`` states of a part (graphs, compiled graphs, compile) still being built.
BUSY_STATES = frozenset({"pending", "capturing", "compiling"})


def acceleration_settled(info: dict[str, Any]) -> bool:
    """Whether no part of an ``acceleration_info()`` is still being built (each is ready, off, failed or
    stopped)."""
    return not any(str(info.get(part, "off")) in BUSY_STATES for part in ("graphs", "compiled_graphs", "compile"))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def graph_buckets(max_batch: int, max_length: int) -> list[tuple[int, int]]:
    """The (batch, length) buckets: powers of two from 1 to ``max_batch`` x from 32 to ``max_length``, at most
    :data:`MAX_GRAPH_TOKENS` tokens each (sorted by batch, then length)."""
    batches = [b for b in (2**i for i in range(16)) if b <= max(1, max_batch)]
    lengths = [n for n in (MIN_GRAPH_LENGTH * 2**i for i in range(16)) if n <= max(MIN_GRAPH_LENGTH, max_length)]
    return [(b, n) for b in batches for n in lengths if b * n <= max(MAX_GRAPH_TOKENS, MIN_GRAPH_LENGTH)]


def decoder_layers(model: Any) -> list[Any]:
    """The model's longest ``ModuleList`` (its stack of decoder layers), or [] when it has none."""
    stacks: list[torch.nn.ModuleList] = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    if not stacks:
        return []
    longest = max(stacks, key=lambda m: len(list(m.children())))
    return list(longest.children())


class _LayerForward:
    """A layer's ``forward`` that runs the compiled one once it is switched on, else the eager one.

    The compiled callable is shared by every layer (same code, parameters as inputs); a call that would
    recompile (a shape the warm-up did not cover) raises under the ``fail_on_recompile`` stance and that
    layer runs eager instead, so a serving thread never stalls on the compiler.
    """

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any]) -> None:
        self.eager = eager
        self.compiled = compiled
        self.enabled = threading.Event()
        self.failures = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.enabled.is_set():
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self.failures += 1
                if self.failures == 1:  # once per layer: enough to diagnose, never a log flood
                    logger.warning("compiled decoder layer fell back to eager (%s: %s)", type(exc).__name__,
                                   str(exc)[:300])
        return self.eager(*args, **kwargs)


@torch.inference_mode()
def mask_free_kwargs(decoder: Any, device: torch.device, pad_id: int) -> dict[str, Any]:
    """Keyword arguments that let ``decoder`` skip building an attention mask, or ``{}`` where it cannot.

    Our inputs are right-padded and unmasked, so the mask transformers builds for them is always None (SDPA
    then runs with ``is_causal``). Building it is not free: with no mask and no cache, ``create_causal_mask``
    looks for packed sequences in the position ids and ends in a Python ``if`` on a device tensor, which
    synchronises the device in every eager forward, so a bulk thread could not queue batch k+1's layers
    until batch k had finished. Decoders that accept a precomputed mask mapping (one None per layer type:
    Qwen3, Qwen2-VL's language model, ...) get one. One tiny forward each way decides: an error or any
    difference in the output keeps the default.
    """
    layer_types = getattr(getattr(decoder, "config", None), "layer_types", None)
    if not layer_types or set(layer_types) != {"full_attention"}:
        return {}  # a sliding-window layer needs its mask: None would make it attend to everything
    kwargs = {"attention_mask": dict.fromkeys(layer_types)}
    ids = torch.full((1, 3), pad_id, dtype=torch.long, device=device)
    try:
        default = decoder(input_ids=ids, use_cache=False).last_hidden_state
        mapped = decoder(input_ids=ids, use_cache=False, **kwargs).last_hidden_state
    except Exception:  # this decoder builds its mask itself (e.g. Qwen3-VL's text model)
        return {}
    return kwargs if torch.equal(default, mapped) else {}


def right_padded(batch: Sequence[Sequence[int]], pad_id: int, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` right-padded into a (rows, length) int64 CPU tensor and each row's last real index (rows,).

    Rows past ``len(batch)`` are dummy rows of pads (index 0), so a batch fits a bigger graph bucket. Built
    with one flat copy (not a tensor per row): on the H200 the per-row version was 7.5% of the bulk model
    thread's samples.
    """
    lengths = np.fromiter((len(seq) for seq in batch), dtype=np.int64, count=len(batch))
    flat = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64, count=int(lengths.sum()))
    ids = np.full((rows, length), pad_id, dtype=np.int64)
    ids[: len(batch)][np.arange(length) < lengths[:, None]] = flat
    last = np.zeros(rows, dtype=np.int64)
    last[: len(batch)] = lengths - 1
    return torch.from_numpy(ids), torch.from_numpy(last)


class _GraphBucket:
    """One captured forward of a fixed (batch, length): static input buffers and a static output."""

    def __init__(self, run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: int, length: int,
                 pad_id: int, device: torch.device, pool: Any, side: Any) -> None:
        self.rows, self.length = rows, length
        self.ids = torch.full((rows, length), pad_id, dtype=torch.long, device=device)
        self.last = torch.zeros(rows, dtype=torch.long, device=device)
        # One capture stream for every bucket: the caching allocator reuses a freed block only on the stream
        # that allocated it, so per-bucket streams would grow the shared pool by every bucket's peak.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture: cuBLAS handles, lazy inits, allocator
                run(self.ids, self.last)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the serving threads keep running eager work on other streams meanwhile.
        with torch.cuda.graph(self.graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            self.out = run(self.ids, self.last)
        side.synchronize()

    def replay(self, ids: torch.Tensor, last: torch.Tensor, n: int) -> torch.Tensor:
        """Copy the (rows, length) inputs in (current stream), replay, and return the first ``n`` outputs."""
        self.ids.copy_(ids, non_blocking=True)
        self.last.copy_(last, non_blocking=True)
        self.graph.replay()
        return self.out[:n]


class LastTokenDecoder:
    """Runs a causal decoder on right-padded ids and returns ``head(hidden state of each last real token)``.

    Args:
        decoder: Module called as ``decoder(input_ids=ids, use_cache=False)``, returning an output with
            ``last_hidden_state`` (a ``Qwen3Model``, a Qwen-VL ``language_model`` …).
        placement: Device and dtype.
        pad_id: Id written into padding (never attended to by real tokens).
        head: Maps last-token hidden states (n, hidden) to the outputs (n, out); None: the hidden states.
        acceleration: Graph and compile settings.
        max_length: The backend's max input length (graph buckets stop there).
        name: Label in logs.
    """

    def __init__(self, decoder: Any, placement: Placement, pad_id: int, head: Head | None,
                 acceleration: AccelerationSettings, max_length: int, name: str = "decoder") -> None:
        self.decoder = decoder
        self.placement = placement
        self.pad_id = pad_id
        self.head = head
        self.name = name
        self.acceleration = acceleration
        cuda = placement.device.type == "cuda"
        self.graphs_enabled = cuda and acceleration.cuda_graphs in ("auto", "on")
        capability = torch.cuda.get_device_capability(placement.device) if cuda else (0, 0)
        self.compile_enabled = cuda and (
            acceleration.compile == "on"
            or (acceleration.compile == "auto" and capability >= (7, 0) and triton_available())
        )
        self._buckets = (
            [(b, n) for b, n in graph_buckets(acceleration.graph_max_batch, acceleration.graph_max_length)
             if n <= max_length] if self.graphs_enabled else []
        )
        # Static compiled graphs need both: Triton for the kernels and graphs on for the capture.
        self._compiled_keys = sorted(
            (k for k in acceleration.compiled_graph_buckets if k[1] <= max_length),
            key=lambda k: (k[0] * k[1], k),
        ) if self.graphs_enabled and self.compile_enabled else []
        self._mask_free = mask_free_kwargs(decoder, placement.device, pad_id)
        self._graphs: dict[tuple[int, int], _GraphBucket] = {}
        self._compiled_graphs: dict[tuple[int, int], _GraphBucket] = {}
        self._graph_lock = threading.Lock()  # a priority forward and a capture never overlap
        self._pool: Any = None
        self._side: Any = None
        self._compiled_layers: list[_LayerForward] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Which path priority forwards took (read by /info and the benchmarks).
        self.priority_paths = {"compiled_graph": 0, "graph": 0, "eager": 0}
        self._stats: dict[str, Any] = {
            "graphs": "off" if not self.graphs_enabled else "pending",
            "compiled_graphs": "pending" if self._compiled_keys else "off",
            "compile": "off" if not self.compile_enabled else "pending",
        }
        self.packing = False
        self._stats["bulk_packing"] = "off"
        mode = acceleration.bulk_packing
        if mode == "auto" and not (cuda and flash_varlen_available(placement.device, placement.dtype)):
            self._stats["bulk_packing"] = "off (auto: CUDA with FlashAttention-2's varlen kernel only)"
        elif mode in ("auto", "on"):
            refusal = self._enable_packing()
            self.packing = refusal is None
            self._stats["bulk_packing"] = "on" if refusal is None else f"off ({refusal})"
            if refusal is not None:
                # Asked for explicitly, a refusal is worth a warning; under auto it is the expected case
                # for models that cannot pack (Qwen3-VL's text model, sliding windows, other attentions).
                log = logger.warning if mode == "on" else logger.info
                log("%s: bulk packing refused: %s", name, refusal)

    # ------------------------------------------------------------------------------------------- forward
    def _pooled(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The eager forward: (rows, length) ids and (rows,) last indices -> (rows, out) float32."""
        return self._head(self._last_hidden(ids, last))

    def _packed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """The packed forward (:mod:`servers.backends.packed`): (n, out) float32, no padding computed."""
        return self._head(self._last_hidden_packed(batch))

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.head(pooled) if self.head is not None else pooled
        return out.float()

    def _last_hidden(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(rows, hidden): each row's hidden state at its last real token, from a right-padded batch."""
        hidden = self.decoder(input_ids=ids, use_cache=False, **self._mask_free).last_hidden_state
        rows = torch.arange(ids.shape[0], device=ids.device)
        return hidden[rows, last]

    def _last_hidden_packed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """(n, hidden): each text's hidden state at its last token, from one packed row."""
        inputs, last = packed_inputs(pack(batch), self.placement.device)
        hidden = self.decoder(use_cache=False, **self._mask_free, **inputs).last_hidden_state
        return hidden[0, last]

    def _enable_packing(self) -> str | None:
        """Switch the decoder to packed attention if it agrees with the padded forward; else why not.

        The probe compares last-token hidden states, before any head: a reranker's head reduces each text
        to one score, and a cosine over a few scores that share an offset would hide a wrong forward.
        """
        if not self._mask_free:
            return "the model builds its own attention mask"
        previous = str(self.decoder.config._attn_implementation)
        if previous != "sdpa":
            return f"the model runs {previous} attention; packing replaces SDPA only"
        device, dtype = self.placement.device, self.placement.dtype
        if device.type == "cuda" and not flash_varlen_available(device, dtype):
            return "needs FlashAttention-2's varlen kernel: compute capability >= 8.0 in float16/bfloat16"
        rng = np.random.default_rng(0)
        vocab = int(getattr(self.decoder.config, "vocab_size", 1000))
        probe = [rng.integers(0, vocab, size=n).tolist() for n in (37, 5, 64, 1)]
        try:
            use_packed_attention(self.decoder)
            with torch.inference_mode():
                ids, last = right_padded(probe, self.pad_id, len(probe), max(map(len, probe)))
                padded = self._last_hidden(ids.to(device), last.to(device)).float()
                packed = self._last_hidden_packed(probe).float()
                cosine = float(torch.nn.functional.cosine_similarity(padded, packed, dim=-1).min())
        except Exception as exc:
            self.decoder.set_attn_implementation(previous)
            return f"probe failed: {type(exc).__name__}: {str(exc)[:200]}"
        if not cosine >= PACKING_MIN_COSINE:
            self.decoder.set_attn_implementation(previous)
            return f"probe disagrees with the padded forward (cosine {cosine:.5f})"
        return None

    def _graph_for(self, n: int, length: int) -> tuple[str, _GraphBucket] | None:
        """The smallest ready compiled graph that fits (n rows of up to ``length`` tokens), else the smallest
        ready eager graph, else None. Reads lists that never change and dicts that only grow."""
        for key in self._compiled_keys:  # sorted by tokens: the first fit is the smallest
            graph = self._compiled_graphs.get(key)
            if graph is not None and key[0] >= n and key[1] >= length:
                return "compiled_graph", graph
        for key in self._buckets:  # sorted by batch, then length
            graph = self._graphs.get(key)
            if graph is not None and key[0] >= n and key[1] >= length:
                return "graph", graph
        return None

    def run(self, batch: Sequence[Sequence[int]], lane: str) -> torch.Tensor:
        """Queue a batch's forward on the current stream; returns (n, out) float32 on the device."""
        device = self.placement.device
        n = len(batch)
        length = max(len(seq) for seq in batch)
        if lane == "priority" and (self._graphs or self._compiled_graphs):
            found = self._graph_for(n, length)
            if found is not None:
                path, graph = found
                ids, last = right_padded(batch, self.pad_id, graph.rows, graph.length)
                self.priority_paths[path] += 1
                with self._graph_lock:
                    return graph.replay(ids.pin_memory(), last.pin_memory(), n)
        if lane != "priority" and self.packing:
            return self._packed(batch)
        ids, last = right_padded(batch, self.pad_id, n, length)
        if device.type == "cuda":
            ids, last = ids.pin_memory().to(device, non_blocking=True), last.pin_memory().to(device, non_blocking=True)
        if lane == "priority":
            self.priority_paths["eager"] += 1
            if self._graphs:
                with self._graph_lock:
                    return self._pooled(ids, last)
        return self._pooled(ids, last)

    # -------------------------------------------------------------------------------------- acceleration
    def start(self) -> None:
        """Capture the graphs, then compile, in a background thread (serving continues eager meanwhile)."""
        if self._thread is not None or self._stopping.is_set() or not (self.graphs_enabled or self.compile_enabled):
            return
        self._thread = threading.Thread(target=self._accelerate, name=f"accelerate-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the background work to end at its next step (a bucket, a phase); what is ready stays in use.

        A compilation already running finishes its bucket first (inductor cannot be interrupted); without
        this, a stopped engine's thread kept compiling, holding the GIL and the GPU for minutes.
        """
        self._stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work is done (benchmarks, tests). Returns whether it finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @torch.inference_mode()
    def _accelerate(self) -> None:
        device = self.placement.device
        try:
            with torch.cuda.device(device):
                if self.graphs_enabled and not self._stopping.is_set():
                    self._capture_graphs()
                if self._compiled_keys and self._pool is not None and not self._stopping.is_set():
                    # Before the regional compilation: its layer wrappers must not be traced into these.
                    self._capture_compiled_graphs()
                if self.compile_enabled and not self._stopping.is_set():
                    self._compile()
            for key in ("graphs", "compiled_graphs", "compile"):
                if self._stopping.is_set() and self._stats.get(key) in BUSY_STATES:
                    self._stats[key] = "stopped"
        except Exception:  # never take the server down: it keeps serving eager
            logger.exception("%s: acceleration failed; serving eager", self.name)

    def _capture_graphs(self) -> None:
        device = self.placement.device
        self._stats["graphs"] = "capturing"
        started = time.perf_counter()
        torch.cuda.synchronize(device)
        reserved_before = torch.cuda.memory_reserved(device)
        pool = self._pool = torch.cuda.graph_pool_handle()
        side = self._side = torch.cuda.Stream(device=device)
        failed = 0
        # Largest first: the shared pool is sized by the largest bucket once, the rest fit inside it.
        for key in sorted(self._buckets, key=lambda k: k[0] * k[1], reverse=True):
            if self._stopping.is_set():
                break
            try:
                with self._graph_lock:
                    self._graphs[key] = _GraphBucket(self._pooled, key[0], key[1], self.pad_id, device, pool, side)
            except Exception as exc:
                failed += 1
                logger.warning("%s: CUDA graph capture of bucket %s failed (%s)", self.name, key, exc)
        seconds = time.perf_counter() - started
        torch.cuda.synchronize(device)
        pool_bytes = max(0, torch.cuda.memory_reserved(device) - reserved_before)
        self._stats.update(
            graphs="ready" if self._graphs else ("stopped" if self._stopping.is_set() else "failed"),
            graph_buckets=sorted(self._graphs),
            graph_capture_s=round(seconds, 2), graph_pool_bytes=int(pool_bytes), graph_failures=failed,
        )
        logger.info("%s: captured %d CUDA graphs in %.1fs (%.0f MiB pool)", self.name, len(self._graphs), seconds,
                    pool_bytes / 2**20)

    def _use_compile_cache(self) -> str:
        """Point inductor at the on-disk cache and allow this process to compile (again); returns the cache."""
        # --compile-cache-dir wins; without it an inherited TORCHINDUCTOR_CACHE_DIR does, then our default.
        if self.acceleration.compile_cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.acceleration.compile_cache_dir
        cache = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", DEFAULT_COMPILE_CACHE)
        os.makedirs(cache, exist_ok=True)
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # A process that compiles a second model (tests, benchmarks) must be allowed to compile again.
        with contextlib.suppress(Exception):
            torch.compiler.set_stance("default")
        return cache

    def _capture_compiled_graphs(self) -> None:
        """Compile the whole forward for each compiled bucket's static shape and capture it as a graph.

        Compilation (the slow part) runs outside the graph lock, on the side stream, while queries keep
        replaying the eager graphs; only the capture itself takes the lock.
        """
        device = self.placement.device
        self._use_compile_cache()
        self._stats["compiled_graphs"] = "compiling"
        started = time.perf_counter()
        torch.cuda.synchronize(device)
        reserved_before = torch.cuda.memory_reserved(device)
        static = torch.compile(self._pooled, dynamic=False)
        failed = 0
        seconds: dict[str, float] = {}
        for key in self._compiled_keys:
            if self._stopping.is_set():
                break
            t0 = time.perf_counter()
            try:
                ids = torch.full(key, self.pad_id, dtype=torch.long, device=device)
                last = torch.full((key[0],), key[1] - 1, dtype=torch.long, device=device)
                self._side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(self._side):
                    static(ids, last)  # compiles this shape (or loads it from the inductor cache)
                self._side.synchronize()
                with self._graph_lock:
                    self._compiled_graphs[key] = _GraphBucket(static, key[0], key[1], self.pad_id, device,
                                                              self._pool, self._side)
            except Exception as exc:
                failed += 1
                logger.warning("%s: compiled graph of bucket %s failed (%s: %s)", self.name, key,
                               type(exc).__name__, str(exc)[:300])
            seconds[f"{key[0]}x{key[1]}"] = round(time.perf_counter() - t0, 1)
        torch.cuda.synchronize(device)
        total = time.perf_counter() - started
        self._stats.update(
            compiled_graphs="ready" if self._compiled_graphs else ("stopped" if self._stopping.is_set() else "failed"),
            compiled_graph_buckets=sorted(self._compiled_graphs), compiled_graph_s=round(total, 1),
            compiled_graph_s_per_bucket=seconds, compiled_graph_failures=failed,
            compiled_graph_pool_bytes=int(max(0, torch.cuda.memory_reserved(device) - reserved_before)),
        )
        logger.info("%s: %d compiled CUDA graphs ready in %.1fs (%s)", self.name, len(self._compiled_graphs), total,
                    seconds)

    def _compile(self) -> None:
        """Compile the decoder layer (regional compilation), warm it on the shapes serving will use, switch
        every layer to it."""
        device = self.placement.device
        layers = decoder_layers(self.decoder)
        if not layers:
            self._stats["compile"] = "off (no layer stack found)"
            return
        cache = self._use_compile_cache()
        self._stats["compile"] = "compiling"
        started = time.perf_counter()
        compiled = torch.compile(type(layers[0]).forward, dynamic=True)
        wrappers = []
        for layer in layers:
            eager = layer.forward
            wrapper = _LayerForward(eager, lambda *a, _layer=layer, **k: compiled(_layer, *a, **k))
            layer.forward = wrapper
            wrappers.append(wrapper)
        # Warm in this thread only (thread-local switch): batch 1 specialises, batch >= 2 is dynamic.
        warm = _ThreadLocalSwitch(wrappers)
        stream = torch.cuda.Stream(device=device)
        with warm, torch.cuda.stream(stream):
            for rows, length in ((4, 64), (3, 200), (1, 64), (1, 300), (2, 32)):
                ids = torch.full((rows, length), self.pad_id, dtype=torch.long, device=device)
                last = torch.full((rows,), length - 1, dtype=torch.long, device=device)
                self._pooled(ids, last)
            if self.packing:  # the packed calls are their own (dynamic) graph of the layer
                for lengths in ((40, 7, 300), (64, 64), (5, 1, 9, 200)):
                    self._packed([[self.pad_id] * n for n in lengths])
        stream.synchronize()
        try:
            torch.compiler.set_stance("fail_on_recompile")
        except Exception:  # older torch: a rare recompile then happens in the serving thread
            logger.info("%s: torch has no fail_on_recompile stance", self.name)
        for wrapper in wrappers:
            wrapper.enabled.set()
        self._compiled_layers = wrappers
        seconds = time.perf_counter() - started
        self._stats.update(compile="ready", compile_s=round(seconds, 1), compile_cache_dir=cache,
                           compiled_layers=len(wrappers))
        logger.info("%s: compiled decoder layer ready in %.1fs for %d layers (cache %s)", self.name, seconds,
                    len(wrappers), cache)

    def info(self) -> dict[str, Any]:
        """Acceleration state for ``/info``: requested modes, what is ready, warm-up times, graph memory."""
        failures = sum(w.failures for w in self._compiled_layers)
        return {
            "cuda_graphs_setting": self.acceleration.cuda_graphs, "compile_setting": self.acceleration.compile,
            "graph_buckets_planned": len(self._buckets),
            "compiled_graph_buckets_planned": [f"{b}x{n}" for b, n in self._compiled_keys], **self._stats,
            "priority_paths": dict(self.priority_paths), "mask_free": bool(self._mask_free),
            **({"compiled_layer_fallbacks": failures} if self._compiled_layers else {}),
        }


class _ThreadLocalSwitch:
    """Turns compiled layers on for the calling thread only (the background warm-up), by swapping each
    wrapper's switch for a thread-local one for the duration of the ``with`` block."""

    def __init__(self, wrappers: list[_LayerForward]) -> None:
        self.wrappers = wrappers
        self._saved: list[threading.Event] = []

    def __enter__(self) -> None:
        me = threading.get_ident()
        self._saved = [w.enabled for w in self.wrappers]
        for w in self.wrappers:
            w.enabled = _OnlyFor(me)  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        for w, event in zip(self.wrappers, self._saved, strict=True):
            w.enabled = event


class _OnlyFor:
    """An ``is_set()`` that is true in one thread."""

    def __init__(self, ident: int) -> None:
        self.ident = ident

    def is_set(self) -> bool:
        return threading.get_ident() == self.ident
