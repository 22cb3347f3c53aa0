"""One settings object per server process.

Every field is a CLI flag of ``rag-serve`` and an environment variable ``RAG_SERVE_<FIELD>`` (upper case).
The environment is read only when :func:`settings_from_env` or the CLI builds the object, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, get_type_hints

from servers.kinds import KINDS, SERVER_KINDS, kind_spec

ServerKind = str
"""A key of :data:`servers.kinds.KINDS` (``embed``, ``rerank``, ``mm-embed``, ``search``)."""
ENV_PREFIX = "RAG_SERVE_"

# Batching defaults: the one place they are written (the scheduler's ``BatchLimits`` refers to these).
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE_ITEMS = 100_000
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_BULK_WORKERS = 1
#: Query buckets (batch x length) that get a static compiled forward captured as a CUDA graph (see
#: servers.backends.accelerated): single queries of up to 64 tokens (a 32-token query plus Qwen3-Embedding's
#: instruction is ~53) and bursts of up to 8. Two, not the four (1x32, 1x64, 4x64, 8x64) measured on the
#: H200 on 2026-12-04: each costs ~50 s of cold compilation, and padding costs little inside a compiled
#: graph (1x32 1.76 ms, 4x32 2.01 ms, 8x32 2.15 ms there), so 1x32 and 4x64 saved ~0.1 ms for ~100 s.
DEFAULT_COMPILED_GRAPH_BUCKETS: tuple[str, ...] = ("1x64", "8x64")


def parse_graph_buckets(values: tuple[str, ...] | list[str]) -> tuple[tuple[int, int], ...]:
    """``("1x32", "4x64")`` -> ``((1, 32), (4, 64))``; ``("off",)`` or ``()`` -> none.

    Raises:
        ValueError: an entry is not ``BATCHxLENGTH`` with both >= 1.
    """
    if tuple(v.strip().lower() for v in values) in {(), ("off",), ("none",)}:
        return ()
    out = []
    for value in values:
        batch, sep, length = value.strip().lower().partition("x")
        if not (sep and batch.isdigit() and length.isdigit() and int(batch) >= 1 and int(length) >= 1):
            raise ValueError(f"a graph bucket is BATCHxLENGTH like 4x64, not {value!r}")
        out.append((int(batch), int(length)))
    return tuple(sorted(set(out), key=lambda k: (k[0] * k[1], k)))


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one model server (one model on one device).

    Attributes mirror the CLI flags one to one; see ``rag-serve <kind> --help`` for the text of each.
    """

    kind: ServerKind = "embed"
    model: str = ""
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_length: int = 8192
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS
    max_client_batch: int = 2048
    max_body_bytes: int = 32 * 1024 * 1024
    bulk_workers: int = DEFAULT_BULK_WORKERS
    last_token_padding: str = "right"
    priority_max_items: int = 8
    priority_max_tokens: int = 4096
    tokenizer_threads: int = 2
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    instruction: str | None = None
    log_level: str = "info"
    warmup: bool = True
    #: Seconds a SIGTERM'd server keeps finishing accepted work (new work gets 503) before it exits anyway.
    drain_grace_s: float = 30.0
    #: Freeze the start-up heap out of garbage collection once ready and once accelerated (servers/heap.py).
    gc_freeze: bool = True
    # Multimodal embedding server (mm-embed): image sources, image checks, model pixel range.
    image_root: tuple[str, ...] = ()
    allow_url_images: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    url_timeout_s: float = 10.0
    # None: the model recipe's range (GME 256..1280 x 28², Qwen3-VL 4..1800 x 32² embed / 4..1280 x 32² rerank).
    min_pixels: int | None = None
    max_pixels: int | None = None
    # Vision-language models: decoder positions (recipe: GME sequential, Qwen3-VL / Lychee M-RoPE).
    vision_positions: str = "recipe"
    # Yes/no rerankers: a JSON file replacing the recipe's prompt template.
    prompt_template: str | None = None
    # Speed (CUDA only): graphs of the priority-lane forward, a compiled bulk-lane forward.
    cuda_graphs: str = "auto"
    compile: str = "auto"
    cuda_graph_max_batch: int = 8
    cuda_graph_max_length: int = 512
    compile_cache_dir: str | None = None
    compiled_graph_buckets: tuple[str, ...] = DEFAULT_COMPILED_GRAPH_BUCKETS
    # Text embed / rerank: bulk batches padding-free (packed), where the model and the device allow it.
    bulk_packing: str = "auto"
    # Search server (search): the Milvus collection it holds and the model servers it calls.
    milvus_uri: str | None = None
    collection: str | None = None
    embed_url: str | None = None
    mm_embed_url: str | None = None
    rerank_url: str | None = None
    upstream_api_key: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(SERVER_KINDS)}; got {self.kind!r}")
        reads = KINDS[self.kind].settings if self.kind in KINDS else frozenset()
        if "model" in reads and not self.model:
            problems.append("model is required (--model PATH_OR_HF_ID or RAG_SERVE_MODEL)")
        for name in ("milvus_uri", "collection", "embed_url"):
            if self.kind == "search" and not getattr(self, name):
                problems.append(f"{name} is required (--{name.replace('_', '-')} or {env_var_name(name)})")
        for name in ("max_length", "max_batch_tokens", "max_batch_size", "max_queue_items", "max_client_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.bulk_workers < 1:
            problems.append("bulk_workers must be >= 1")
        for name in ("cuda_graphs", "compile", "bulk_packing"):
            if getattr(self, name) not in ("auto", "on", "off"):
                problems.append(f"{name} must be 'auto', 'on' or 'off'")
        if self.cuda_graph_max_batch < 1 or self.cuda_graph_max_length < 1:
            problems.append("cuda_graph_max_batch and cuda_graph_max_length must be >= 1")
        try:
            parse_graph_buckets(self.compiled_graph_buckets)
        except ValueError as exc:
            problems.append(f"compiled_graph_buckets: {exc}")
        if self.vision_positions not in ("recipe", "sequential", "mrope"):
            problems.append("vision_positions must be 'recipe', 'sequential' or 'mrope'")
        if self.last_token_padding not in ("left", "right"):
            problems.append("last_token_padding must be 'left' or 'right'")
        for name in ("max_image_bytes", "max_image_pixels", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            problems.append("min_pixels must be <= max_pixels")
        if self.url_timeout_s <= 0:
            problems.append("url_timeout_s must be > 0")
        if self.drain_grace_s < 0:
            problems.append("drain_grace_s must be >= 0")
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be >= 0")
        if problems:
            raise ValueError("invalid server settings: " + "; ".join(problems))

    @property
    def model_name(self) -> str:
        """Name reported to clients: ``served_model_name``, else the model path/ID (the kind for a search
        server, which holds no model)."""
        return self.served_model_name or self.model or self.kind

    def with_overrides(self, **changes: Any) -> ServerSettings:
        return replace(self, **changes)


def _parse_value(raw: str, annotation: Any) -> Any:
    text = str(annotation)
    if "tuple" in text:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if "bool" in text:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if "int" in text and "None" not in text:
        return int(raw)
    if "int" in text:
        return None if raw.strip() == "" else int(raw)
    if "float" in text:
        return float(raw)
    if raw == "" and "None" in text:
        return None
    return raw


def env_var_name(field_name: str) -> str:
    """``max_batch_tokens`` -> ``RAG_SERVE_MAX_BATCH_TOKENS``."""
    return ENV_PREFIX + field_name.upper()


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings values present in ``environ`` (``RAG_SERVE_*``), parsed to their field types."""
    hints = get_type_hints(ServerSettings)
    values: dict[str, Any] = {}
    for f in fields(ServerSettings):
        key = env_var_name(f.name)
        if key in environ:
            values[f.name] = _parse_value(environ[key], hints[f.name])
    # RAG_SERVE_API_KEY (singular) is the spelling most people type.
    if "api_keys" not in values and env_var_name("api_key") in environ:
        values["api_keys"] = _parse_value(environ[env_var_name("api_key")], tuple[str, ...])
    return values


def settings_from_env(environ: Mapping[str, str] | None = None, **explicit: Any) -> ServerSettings:
    """Build settings from defaults (the kind's, then the dataclass's), ``RAG_SERVE_*`` variables, then
    ``explicit`` keyword values."""
    values = env_overrides(os.environ if environ is None else environ)
    values.update({k: v for k, v in explicit.items() if v is not None})
    kind = values.get("kind", ServerSettings.kind)
    if kind in KINDS:
        values = {**kind_spec(kind).defaults, **values}
    return ServerSettings(**values)


@dataclass(frozen=True)
class SupervisorSettings:
    """Restart policy of the supervisor ``rag-serve up`` keeps per stack.

    Read from defaults, then the stack file's ``supervisor:`` mapping, then ``RAG_SERVE_<FIELD>``
    variables, then ``rag-serve up`` flags (see :func:`supervisor_settings`).
    """

    #: Restarts in a row without the server staying healthy for ``stable_s`` before the supervisor gives up.
    max_restarts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    health_interval_s: float = 2.0
    #: Failed /health checks in a row (of a server that was healthy) before it is killed and restarted.
    health_failures: int = 3
    health_timeout_s: float = 2.0
    #: A server not healthy this long after its start is killed and restarted (model loading included).
    start_timeout_s: float = 600.0
    #: Healthy this long: the crash-loop counter and the backoff start again from zero.
    stable_s: float = 60.0
    #: ``down``: seconds each server gets to drain after SIGTERM before SIGKILL.
    stop_grace_s: float = 40.0

    def __post_init__(self) -> None:
        problems = [f"{f.name} must be > 0" for f in fields(self) if getattr(self, f.name) <= 0
                    and f.name != "max_restarts"]
        if self.max_restarts < 0:
            problems.append("max_restarts must be >= 0")
        if problems:
            raise ValueError("invalid supervisor settings: " + "; ".join(problems))

    def backoff_s(self, failures: int) -> float:
        """Seconds before restart number ``failures`` (1-based) of a crash loop: doubling, capped."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1)))


def supervisor_settings(
    from_file: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, **explicit: Any
) -> SupervisorSettings:
    """Build supervisor settings: defaults < stack file ``supervisor:`` < ``RAG_SERVE_*`` < ``explicit``.

    Raises:
        ValueError: an unknown key in the file, or a value out of range.
    """
    hints = get_type_hints(SupervisorSettings)
    names = {f.name for f in fields(SupervisorSettings)}
    values: dict[str, Any] = {}
    for key, value in (from_file or {}).items():
        if key not in names:
            raise ValueError(f"unknown supervisor setting {key!r}; known: {', '.join(sorted(names))}")
        values[key] = value
    env = os.environ if environ is None else environ
    for name in names:
        if env_var_name(name) in env:
            values[name] = _parse_value(env[env_var_name(name)], hints[name])
    values.update({k: v for k, v in explicit.items() if v is not None})
    return SupervisorSettings(**values)


__all__ = [
    "ENV_PREFIX",
    "SERVER_KINDS",
    "ServerKind",
    "ServerSettings",
    "SupervisorSettings",
    "env_overrides",
    "env_var_name",
    "settings_from_env",
    "supervisor_settings",
]
