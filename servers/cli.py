"""``rag-serve``: start one model server, or a whole stack of them.

    rag-serve embed  --model Qwen/Qwen3-Embedding-0.6B --device cuda:0 --port 8001
    rag-serve rerank --model Qwen/Qwen3-Reranker-0.6B  --device cuda:1 --port 8002
    rag-serve up --config stack.yaml     # one process per entry; then: status, logs NAME, down

Every flag also reads an environment variable ``RAG_SERVE_<FLAG>`` (e.g. ``RAG_SERVE_MAX_BATCH_TOKENS``);
a flag given on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import MISSING, fields
from typing import Any, get_type_hints

from servers.kinds import KINDS, kind_spec
from servers.settings import SERVER_KINDS, ServerSettings, env_var_name, settings_from_env

FLAG_HELP: dict[str, str] = {
    "model": "model directory or Hugging Face Hub ID",
    "served_model_name": "name reported to clients (default: --model)",
    "device": "cpu, cuda:N, or auto (first GPU if any)",
    "dtype": "auto (fp32 on CPU, fp16 below compute capability 8.0, bf16 from 8.0), float32, float16, bfloat16",
    "attention": "auto (sdpa), sdpa, eager, flash_attention_2",
    "host": "address to bind",
    "port": "port to bind",
    "api_keys": "comma-separated API keys; when set every route but /health needs 'Authorization: Bearer KEY'",
    "max_length": "max tokens per input (longer inputs are truncated, or refused with truncate=false)",
    "max_batch_tokens": "token budget of one forward batch, padding included",
    "max_batch_size": "max items in one forward batch",
    "max_wait_ms": "how long a part-full batch waits for more work",
    "max_queue_items": "queued items beyond which requests get 429 + Retry-After",
    "max_client_batch": "max inputs (texts, documents) in one request",
    "max_body_bytes": "max request body size in bytes",
    "bulk_workers": "model threads of the bulk lane: 2 prepares and launches one batch while the GPU runs another",
    "last_token_padding": "last-token models: right (no attention mask; causal attention never sees right pads) or left",
    "priority_max_items": "requests with at most this many items (and priority-max-tokens) use the priority lane",
    "priority_max_tokens": "token bound of priority-lane requests",
    "tokenizer_threads": "threads that tokenize while the model runs",
    "retry_after_s": "minimum Retry-After seconds on 429",
    "instruction": "default task instruction (overrides the model's)",
    "log_level": "debug, info, warning, error",
    "warmup": "run a warm-up forward before reporting healthy",
    "drain_grace_s": "on SIGTERM: seconds to finish queued and in-flight requests (new ones get 503) before exiting",
    "gc_freeze": "once ready (and again once accelerated) move the start-up heap out of Python's garbage "
                 "collection, so a full collection under load pauses the server for milliseconds, not ~0.2 s",
    "image_root": "mm-embed: directory {\"path\"} images may be read from (repeat or comma-separate; none: paths refused)",
    "allow_url_images": "mm-embed: fetch {\"url\"} images (loopback, private and link-local targets are always refused)",
    "max_image_bytes": "mm-embed: max encoded size of one image in bytes",
    "max_image_pixels": "mm-embed: max width*height of one image, checked before decoding (decompression bombs)",
    "url_timeout_s": "mm-embed: max seconds to download one image URL, redirects included",
    "min_pixels": "mm-embed/multimodal rerank: images smaller than this area are upscaled for the model "
                  "(default: the recipe's, GME 256*28*28, Qwen3-VL 4*32*32)",
    "max_pixels": "mm-embed/multimodal rerank: images larger than this area are downscaled for the model, bounding "
                  "image tokens (default: the recipe's, GME 1280*28*28, Qwen3-VL 1800*32*32 embed, 1280*32*32 rerank)",
    "vision_positions": "mm-embed/multimodal rerank: decoder position ids: recipe (GME: sequential, as its published "
                        "code; Qwen3-VL and Lychee: M-RoPE), sequential, or mrope (vLLM-compatible GME vectors)",
    "cuda_graphs": "auto (on for CUDA devices), on, off: CUDA graphs of the priority-lane forward (search queries) "
                   "per (batch, length) bucket, captured in the background after start-up",
    "compile": "auto (on for CUDA with Triton, compute capability >= 7.0), on, off: torch.compile the bulk-lane "
               "forward (dynamic shapes) in the background; eager until it is ready",
    "cuda_graph_max_batch": "largest batch bucket of the CUDA graphs (buckets 1, 2, 4 ... this)",
    "cuda_graph_max_length": "largest length bucket of the CUDA graphs (buckets 32, 64 ... this, up to --max-length)",
    "compiled_graph_buckets": "query buckets BATCHxLENGTH (comma-separated; 'off': none) that also get a static "
                              "torch.compile of the whole forward captured as a CUDA graph (needs --compile); "
                              "about 50 s of cold compilation each on an H200, in the background",
    "bulk_packing": "auto (on for CUDA with FlashAttention-2's varlen kernel, compute capability >= 8.0, fp16/bf16), "
                    "on, off: run bulk batches padding-free, texts back to back in one row with variable-length "
                    "attention (causal last-token text decoders); refused with a reason in /info where the model "
                    "cannot, or a start-up probe disagrees with padded batches; 'on' also packs on CPU (exact, "
                    "not faster)",
    "compile_cache_dir": "inductor's on-disk cache, so a restart compiles warm (default ~/.cache/rag-plugins/inductor)",
    "prompt_template": "rerank (yes/no models): JSON file {prefix, middle, suffix, default_instruction?, empty_side?} "
                       "replacing the recipe's prompt; middle holds {instruction}, {query} and {doc}",
    "milvus_uri": "search: Milvus URI of the collection (Milvus Lite file ./x.db, or http://host:19530)",
    "collection": "search: name of the MultiVectorMilvusStore collection to search (must exist)",
    "embed_url": "search: base URL of the text embedding server (rag-serve embed) that embeds queries for text_vec",
    "mm_embed_url": "search: base URL of the multimodal embedding server (rag-serve mm-embed) for image_vec "
                    "(default: none, image_vec not searched)",
    "rerank_url": "search: base URL of the rerank server (rag-serve rerank) for rerank=true requests "
                  "(default: none, rerank refused)",
    "upstream_api_key": "search: Bearer key sent to the embed, mm-embed and rerank servers",
}


def _add_setting_flags(parser: argparse.ArgumentParser, kind: str) -> None:
    """Add one flag per setting that ``kind`` reads (a flag another kind reads is refused as unknown)."""
    hints = get_type_hints(ServerSettings)
    spec = kind_spec(kind)
    for f in fields(ServerSettings):
        if f.name not in spec.settings:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = spec.defaults.get(f.name, None if f.default is MISSING else f.default)
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{FLAG_HELP.get(f.name, '')} [env {env_var_name(f.name)}; default {shown!r}]"
        annotation = str(hints[f.name])
        if "bool" in annotation:
            parser.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.name == "api_keys":
            parser.add_argument("--api-key", dest="api_keys", default=None, action="append", help=help_text)
        elif "tuple" in annotation:
            parser.add_argument(flag, dest=f.name, default=None, action="append", help=help_text)
        elif "int" in annotation:
            parser.add_argument(flag, type=int, default=None, help=help_text)
        elif "float" in annotation:
            parser.add_argument(flag, type=float, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for kind, spec in KINDS.items():
        p = sub.add_parser(kind, help=spec.summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_setting_flags(p, kind)
    from servers import stack

    stack.add_stack_commands(sub)
    return parser


def settings_from_args(kind: str, args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerSettings:
    """Settings of a ``rag-serve KIND`` command: its flags over ``RAG_SERVE_*`` variables over defaults."""
    explicit: dict[str, Any] = {}
    for f in fields(ServerSettings):
        if f.name == "kind":
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name == "api_keys" or isinstance(value, list):
            value = tuple(k.strip() for item in value for k in item.split(",") if k.strip())
        explicit[f.name] = value
    return settings_from_env(os.environ if environ is None else environ, kind=kind, **explicit)


#: GIL hand-over interval of a server process (Python's default is 5 ms); see :func:`serve`.
GIL_SWITCH_INTERVAL_S = 0.0005


def serve(settings: ServerSettings) -> None:
    """Run one server in the foreground until interrupted."""
    # OpenMP worker threads busy-wait between parallel regions by default; on a CPU device they then
    # starve the event loop, tokenizer and model threads this server hands work between (measured: 10x
    # slower requests on 2 cores). Must be set before torch is imported; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Batches change shape every time (length-sorted, variable padding); expandable segments keep the
    # CUDA caching allocator from fragmenting into many part-used blocks, which lowers peak reserved memory.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # The event loop, tokenizer threads and the two model threads share one GIL. A thread that wants it
    # waits for the holder's switch interval (5 ms by default), and a query's answer crosses threads
    # several times, so under bulk load each hop could add 5 ms; 0.5 ms bounds that at a small cost.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    from servers.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )
    from servers.drain import install_drain, run_draining

    app = create_app(settings)
    # SIGTERM drains (503 to new work, accepted work finishes) before uvicorn's own shutdown: servers/drain.py.
    drain = install_drain(app)
    run_draining(
        app, drain, settings.drain_grace_s, host=settings.host, port=settings.port,
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=10,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SERVER_KINDS:
        try:
            settings = settings_from_args(args.command, args)
        except ValueError as exc:
            parser.error(str(exc))
        serve(settings)
        return 0
    from servers import stack

    return stack.run_stack_command(args)


if __name__ == "__main__":
    sys.exit(main())
