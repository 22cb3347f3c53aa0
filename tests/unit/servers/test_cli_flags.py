"""Every flag of ``rag-serve KIND --help`` reaches the server: each one changes ``/info`` or behaviour.

The table below says, per flag, how its effect is observed. A flag added to a kind without a row here fails
``test_every_flag_has_an_observation``; a flag that a kind would accept and ignore is refused by the CLI
instead (see ``servers.kinds``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from servers.app import create_app
from servers.cli import build_parser, serve, settings_from_args
from servers.kinds import KINDS

KEY = "flag-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
INSTRUCTION = "Find the passage that names the colour of the sky"
#: Flags the process (uvicorn, logging) applies rather than the app; observed by ``test_process_flags``.
PROCESS_FLAGS = {"host", "port", "log_level", "drain_grace_s"}
#: Flags whose effect the instruction request check observes (the server default instruction).
BEHAVIOUR_FLAGS = {"instruction", "api_keys", "max_body_bytes", "max_client_batch"}


def _flags(kind: str) -> set[str]:
    """The settings names behind the flags of ``rag-serve KIND --help``."""
    parser = build_parser()._subparsers._group_actions[0].choices[kind]  # type: ignore[union-attr]
    options = " ".join(o for action in parser._actions for o in action.option_strings)
    names = {m.replace("-", "_") for m in re.findall(r"--(?:no-)?([a-z][a-z0-9-]+)", options)} - {"help"}
    return {"api_keys" if n == "api_key" else n for n in names}


#: Model server kinds (the search kind holds no model; its flags have their own test below).
MODEL_KINDS = [k for k in KINDS if "model" in KINDS[k].settings]
UPSTREAM_KEY = "upstream-key"


def _search_argv(milvus_uri: str, upstream: str) -> list[str]:
    """Non-default values for every flag of ``rag-serve search``."""
    return [
        "--served-model-name", "flag-search", "--host", "127.0.0.2", "--port", "8765", "--api-key", KEY,
        "--max-body-bytes", "150000", "--log-level", "warning", "--milvus-uri", milvus_uri, "--collection", "flags",
        "--embed-url", upstream, "--mm-embed-url", upstream + "/", "--rerank-url", upstream + "//",
        "--upstream-api-key", UPSTREAM_KEY, "--no-gc-freeze",
    ]


def _argv(kind: str, model: Path, image_root: Path) -> list[str]:
    """Non-default values for every flag the kind has (the /info checks below expect these)."""
    if kind == "search":
        return _search_argv(str(image_root / "flags.db"), "http://127.0.0.1:9")
    argv = [
        "--model", str(model), "--served-model-name", "flag-model", "--device", "cpu", "--dtype", "float32",
        "--attention", "eager", "--host", "127.0.0.2", "--port", "8765", "--api-key", KEY, "--max-length", "200",
        "--max-batch-tokens", "2000", "--max-batch-size", "7", "--max-wait-ms", "3.5", "--max-queue-items", "999",
        "--max-client-batch", "5", "--max-body-bytes", "150000", "--bulk-workers", "2", "--priority-max-items",
        "3", "--priority-max-tokens", "555", "--tokenizer-threads", "3", "--retry-after-s", "4",
        "--instruction", INSTRUCTION, "--log-level", "warning", "--no-warmup", "--no-gc-freeze", "--cuda-graphs", "off",
        "--compile", "off", "--cuda-graph-max-batch", "4", "--cuda-graph-max-length", "256",
        "--compile-cache-dir", "/tmp/flag-inductor-cache", "--compiled-graph-buckets", "2x64,1x128",
    ]
    if "last_token_padding" in KINDS[kind].settings:
        argv += ["--last-token-padding", "left"]
    if "bulk_packing" in KINDS[kind].settings:
        argv += ["--bulk-packing", "on"]
    if "image_root" in KINDS[kind].settings:
        argv += ["--image-root", str(image_root), "--allow-url-images", "--max-image-bytes", "123456",
                 "--max-image-pixels", "2000000", "--url-timeout-s", "2.5", "--min-pixels", str(8 * 28 * 28),
                 "--max-pixels", str(32 * 28 * 28), "--vision-positions", "mrope"]
    if "prompt_template" in KINDS[kind].settings:
        template = image_root / "template.json"
        template.write_text('{"middle": "<Instruct>: {instruction}<Q>: {query}<D>: {doc}"}')
        argv += ["--prompt-template", str(template)]
    return argv


#: flag -> (/info key, expected value). Values match ``_argv``.
INFO_CHECKS: dict[str, tuple[str, Any]] = {
    "served_model_name": ("model", "flag-model"),
    "device": ("device", "cpu"),
    "dtype": ("dtype", "float32"),
    "attention": ("attention", "eager"),
    "max_length": ("max_length", 200),
    "max_batch_tokens": ("max_batch_tokens", 2000),
    "max_batch_size": ("max_batch_size", 7),
    "max_wait_ms": ("max_wait_ms", 3.5),
    "max_queue_items": ("max_queue_items", 999),
    "bulk_workers": ("bulk_workers", 2),
    "priority_max_items": ("priority_max_items", 3),
    "priority_max_tokens": ("priority_max_tokens", 555),
    "tokenizer_threads": ("tokenizer_threads", 3),
    "retry_after_s": ("retry_after_s", 4),
    "warmup": ("warmup", False),
    "gc_freeze": ("gc_freeze", False),
    "last_token_padding": ("last_token_padding", "left"),
    "allow_url_images": ("url_images", True),
    "max_image_bytes": ("max_image_bytes", 123456),
    "max_image_pixels": ("max_image_pixels", 2000000),
    "url_timeout_s": ("url_timeout_s", 2.5),
    "min_pixels": ("min_pixels", 8 * 28 * 28),
    "max_pixels": ("max_pixels", 32 * 28 * 28),
    "vision_positions": ("vision_positions", "mrope"),
    "cuda_graphs": ("cuda_graphs", "off"),
    "compile": ("compile", "off"),
    "cuda_graph_max_batch": ("cuda_graph_max_batch", 4),
    "cuda_graph_max_length": ("cuda_graph_max_length", 256),
    "compile_cache_dir": ("compile_cache_dir", "/tmp/flag-inductor-cache"),
    "compiled_graph_buckets": ("compiled_graph_buckets", ["2x64", "1x128"]),
    "bulk_packing": ("bulk_packing", "on"),
}
#: ``model`` and ``image_root`` are checked against paths only known at run time; so are the search server's.
RUNTIME_INFO_CHECKS = {"model", "image_root", "prompt_template", "milvus_uri", "collection", "embed_url",
                       "mm_embed_url", "rerank_url", "upstream_api_key"}


def test_every_flag_has_an_observation() -> None:
    observed = set(INFO_CHECKS) | RUNTIME_INFO_CHECKS | BEHAVIOUR_FLAGS | PROCESS_FLAGS
    for kind in KINDS:
        flags = _flags(kind)
        assert flags == set(KINDS[kind].settings), kind
        assert flags <= observed, f"{kind}: flags without an observation: {sorted(flags - observed)}"


def test_process_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """host, port and log level go to the HTTP server (uvicorn) of the process."""
    from servers import drain

    seen: dict[str, Any] = {}

    def fake_run(app: Any, state: Any, grace_s: float, **kw: Any) -> None:
        seen.update(kw, app=app, grace_s=grace_s)

    monkeypatch.setattr(drain, "run_draining", fake_run)
    for kind in KINDS:
        args = build_parser().parse_args([kind, *_argv(kind, tmp_path, tmp_path), "--drain-grace-s", "7.5"])
        serve(settings_from_args(kind, args, {}))
        assert (seen["host"], seen["port"], seen["log_level"]) == ("127.0.0.2", 8765, "warning")
        assert seen["grace_s"] == 7.5
        assert seen["app"].title.endswith(f"{kind} server")


def _client(kind: str, model: Path, image_root: Path) -> Iterator[TestClient]:
    args = build_parser().parse_args([kind, *_argv(kind, model, image_root)])
    app = create_app(settings_from_args(kind, args, {}))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").text
            time.sleep(0.05)
        yield client


def _instruction_reaches_engine(kind: str, client: TestClient) -> None:
    """--instruction is the default: a query without one scores like one that sends it, unlike another."""
    post: Callable[..., Any] = lambda path, body: client.post(path, json=body, headers=AUTH).json()  # noqa: E731
    if kind == "rerank":
        body = {"query": "sky", "docs": ["the sky is blue", "grass is green"]}
        default = post("/rerank", body)["scores"]
        same = post("/rerank", {**body, "instruction": INSTRUCTION})["scores"]
        other = post("/rerank", {**body, "instruction": "Judge whether the document is about cooking"})["scores"]
    else:
        body = {"texts": ["what colour is the sky"], "input_type": "query"}
        default = post("/embed", body)["embeddings"]
        same = post("/embed", {**body, "instruction": INSTRUCTION})["embeddings"]
        other = post("/embed", {**body, "instruction": "Retrieve recipes"})["embeddings"]
    np.testing.assert_allclose(default, same, atol=1e-6)
    assert not np.allclose(default, other, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_flag_reaches_the_server(
    kind: str, tiny_qwen3_embedding: Path, tiny_vl_reranker: Path, tiny_gme: Path, tmp_path: Path
) -> None:
    model = {"embed": tiny_qwen3_embedding, "rerank": tiny_vl_reranker, "mm-embed": tiny_gme}[kind]
    for client in _client(kind, model, tmp_path):
        assert client.get("/info").status_code == 401  # api_keys
        info = client.get("/info", headers=AUTH).json()
        assert info["auth_required"] is True
        assert info["recipe"]  # model: the engine loaded it and resolved its recipe
        flags = _flags(kind)
        for flag in flags & set(INFO_CHECKS):
            key, expected = INFO_CHECKS[flag]
            assert info.get(key) == expected, f"{kind} --{flag}: /info {key}={info.get(key)!r}, want {expected!r}"
        if "image_root" in flags:
            assert info["image_roots"] == [str(tmp_path.resolve())]
        if "prompt_template" in flags:
            assert info["recipe"].endswith(f"template from {tmp_path / 'template.json'}")
        assert info["max_client_batch"] == 5
        too_many = {"texts": ["x"] * 6} if kind != "rerank" else {"query": "q", "docs": ["d"] * 6}
        resp = client.post("/embed" if kind != "rerank" else "/rerank", json=too_many, headers=AUTH)
        assert resp.status_code == 413, resp.text  # max_client_batch
        assert "max-client-batch" in resp.json()["error"]["message"]
        big = client.post("/embed", content=b"x" * 150_001, headers={**AUTH, "Content-Type": "application/json"})
        assert big.status_code == 413  # max_body_bytes
        assert "max-body-bytes" in big.json()["error"]["message"]
        _instruction_reaches_engine(kind, client)


@contextmanager
def _served_in_thread(app: Any) -> Iterator[str]:
    """A real HTTP server for ``app`` on 127.0.0.1, run by uvicorn in a thread of this process (the search
    server needs an upstream it reaches over HTTP; a thread saves a subprocess's start-up)."""
    import threading

    import uvicorn

    from servers.process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="flag-upstream", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not server.started or httpx.get(base + "/health").status_code != 200:
        assert thread.is_alive(), "upstream thread exited"
        assert time.monotonic() < deadline, "upstream did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def test_every_search_flag_reaches_the_server(tiny_qwen3_embedding: Path, tmp_path: Path) -> None:
    """The search server opens --collection at --milvus-uri, calls the upstreams with --upstream-api-key (it
    is healthy only once they answered), and /info shows what it runs with."""
    from rag_plugins.milvus.settings import MilvusStoreSettings
    from rag_plugins.milvus.store import MultiVectorMilvusStore

    uri = str(tmp_path / "flags.db")
    MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="flags", text_dim=64,
                                                        image_dim=64)).close()
    upstream_args = build_parser().parse_args(["embed", "--model", str(tiny_qwen3_embedding), "--device", "cpu",
                                               "--api-key", UPSTREAM_KEY])
    with _served_in_thread(create_app(settings_from_args("embed", upstream_args, {}))) as upstream:
        args = build_parser().parse_args(["search", *_search_argv(uri, upstream)])
        app = create_app(settings_from_args("search", args, {}))
        with TestClient(app) as client:
            deadline = time.monotonic() + 60
            while client.get("/health").status_code != 200:  # upstream_api_key: /health of each upstream passed
                assert time.monotonic() < deadline, client.get("/health").text
                time.sleep(0.05)
            assert client.get("/info").status_code == 401  # api_keys
            info = client.get("/info", headers=AUTH).json()
            assert info["kind"] == "search"
            assert info["model"] == "flag-search"
            assert (info["milvus_uri"], info["collection"], info["text_dim"]) == (uri, "flags", 64)
            assert (info["gc_freeze"], info["gc_frozen_objects"], info["gc_freezes"]) == (False, 0, [])
            assert info["upstreams"] == {"embed": upstream, "mm_embed": upstream + "/", "rerank": upstream + "//"}
            assert info["max_body_bytes"] == 150000
            big = client.post("/search", content=b"x" * 150_001, headers={**AUTH, "Content-Type": "application/json"})
            assert big.status_code == 413  # max_body_bytes
            answer = client.post("/search", json={"text": "sky", "top_k": 3}, headers=AUTH)
            assert answer.status_code == 200, answer.text  # the empty collection answers; embed took the key
            assert answer.json()["candidates"] == []
