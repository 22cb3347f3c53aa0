"""The stack file, read once for servers and clients: ``rag_plugins.from_stack("stack.yaml")``.

One YAML file says which servers run where (``rag-serve up --config stack.yaml`` starts them) and, from the
same entries, which URLs, keys and dimensions the clients use, so a notebook has one source of truth::

    state_dir: .rag-serve                 # pid, state and log files (default: .rag-serve next to the file)
    supervisor: {max_restarts: 5}         # optional; see `rag-serve up --help`
    servers:
      text:   {kind: embed,    model: Qwen/Qwen3-Embedding-0.6B, device: cuda:0, port: 8001, api_key: K,
               client: {dimensions: 512}}
      images: {kind: mm-embed, model: Alibaba-NLP/gme-Qwen2-VL-2B-Instruct, device: cuda:1, port: 8002}
      rerank: {kind: rerank,   model: Qwen/Qwen3-Reranker-0.6B, device: cuda:2, port: 8003}

Keys of an entry are ``rag-serve`` flags with underscores, except ``kind`` and ``client`` (client-only
settings: ``base_url``, ``dimensions``, ``query_instruction``, ``timeout``, ``max_retries``,
``embed_batch_size``, ``top_n``, ``instruction``). This module is torch-free and imports PyYAML only when
a file is read (extra ``stack``).

    clients = rag_plugins.from_stack("stack.yaml")
    Settings.embed_model = clients.embedding          # LocalEmbedding
    reranker = clients.reranker                        # LocalRerank
    rag = LightRAG(embedding_func=clients.lightrag_embedding_func(),
                   rerank_model_func=clients.lightrag_rerank_func(), ...)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_plugins.optional import require

STACK_KINDS: tuple[str, ...] = ("embed", "rerank", "mm-embed")
CLIENT_KEYS = frozenset(
    {"base_url", "dimensions", "query_instruction", "timeout", "max_retries", "embed_batch_size", "top_n",
     "instruction", "api_key"}
)
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class StackEntry:
    """One server of a stack.

    Attributes:
        name: Entry name (log and pid files, ``rag-serve logs NAME``).
        kind: ``embed``, ``rerank`` or ``mm-embed``.
        options: ``rag-serve`` flags (underscored) and their values.
        client: Client-only settings (``client:`` mapping of the entry).
    """

    name: str
    kind: str
    options: dict[str, Any]
    client: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.options.get("port", 8000))

    @property
    def host(self) -> str:
        return str(self.options.get("host", "127.0.0.1"))

    @property
    def device(self) -> str:
        return str(self.options.get("device", "auto"))

    @property
    def api_keys(self) -> list[str]:
        """Keys the server accepts (``api_key`` / ``api_keys``, a string, comma list or YAML list)."""
        keys: list[str] = []
        for name in ("api_key", "api_keys"):
            value = self.options.get(name)
            if value is None:
                continue
            items = value if isinstance(value, list) else str(value).split(",")
            keys += [str(k).strip() for k in items if str(k).strip()]
        return keys

    @property
    def health_url(self) -> str:
        """Where a supervisor on the same machine checks ``/health`` (a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.host in _ANY_ADDRESS else self.host
        return f"http://{host}:{self.port}/health"

    @property
    def base_url(self) -> str:
        """URL clients use: ``client.base_url`` when given, else the bound host and port."""
        if self.client.get("base_url"):
            return str(self.client["base_url"]).rstrip("/")
        return self.health_url.removesuffix("/health")

    @property
    def client_api_key(self) -> str | None:
        """Key clients send: ``client.api_key`` when given, else the server's first key."""
        if self.client.get("api_key"):
            return str(self.client["api_key"])
        keys = self.api_keys
        return keys[0] if keys else None


@dataclass(frozen=True)
class StackFile:
    """A parsed stack file.

    Attributes:
        path: The file.
        state_dir: Where pid, state and log files go.
        entries: Servers, in file order.
        supervisor: The ``supervisor:`` mapping (restart policy), as written.
    """

    path: Path
    state_dir: Path
    entries: list[StackEntry]
    supervisor: dict[str, Any] = field(default_factory=dict)

    def entry(self, name: str) -> StackEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"{self.path}: no server {name!r} (have {', '.join(e.name for e in self.entries)})")

    def first_of(self, kind: str) -> StackEntry | None:
        return next((e for e in self.entries if e.kind == kind), None)


