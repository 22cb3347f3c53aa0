"""``MultiVectorMilvusStorage``: a LightRAG vector storage backed by :class:`MultiVectorMilvusStore`.

Every LightRAG vector namespace (``entities``, ``relationships``, ``chunks``) gets its own collection with a
``text_vec`` (from LightRAG's own ``embedding_func``, so stored and query vectors come from one model) and an
``image_vec`` (from a rag-serve ``mm-embed`` server). Chunks that carry an image — RAG-Anything image chunks,
whose content has an ``Image Path: <path>`` line, or records with an ``img_path`` field — get the image
file's vector in ``image_vec``; text-only chunks get their text embedded into the image space. Queries on a
hybrid namespace search both fields and fuse them (RRF by default, or weighted); without an image-space
server everything is text-only.

Usage::

    from integrations.lightrag import embedding_func
    from integrations.lightrag_storage import register

    register()  # makes the name known to LightRAG (importing this module does it too)
    rag = LightRAG(
        working_dir="./rag",
        embedding_func=embedding_func("http://127.0.0.1:8001"),
        vector_storage="MultiVectorMilvusStorage",
        vector_db_storage_cls_kwargs={"mm_base_url": "http://127.0.0.1:8003", "fusion": "rrf"},
        ...,
    )

Options, all read from ``vector_db_storage_cls_kwargs`` (no environment variables are needed or read;
LightRAG's own ``MilvusVectorDBStorage`` wants ``MILVUS_URI`` / ``MILVUS_DB_NAME``, this one does not):

- ``milvus_uri``: ``./file.db`` (Milvus Lite) or ``http://host:19530``; default
  ``<working_dir>/milvus_multivector.db``. ``milvus_token``, ``milvus_db_name`` for servers.
- ``mm_base_url`` (None: text only), ``mm_api_key``, ``mm_dimensions``: the image-space embedding server.
- ``fusion`` (``rrf`` | ``weighted``), ``rrf_k`` (60), ``fusion_weights`` ((α, 1−α) for text/image).
- ``hybrid_namespaces`` (default ``["chunks"]``): namespaces that get image-space vectors and hybrid queries.
- ``embed_text_into_image_space`` (True): text-only rows of hybrid namespaces get an image-space vector too.
- ``candidate_multiplier`` (2): candidates per field = ``top_k × multiplier`` before fusion.
- ``cosine_better_than_threshold`` (LightRAG's own): minimum cosine of a ``text_vec`` candidate;
  ``image_cosine_better_than_threshold`` (default: the same value) of an ``image_vec`` candidate.
- ``text_index`` / ``image_index``: ``FieldIndexSettings`` keyword dicts (index type, metric, params).
- ``collection_prefix`` (``lightrag``), ``image_root`` (base of relative image paths; default: the cwd).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_plugins.milvus.filters import and_exprs, literal
from rag_plugins.milvus.fusion import DEFAULT_RRF_K, Fusion
from rag_plugins.milvus.items import ID_MAX_LENGTH, StoreItem, make_id
from rag_plugins.milvus.settings import FieldIndexSettings, MilvusStoreSettings
from rag_plugins.milvus.store import HAS_FLAG, IMAGE_FIELD, TEXT_FIELD, MultiVectorMilvusStore
from rag_plugins.multimodal_client import MultiModalEmbeddingClient
from rag_plugins.optional import require

_base = require("lightrag.base", "lightrag")
_utils = require("lightrag.utils", "lightrag")
_constants = require("lightrag.constants", "lightrag")
BaseVectorStorage = _base.BaseVectorStorage
logger = _utils.logger

#: The name to pass as ``LightRAG(vector_storage=...)``.
STORAGE_NAME = "MultiVectorMilvusStorage"
DEFAULT_DB_FILE = "milvus_multivector.db"
DEFAULT_HYBRID_NAMESPACES = ("chunks",)
#: Milvus' smallest vector dim; the placeholder ``image_vec`` of text-only collections uses it.
_PLACEHOLDER_DIM = 2
_MAX_COLLECTION_NAME = 255
_MAX_SHORT_BYTES = 1024
#: A RAG-Anything image chunk line (``PROMPTS["image_chunk"]``): ``Image Path: /abs/fig1.png``.
_IMAGE_PATH_LINE = re.compile(r"^\s*(?:-\s*)?Image Path:\s*(?P<path>\S.*?)\s*$", re.MULTILINE | re.IGNORECASE)
#: Keys stored in ``meta`` by this storage (not LightRAG fields).
_ID_KEY = "lightrag_id"
_CREATED_KEY = "created_at"


def register() -> None:
    """Make ``vector_storage="MultiVectorMilvusStorage"`` resolvable by LightRAG (idempotent).

    LightRAG (1.5.x) checks a storage name against ``lightrag.kg.STORAGE_IMPLEMENTATIONS``, checks the
    environment variables listed in ``lightrag.kg.STORAGE_ENV_REQUIREMENTS`` and imports the class from the
    module named in ``lightrag.kg.STORAGES``; this adds the three entries (no environment variables).
    Importing this module calls it, so ``import integrations.lightrag_storage`` is enough too.
    """
    kg = require("lightrag.kg", "lightrag")
    kg.STORAGES[STORAGE_NAME] = __name__
    implementations = kg.STORAGE_IMPLEMENTATIONS["VECTOR_STORAGE"]["implementations"]
    if STORAGE_NAME not in implementations:
        implementations.append(STORAGE_NAME)
    kg.STORAGE_ENV_REQUIREMENTS[STORAGE_NAME] = []


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", errors="ignore")


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _store_key(lightrag_id: str) -> str:
    """The Milvus primary key of a LightRAG id (ids over the VARCHAR limit are hashed, as StoreItem does)."""
    return lightrag_id if len(lightrag_id) <= ID_MAX_LENGTH else make_id("id", lightrag_id)


@dataclass
class MultiVectorMilvusStorage(BaseVectorStorage):  # type: ignore[misc, valid-type]
    """LightRAG ``BaseVectorStorage`` on a Milvus collection with ``text_vec`` + ``image_vec`` per row.

    Writes are immediate (embedded and upserted inside :meth:`upsert`), so reads and queries see them at once
    and :meth:`index_done_callback` has nothing to flush. LightRAG records map onto the store's schema as
    ``id`` = LightRAG id, ``text`` = ``content``, ``doc_id`` = ``full_doc_id``, ``chunk_id`` = LightRAG id,
    ``uri`` = image path, ``meta`` = the other meta fields plus ``created_at``.

    Configuration comes from ``global_config["vector_db_storage_cls_kwargs"]`` (see the module docstring).
    """

    def __post_init__(self) -> None:
        _utils.validate_workspace(self.workspace)
        self._validate_embedding_func()
        kwargs: dict[str, Any] = dict(self.global_config.get("vector_db_storage_cls_kwargs") or {})
        threshold = kwargs.get("cosine_better_than_threshold")
        if threshold is None:
            raise ValueError("cosine_better_than_threshold must be set in vector_db_storage_cls_kwargs")
        self.cosine_better_than_threshold = float(threshold)
        image_threshold = kwargs.get("image_cosine_better_than_threshold")
        self.image_cosine_better_than_threshold = float(threshold if image_threshold is None else image_threshold)
        self.fusion = Fusion(
            name=kwargs.get("fusion", "rrf"), rrf_k=int(kwargs.get("rrf_k", DEFAULT_RRF_K)),
            weights=tuple(kwargs.get("fusion_weights", (0.5, 0.5))),  # type: ignore[arg-type]
        )
        self.candidate_multiplier = max(1, int(kwargs.get("candidate_multiplier", 2)))
        working_dir = str(self.global_config.get("working_dir", "."))
        self.milvus_uri = str(kwargs.get("milvus_uri") or os.path.join(working_dir, DEFAULT_DB_FILE))
        self.image_root = kwargs.get("image_root")
        self.mm_base_url: str | None = kwargs.get("mm_base_url")
        hybrid_namespaces = kwargs.get("hybrid_namespaces", DEFAULT_HYBRID_NAMESPACES)
        self.hybrid = self.mm_base_url is not None and self.namespace in set(hybrid_namespaces)
        self._max_batch_size = int(self.global_config.get("embedding_batch_num") or 32)
        self.collection_name = self._collection_name(str(kwargs.get("collection_prefix", "lightrag")))
        self._kwargs = kwargs
        self._store: MultiVectorMilvusStore | None = None

    # ------------------------------------------------------------------------------------------- setup
    def _collection_name(self, prefix: str) -> str:
        """``<prefix>_<workspace>_<namespace>_<model>_<dim>d``, in Milvus' allowed characters."""
        parts = [prefix, self.workspace, self.namespace, self._generate_collection_suffix() or ""]
        name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(p for p in parts if p))
        if not re.match(r"[A-Za-z_]", name):
            name = "_" + name
        if len(name) > _MAX_COLLECTION_NAME:
            name = name[: _MAX_COLLECTION_NAME - 33] + "_" + make_id(name)
        return name

    def _settings(self) -> MilvusStoreSettings:
        kw = self._kwargs
        text_index = FieldIndexSettings(**kw.get("text_index", {}))
        image_index = FieldIndexSettings(**kw.get("image_index", {}))
        return MilvusStoreSettings(
            uri=self.milvus_uri, token=str(kw.get("milvus_token", "")), db_name=str(kw.get("milvus_db_name", "")),
            collection_name=self.collection_name, text_dim=int(self.embedding_func.embedding_dim),
            image_dim=None if self.hybrid else _PLACEHOLDER_DIM, text_index=text_index, image_index=image_index,
            embed_text_into_image_space=bool(kw.get("embed_text_into_image_space", True)),
            batch_size=self._max_batch_size,
        )

    def _open(self, image_embedder: MultiModalEmbeddingClient | None = None, client: Any = None) -> MultiVectorMilvusStore:
        if self.hybrid and image_embedder is None:
            image_embedder = MultiModalEmbeddingClient(
                base_url=str(self.mm_base_url), api_key=self._kwargs.get("mm_api_key"),
                dimensions=self._kwargs.get("mm_dimensions"),
            )
        if client is None and "://" not in self.milvus_uri:
            Path(self.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
        return MultiVectorMilvusStore(None, image_embedder, self._settings(), client=client)

    async def initialize(self) -> None:
        """Open (or create) this namespace's collection; the image server's ``/info`` gives its dim."""
        if self._store is None:
            self._store = await asyncio.to_thread(self._open)
            logger.info(f"[{self.workspace}] {STORAGE_NAME} {self.namespace}: collection {self.collection_name} "
                        f"at {self.milvus_uri} ({'hybrid text+image' if self.hybrid else 'text only'})")

    async def finalize(self) -> None:
        """Close the image-space client's HTTP session and this storage's Milvus connection."""
        store, self._store = self._store, None
        if store is None:
            return
        if store.image_embedder is not None:
            await store.image_embedder.http.aclose()  # type: ignore[attr-defined]
        await asyncio.to_thread(store.close)

    @property
    def store(self) -> MultiVectorMilvusStore:
        """The underlying store (after :meth:`initialize`)."""
        if self._store is None:
            raise RuntimeError(f"{STORAGE_NAME} is not initialized: await rag.initialize_storages() first")
        return self._store

    # ----------------------------------------------------------------------------------------- writing
    def image_of(self, record: dict[str, Any]) -> str | None:
        """The image file of a record (``img_path`` field or ``Image Path:`` line), if it exists on disk."""
        raw = record.get("img_path") or record.get("image_path")
        if not raw:
            match = _IMAGE_PATH_LINE.search(str(record.get("content", "")))
            raw = match.group("path") if match else None
        if not raw or str(raw).lower() in ("none", "null", "n/a"):
            return None
        path = Path(str(raw)).expanduser()
        if not path.is_absolute() and self.image_root:
            path = Path(str(self.image_root)) / path
        if not path.is_file():
            logger.warning(f"[{self.workspace}] {self.namespace}: image {raw!r} not found; stored text-only")
            return None
        return str(path)

    def _item(self, lightrag_id: str, record: dict[str, Any], now: int) -> StoreItem:
        limit = self.store.settings.max_varchar_bytes
        meta = {k: v for k, v in record.items() if k in self.meta_fields and k != "content"}
        meta = _json_safe({**meta, _ID_KEY: lightrag_id, _CREATED_KEY: now})
        image = self.image_of(record) if self.hybrid else None
        content = str(record.get("content", ""))
        return StoreItem(
            text=_truncate_utf8(content or lightrag_id, limit), image=image, id=_store_key(lightrag_id),
            doc_id=_truncate_utf8(str(record.get("full_doc_id", "")), _MAX_SHORT_BYTES),
            chunk_id=_truncate_utf8(lightrag_id, _MAX_SHORT_BYTES), uri=_truncate_utf8(image or "", limit),
            meta=meta,
        )

    async def _embed_documents(self, texts: list[str]) -> np.ndarray:
        batches = [texts[i : i + self._max_batch_size] for i in range(0, len(texts), self._max_batch_size)]
        parts = await asyncio.gather(*(self.embedding_func(b, context="document") for b in batches))
        vectors = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        if vectors.shape != (len(texts), self.store.text_dim):
            raise ValueError(
                f"embedding_func returned shape {vectors.shape}, expected ({len(texts)}, {self.store.text_dim}); "
                f"its embedding_dim does not match the vectors it returns"
            )
        return vectors

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        """Embed (text and, on hybrid namespaces, image space, concurrently) and upsert ``{id: record}``."""
        if not data:
            return
        now = int(time.time())
        items = [self._item(k, v, now) for k, v in data.items()]
        contents = [str(v.get("content", "")) or k for k, v in data.items()]

        async def no_images() -> tuple[list[Any], list[Any]]:
            return [None] * len(items), [None] * len(items)

        image_job = self.store.aembed_items(items) if self.hybrid else no_images()
        text_vecs, (_, image_vecs) = await asyncio.gather(self._embed_documents(contents), image_job)
        await asyncio.to_thread(self.store.upsert_vectors, items, list(text_vecs), image_vecs)

    # ----------------------------------------------------------------------------------------- reading
    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        meta = dict(row.get("meta") or {})
        lightrag_id = meta.pop(_ID_KEY, row.get("id"))
        created_at = meta.pop(_CREATED_KEY, None)
        out = {**meta, "id": lightrag_id, "created_at": created_at}
        if "content" in self.meta_fields:
            out["content"] = row.get("text", "")
        return out

    async def get_by_id(self, id: str) -> dict[str, Any] | None:
        """The record with LightRAG id ``id`` (meta fields, ``id``, ``created_at``), or None."""
        found = await self.get_by_ids([id])
        return found[0] if found else None

    async def get_by_ids(self, ids: list[str]) -> list[dict[str, Any]]:
        """Records in ``ids`` order; None where an id is not stored."""
        if not ids:
            return []
        rows = await asyncio.to_thread(self.store.get, [_store_key(i) for i in ids], ["id", "text", "meta"])
        by_key = {str(r["id"]): self._record(r) for r in rows}
        return [by_key.get(_store_key(i)) for i in ids]  # type: ignore[misc]

    async def get_vectors_by_ids(self, ids: list[str]) -> dict[str, list[float]]:
        """``{id: text_vec}`` (LightRAG's embedding space) for the stored ids."""
        if not ids:
            return {}
        keys = {_store_key(i): i for i in ids}
        rows = await asyncio.to_thread(self.store.get, list(keys), ["id", TEXT_FIELD, HAS_FLAG[TEXT_FIELD]])
        return {keys[str(r["id"])]: [float(x) for x in r[TEXT_FIELD]] for r in rows if r.get(HAS_FLAG[TEXT_FIELD])}

    # ------------------------------------------------------------------------------------------ search
    def _field_search(self, field: str, vector: np.ndarray, limit: int, floor: float) -> list[tuple[str, float]]:
        """(key, similarity) of the rows whose ``field`` vector scores at least ``floor`` (range search)."""
        if self.store.local is not None:  # embedded: the store's in-process copy (no Milvus round trip)
            hits = self.store.search_field(field, vector, top_k=limit)
            return [(h.id, h.score) for h in hits if h.score >= floor]
        index = self.store.index_settings(field).search()
        index["params"] = {**index["params"], "radius": floor}
        result = self.store.client.search(
            self.store.collection_name, data=[vector.tolist()], anns_field=field, limit=limit,
            search_params=index, filter=f"{HAS_FLAG[field]} == true", output_fields=["id"],
        )
        return [(str(h["id"]), float(h["distance"])) for h in result[0] if float(h["distance"]) >= floor]

    def _search(self, text_vec: np.ndarray, image_vec: np.ndarray | None, top_k: int) -> list[dict[str, Any]]:
        store = self.store
        limit = top_k * self.candidate_multiplier
        text_hits = self._field_search(TEXT_FIELD, text_vec, limit, self.cosine_better_than_threshold)
        image_hits = ([] if image_vec is None else
                      self._field_search(IMAGE_FIELD, image_vec, limit, self.image_cosine_better_than_threshold))
        scores: dict[str, dict[str, float]] = {}
        for field, hits in ((TEXT_FIELD, text_hits), (IMAGE_FIELD, image_hits)):
            for key, score in hits:
                scores.setdefault(key, {})[field] = score
        if not scores:
            return []
        if image_vec is None:
            ranked = [(key, score) for key, score in text_hits[:top_k]]
        elif store.local is not None:  # the same fusion over the same per-field candidates, in process
            per_field = {f: h for f, h in ((TEXT_FIELD, text_hits), (IMAGE_FIELD, image_hits)) if h}
            ranked = list(self.fusion.fuse(per_field, top_k, {f: store.index_settings(f).metric for f in per_field}))
        else:
            # Fuse in Milvus (same RRF / weighted semantics as HybridRetriever), restricted per field to the
            # candidates that passed that field's threshold (Milvus Lite ignores a radius in hybrid requests).
            requests, fields = [], []
            for field, vector, hits in ((TEXT_FIELD, text_vec, text_hits), (IMAGE_FIELD, image_vec, image_hits)):
                if not hits:
                    continue
                keys = ", ".join(literal(key) for key, _ in hits)
                requests.append(store._pymilvus.AnnSearchRequest(
                    data=[vector.tolist()], anns_field=field, param=store.index_settings(field).search(),
                    limit=len(hits), expr=and_exprs(f"{HAS_FLAG[field]} == true", f"id in [{keys}]"),
                ))
                fields.append(field)
            result = store.client.hybrid_search(store.collection_name, requests, self.fusion.ranker(fields),
                                                limit=top_k, output_fields=["id"])
            ranked = sorted(((str(h["id"]), float(h["distance"])) for h in result[0]), key=lambda h: (-h[1], h[0]))
        if store.local is not None:
            rows = {key: {"id": key, **store.local.rows[key]} for key, _ in ranked if key in store.local.rows}
        else:
            rows = {str(r["id"]): r for r in store.get([key for key, _ in ranked], ["id", "text", "meta", "uri"])}
        out = []
        for key, score in ranked:
            if key not in rows:
                continue
            record = self._record(rows[key])
            record["distance"] = score
            record["field_scores"] = scores.get(key, {})
            if rows[key].get("uri"):
                record["image_path"] = rows[key]["uri"]
            out.append(record)
        return out

    async def query(
        self, query: str, top_k: int, query_embedding: Sequence[float] | np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """Top ``top_k`` records for ``query``: text-only, or hybrid (fused ``distance``) on hybrid namespaces.

        ``query_embedding`` (LightRAG's own query vector) is used for ``text_vec`` when given; the
        image-space query vector comes from the mm server. A candidate must reach
        ``cosine_better_than_threshold`` on ``text_vec`` (``image_cosine_better_than_threshold`` on
        ``image_vec``); ``distance`` is the cosine (text only) or the fused score (hybrid), best first.
        """
        if top_k <= 0:
            return []

        async def text_vector() -> np.ndarray:
            if query_embedding is not None:
                return np.asarray(query_embedding, dtype=np.float32).reshape(-1)
            out = await self.embedding_func([query], context="query", _priority=_constants.DEFAULT_QUERY_PRIORITY)
            return np.asarray(out, dtype=np.float32)[0]

        async def image_vector() -> np.ndarray | None:
            if not self.hybrid or self.store.image_embedder is None:
                return None
            return np.asarray(await self.store.image_embedder.aembed([query], "query"), dtype=np.float32)[0]

        text_vec, image_vec = await asyncio.gather(text_vector(), image_vector())
        return await asyncio.to_thread(self._search, text_vec, image_vec, top_k)

    # ----------------------------------------------------------------------------------------- deletes
    async def delete(self, ids: list[str]) -> None:
        """Delete records by LightRAG id."""
        if ids:
            await asyncio.to_thread(self.store.delete, [_store_key(i) for i in ids])

    async def delete_entity(self, entity_name: str) -> None:
        """Delete an entity's vector (id ``ent-<md5(name)>``, as LightRAG computes it)."""
        await self.delete([_utils.compute_mdhash_id(entity_name, prefix="ent-")])

    async def delete_entity_relation(self, entity_name: str) -> None:
        """Delete every relation whose ``src_id`` or ``tgt_id`` is ``entity_name``."""
        name = literal(entity_name)
        expr = f'meta["src_id"] == {name} or meta["tgt_id"] == {name}'
        rows = await asyncio.to_thread(self.store.query, expr, output_fields=["id"])
        if rows:
            await asyncio.to_thread(self.store.delete, [str(r["id"]) for r in rows])

    async def index_done_callback(self) -> None:
        """Nothing to flush: every write already reached Milvus (which persists it)."""
        return None

    async def drop(self) -> dict[str, str]:
        """Drop the collection and recreate it empty."""
        try:
            old = self.store
            await asyncio.to_thread(old.drop)
            self._store = await asyncio.to_thread(self._open, old.image_embedder, old.client)  # type: ignore[arg-type]
        except Exception as exc:  # LightRAG's contract: report, do not raise
            logger.error(f"[{self.workspace}] error dropping {self.collection_name}: {exc}")
            return {"status": "error", "message": str(exc)}
        return {"status": "success", "message": "data dropped"}


__all__ = ["STORAGE_NAME", "MultiVectorMilvusStorage", "register"]

register()