def parse_stack(data: Any, path: Path) -> StackFile:
    """Check and parse the YAML data of a stack file.

    Raises:
        ValueError: the data is not a stack (missing ``servers:``, unknown kind, non-mapping entry).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a stack file is a mapping with a 'servers:' key")
    servers = data.get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ValueError(f"{path}: needs a 'servers:' mapping of name -> {{kind, model, device, port, ...}}")
    entries = []
    for name, spec in servers.items():
        if spec is not None and not isinstance(spec, dict):
            raise ValueError(f"{path}: server {name!r} must be a mapping of rag-serve flags")
        spec = dict(spec or {})
        kind = spec.pop("kind", None)
        if kind not in STACK_KINDS:
            raise ValueError(f"{path}: server {name!r} needs kind: one of {', '.join(STACK_KINDS)}")
        client = spec.pop("client", None) or {}
        unknown = set(client) - CLIENT_KEYS
        if unknown:
            raise ValueError(f"{path}: server {name!r} client keys {sorted(unknown)} unknown; "
                             f"known: {sorted(CLIENT_KEYS)}")
        entries.append(StackEntry(str(name), str(kind), spec, dict(client)))
    supervisor = data.get("supervisor") or {}
    if not isinstance(supervisor, dict):
        raise ValueError(f"{path}: 'supervisor:' must be a mapping")
    state_dir = Path(data.get("state_dir") or path.parent / ".rag-serve")
    return StackFile(path, state_dir, entries, dict(supervisor))


def load_stack_file(path: str | Path) -> StackFile:
    """Read and parse a stack file (PyYAML, extra ``stack``, imported here and only here)."""
    path = Path(path)
    yaml = require("yaml", "stack")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_stack(data, path)


class StackClients:
    """Clients of one stack, each built on first use (so a missing extra only matters if you use it).

    Args:
        stack: The parsed stack file.
        embedding: Entry name of the text embedding server (default: the first ``embed`` entry).
        multimodal: Entry name of the multimodal embedding server (default: the first ``mm-embed``).
        reranker: Entry name of the rerank server (default: the first ``rerank``).
    """

    def __init__(
        self, stack: StackFile, *, embedding: str | None = None, multimodal: str | None = None,
        reranker: str | None = None,
    ) -> None:
        self.stack = stack
        self.embedding_entry = self._pick(embedding, "embed")
        self.multimodal_entry = self._pick(multimodal, "mm-embed")
        self.reranker_entry = self._pick(reranker, "rerank")

    def _pick(self, name: str | None, kind: str) -> StackEntry | None:
        if name is None:
            return self.stack.first_of(kind)
        entry = self.stack.entry(name)
        if entry.kind != kind:
            raise ValueError(f"{self.stack.path}: server {name!r} is {entry.kind!r}, not {kind!r}")
        return entry

    @staticmethod
    def _need(entry: StackEntry | None, kind: str, path: Path) -> StackEntry:
        if entry is None:
            raise LookupError(f"{path}: no server of kind {kind!r} in the stack")
        return entry

    @staticmethod
    def _common(entry: StackEntry, *names: str) -> dict[str, Any]:
        values: dict[str, Any] = {"base_url": entry.base_url, "api_key": entry.client_api_key}
        values.update({k: entry.client[k] for k in names if k in entry.client})
        return values

    @functools.cached_property
    def embedding(self) -> Any:
        """``LocalEmbedding`` (LlamaIndex ``BaseEmbedding``) of the text embedding server."""
        from rag_plugins.embedding import LocalEmbedding

        entry = self._need(self.embedding_entry, "embed", self.stack.path)
        return LocalEmbedding(
            model=entry.options.get("served_model_name"),
            **self._common(entry, "dimensions", "query_instruction", "timeout", "max_retries", "embed_batch_size"),
        )

    @functools.cached_property
    def multimodal_embedding(self) -> Any:
        """``LocalMultiModalEmbedding`` (LlamaIndex ``MultiModalEmbedding``) of the mm-embed server."""
        from rag_plugins.multimodal import LocalMultiModalEmbedding

        entry = self._need(self.multimodal_entry, "mm-embed", self.stack.path)
        return LocalMultiModalEmbedding(
            **self._common(entry, "dimensions", "query_instruction", "timeout", "max_retries", "embed_batch_size"),
        )

    @functools.cached_property
    def reranker(self) -> Any:
        """``LocalRerank`` (LlamaIndex node postprocessor) of the rerank server."""
        from rag_plugins.rerank import LocalRerank

        entry = self._need(self.reranker_entry, "rerank", self.stack.path)
        return LocalRerank(
            model=entry.options.get("served_model_name"),
            **self._common(entry, "top_n", "instruction", "timeout", "max_retries"),
        )

    def lightrag_embedding_func(self, **overrides: Any) -> Any:
        """LightRAG ``EmbeddingFunc`` of the text embedding server (reads ``/info`` for the dimension).

        Args:
            **overrides: Keyword arguments of :func:`integrations.lightrag.embedding_func` to change.
        """
        from integrations.lightrag import embedding_func

        entry = self._need(self.embedding_entry, "embed", self.stack.path)
        kwargs: dict[str, Any] = {"api_key": entry.client_api_key, "model": entry.options.get("served_model_name")}
        for key, target in (("dimensions", "dimensions"), ("query_instruction", "query_instruction"),
                            ("embed_batch_size", "batch_size")):
            if key in entry.client:
                kwargs[target] = entry.client[key]
        kwargs.update(overrides)
        return embedding_func(entry.base_url, **kwargs)

    def lightrag_rerank_func(self, **overrides: Any) -> Any:
        """LightRAG ``rerank_model_func`` of the rerank server."""
        from integrations.lightrag import rerank_model_func

        entry = self._need(self.reranker_entry, "rerank", self.stack.path)
        kwargs: dict[str, Any] = {"api_key": entry.client_api_key, "model": entry.options.get("served_model_name")}
        for key in ("instruction", "timeout", "max_retries"):
            if key in entry.client:
                kwargs[key] = entry.client[key]
        kwargs.update(overrides)
        return rerank_model_func(entry.base_url, **kwargs)


def from_stack(
    path: str | Path, *, embedding: str | None = None, multimodal: str | None = None, reranker: str | None = None
) -> StackClients:
    """Clients configured from a stack file (URLs, API keys, dimensions), built lazily.

    Args:
        path: The stack file ``rag-serve up --config`` uses.
        embedding: Entry name of the text embedding server (default: first ``embed`` entry).
        multimodal: Entry name of the multimodal server (default: first ``mm-embed`` entry).
        reranker: Entry name of the rerank server (default: first ``rerank`` entry).

    Returns:
        :class:`StackClients` with ``.embedding``, ``.multimodal_embedding``, ``.reranker`` (LlamaIndex
        classes) and ``.lightrag_embedding_func()`` / ``.lightrag_rerank_func()``.

    Raises:
        MissingExtraError: PyYAML is missing (``pip install 'rag-plugins[stack]'``).
        ValueError: the file is not a valid stack file.
    """
    return StackClients(load_stack_file(path), embedding=embedding, multimodal=multimodal, reranker=reranker)
