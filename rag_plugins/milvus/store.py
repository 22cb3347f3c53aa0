"""``MultiVectorMilvusStore``: one Milvus collection with a text vector and an image-space vector per item.

Schema: ``id`` (VARCHAR primary key), ``text_vec`` (dim of the text model), ``image_vec`` (dim of the
image-space model), scalars ``doc_id``, ``chunk_id``, ``modality``, ``uri``, ``page``, ``caption``, ``text``,
``meta`` (JSON), and two flags ``has_text_vec`` / ``has_image_vec``.

Items without a vector for a field: Milvus needs a value in every vector field of every row, and a zero vector
is invalid under COSINE (and would score 0 under IP, i.e. still rank). Such rows store a fixed unit "null"
vector (1, 0, 0, ...) in that field and ``false`` in its ``has_*`` flag; every search request on the field
filters on the flag, so a null vector is never returned as a hit for that field, while the row stays
searchable through its other field.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rag_plugins.http import run_sync
from rag_plugins.milvus._pymilvus import import_pymilvus, milvus_lite_major
from rag_plugins.milvus.embedders import ImageSpaceEmbedder, TextEmbedder, embedder_dim
from rag_plugins.milvus.errors import CollectionNotFoundError, DimensionMismatchError
from rag_plugins.milvus.filters import Filter, and_exprs, literal, to_expr
from rag_plugins.milvus.fusion import Fusion
from rag_plugins.milvus.items import ID_MAX_LENGTH, StoreItem
from rag_plugins.milvus.local_index import LocalMirror, forget_mirror, is_embedded_uri, shared_mirror
from rag_plugins.milvus.settings import DEFAULT_BUILD_PARAMS, FieldIndexSettings, MilvusStoreSettings

TEXT_FIELD = "text_vec"
IMAGE_FIELD = "image_vec"
VECTOR_FIELDS = (TEXT_FIELD, IMAGE_FIELD)
HAS_FLAG = {TEXT_FIELD: "has_text_vec", IMAGE_FIELD: "has_image_vec"}
#: Scalar fields returned with every hit.
SCALAR_FIELDS = ["doc_id", "chunk_id", "modality", "uri", "page", "caption", "text", "meta",
                 "has_text_vec", "has_image_vec"]
_SHORT_VARCHAR = 1024


def null_vector(dim: int) -> list[float]:
    """The stand-in stored for a missing vector: the unit vector (1, 0, ..., 0) (valid for COSINE and IP)."""
    vec = [0.0] * dim
    vec[0] = 1.0
    return vec


@dataclass
class Hit:
    """One search result: primary key, fused (or single-field) score, scalar fields."""

    id: str
    score: float
    fields: dict[str, Any]


class MultiVectorMilvusStore:
    """A Milvus collection holding ``text_vec`` + ``image_vec`` per item, with idempotent batched ingestion.

    Args:
        text_embedder: Embeds texts into ``text_vec`` (e.g. ``EmbeddingClient``); None for raw-vector use.
        image_embedder: Embeds images and texts into ``image_vec`` (e.g. ``MultiModalEmbeddingClient``).
        settings: Connection, collection name, dims and per-field indexes.
        create: Create the collection when it does not exist (else raise :class:`CollectionNotFoundError`).
        client: An existing ``pymilvus.MilvusClient`` to use instead of opening ``settings.uri``.

    Raises:
        DimensionMismatchError: an embedder's dim differs from ``settings`` or from the existing collection.
        CollectionNotFoundError: ``create=False`` and the collection does not exist.

    Example:
        >>> store = MultiVectorMilvusStore(EmbeddingClient("http://127.0.0.1:8001"), mm_client,
        ...                                MilvusStoreSettings(uri="./rag.db"))
        >>> store.upsert([StoreItem(text="...", doc_id="d1", chunk_id="0")])
    """

    def __init__(
        self,
        text_embedder: TextEmbedder | None = None,
        image_embedder: ImageSpaceEmbedder | None = None,
        settings: MilvusStoreSettings | None = None,
        *,
        create: bool = True,
        client: Any = None,
    ) -> None:
        self.settings = settings or MilvusStoreSettings()
        self.text_embedder = text_embedder
        self.image_embedder = image_embedder
        pymilvus = import_pymilvus()
        self._pymilvus = pymilvus
        self.client = client if client is not None else pymilvus.MilvusClient(
            uri=self.settings.uri, token=self.settings.token, db_name=self.settings.db_name
        )
        self.collection_name = self.settings.collection_name
        # milvus-lite >= 3 (embedded): upsert = a point read per key + insert. Keys the local copy has never
        # seen are written with insert (no reads); known keys keep upsert (an insert would duplicate a key
        # that already sits in a flushed segment). Servers and milvus-lite 2.x always upsert.
        self._insert_new = is_embedded_uri(self.settings.uri) and milvus_lite_major() >= 3
        self.text_dim = self._configured_dim(TEXT_FIELD, self.settings.text_dim, text_embedder)
        self.image_dim = self._configured_dim(IMAGE_FIELD, self.settings.image_dim, image_embedder)
        use_local = self.settings.local_search
        if use_local is None:
            use_local = is_embedded_uri(self.settings.uri)
        configured = {TEXT_FIELD: self.settings.text_index, IMAGE_FIELD: self.settings.image_index}
        # Index settings with the index type Milvus has (or gets); see FieldIndexSettings.resolved.
        self._indexes = {f: index.resolved(use_local) for f, index in configured.items()}
        if self.exists():
            self._check_existing()
            self._adopt_index_types(configured)
            self.client.load_collection(self.collection_name)
        elif create:
            self._create()
        else:
            raise CollectionNotFoundError(self._missing_message())
        self.local: LocalMirror | None = None
        if use_local:
            self._open_local()

    # ------------------------------------------------------------------------------------ local search
    def _local_key(self) -> tuple[str, str, str]:
        uri = self.settings.uri
        if is_embedded_uri(uri):
            uri = str(Path(uri).resolve())
        return (uri, self.settings.db_name, self.collection_name)

    def _open_local(self) -> None:
        assert self.text_dim is not None
        assert self.image_dim is not None
        dims = {TEXT_FIELD: self.text_dim, IMAGE_FIELD: self.image_dim}
        metrics: dict[str, str] = {f: self.index_settings(f).metric for f in VECTOR_FIELDS}
        ann = self.settings.local_ann
        self.local, created = shared_mirror(self._local_key(), lambda: LocalMirror(dims, metrics, ann))
        if created and not self._load_side_files(self.local):
            self._load_local(self.local)

    def local_index_dir(self) -> Path | None:
        """Where the in-process copy is saved (next to an embedded DB file), or None (server URI / off)."""
        if not (self.settings.local_persist and is_embedded_uri(self.settings.uri)):
            return None
        db = Path(self.settings.uri).resolve()
        return db.with_name(db.name + ".local") / (self.settings.db_name or "default") / self.collection_name

    def _load_side_files(self, mirror: LocalMirror, sample: int = 16) -> bool:
        """Load the saved copy when it matches the collection's row count and a sample of its vectors."""
        folder = self.local_index_dir()
        if folder is None or not (folder / "manifest.json").exists():
            return False
        if not mirror.load(folder, self.count()):
            return False
        keys = sorted(mirror.rows)
        picks = [keys[i] for i in np.random.default_rng().choice(len(keys), min(sample, len(keys)), replace=False)]
        fresh = {str(r["id"]): r for r in self.client.get(self.collection_name, ids=picks,
                                                           output_fields=["id", *VECTOR_FIELDS, *HAS_FLAG.values()])}
        for key in picks:
            row = fresh.get(key)
            for field, vectors in mirror.fields.items():
                pos = vectors.position(key)
                if row is None or (pos is None) == bool(row[HAS_FLAG[field]]) or (
                    pos is not None and not np.allclose(vectors.vector(pos), vectors.normalized(row[field]),
                                                        atol=1e-6)):
                    mirror.clear()
                    return False
        mirror.persisted = True
        return True

    def save_local_index(self) -> Path | None:
        """Write the in-process copy next to the DB file now (also done by :meth:`close`); its folder or None."""
        folder = self.local_index_dir()
        if self.local is None or folder is None or not self.exists():
            return None
        self.local.build_indexes()
        self.local.save(folder, self.count())
        self.local.persisted = True
        return folder

    def build_local_index(self) -> dict[str, float]:
        """Build the in-process IVF indexes now (else the first search does); ``{field: seconds}``."""
        return {} if self.local is None else self.local.build_indexes()

    def _local_written(self) -> None:
        """A write is about to change the collection: saved side files no longer match it."""
        assert self.local is not None
        if self.local.persisted:
            folder = self.local_index_dir()
            if folder is not None:
                (folder / "manifest.json").unlink(missing_ok=True)
            self.local.persisted = False

    def _load_local(self, mirror: LocalMirror, batch_size: int = 1000) -> None:
        """Fill ``mirror`` with every row of the collection (a progress bar when there are many)."""
        total = self.count()
        if total == 0:
            return
        # milvus-lite 3.x has no query_iterator: list the keys, then fetch rows by key in batches.
        keys = sorted(self._matching_keys('id != ""'))
        with tqdm(total=len(keys), desc="milvus local index", unit="row", disable=total < 10 * batch_size) as bar:
            for start in range(0, len(keys), batch_size):
                rows = self.client.get(self.collection_name, ids=keys[start : start + batch_size],
                                       output_fields=["id", *VECTOR_FIELDS, *SCALAR_FIELDS])
                mirror.upsert([dict(r) for r in rows], HAS_FLAG, SCALAR_FIELDS)
                bar.update(len(rows))

    def refresh_local_index(self) -> None:
        """Reload the in-process copy from Milvus (after writes made with another client)."""
        if self.local is not None:
            self.local.clear()
            self._load_local(self.local)

    # --------------------------------------------------------------------------------------------- schema
    def _configured_dim(self, field: str, configured: int | None, embedder: TextEmbedder | None) -> int | None:
        if embedder is None:
            return configured
        served = embedder_dim(embedder, "text" if field == TEXT_FIELD else "image-space")
        if configured is not None and configured != served:
            raise DimensionMismatchError(
                f"{field}: settings say dim {configured} but the embedder serves dim {served}; drop the "
                f"explicit {'text_dim' if field == TEXT_FIELD else 'image_dim'} or serve the matching model"
            )
        return served

    def _missing_message(self) -> str:
        return (
            f"Milvus collection {self.collection_name!r} does not exist at {self.settings.uri!r}: ingest first "
            f"with MultiVectorMilvusStore(..., create=True).upsert(items), or check collection_name and uri"
        )

    def exists(self) -> bool:
        """Whether the collection exists."""
        return bool(self.client.has_collection(self.collection_name))

    def require_collection(self) -> None:
        """Raise :class:`CollectionNotFoundError` (naming the fix) when the collection is gone."""
        if not self.exists():
            raise CollectionNotFoundError(self._missing_message())

    def _existing_dims(self) -> dict[str, int]:
        described = self.client.describe_collection(self.collection_name)
        dims = {f["name"]: int(f.get("params", {}).get("dim", 0)) for f in described["fields"]}
        missing = [f for f in (*VECTOR_FIELDS, *HAS_FLAG.values()) if f not in dims]
        if missing:
            raise DimensionMismatchError(
                f"collection {self.collection_name!r} lacks fields {missing}: it was not made by "
                f"MultiVectorMilvusStore; use another collection_name"
            )
        return {f: dims[f] for f in VECTOR_FIELDS}

    def _check_existing(self) -> None:
        dims = self._existing_dims()
        for field, wanted, attr in ((TEXT_FIELD, self.text_dim, "text_dim"), (IMAGE_FIELD, self.image_dim, "image_dim")):
            if wanted is None:
                setattr(self, attr, dims[field])
            elif wanted != dims[field]:
                raise DimensionMismatchError(
                    f"collection {self.collection_name!r} has {field} dim {dims[field]} but the "
                    f"{'text' if field == TEXT_FIELD else 'image-space'} model gives dim {wanted}: use the model "
                    f"the collection was built with, or another collection_name, or drop it "
                    f"(store.drop()) and re-ingest"
                )

    def _create(self) -> None:
        if self.text_dim is None or self.image_dim is None:
            raise ValueError(
                "cannot create the collection without both dims: pass text_embedder and image_embedder, or "
                "MilvusStoreSettings(text_dim=..., image_dim=...)"
            )
        data_type = self._pymilvus.DataType
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", data_type.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(TEXT_FIELD, data_type.FLOAT_VECTOR, dim=self.text_dim)
        schema.add_field(IMAGE_FIELD, data_type.FLOAT_VECTOR, dim=self.image_dim)
        for name in ("doc_id", "chunk_id", "modality"):
            schema.add_field(name, data_type.VARCHAR, max_length=_SHORT_VARCHAR)
        schema.add_field("uri", data_type.VARCHAR, max_length=self.settings.max_varchar_bytes)
        schema.add_field("page", data_type.INT64)
        schema.add_field("caption", data_type.VARCHAR, max_length=self.settings.max_varchar_bytes)
        schema.add_field("text", data_type.VARCHAR, max_length=self.settings.max_varchar_bytes)
        schema.add_field("meta", data_type.JSON)
        schema.add_field("has_text_vec", data_type.BOOL)
        schema.add_field("has_image_vec", data_type.BOOL)
        index_params = self.client.prepare_index_params()
        for field, index in self._indexes.items():
            index_params.add_index(field, index_type=index.index_type, metric_type=index.metric,
                                   params=index.build())
        self.client.create_collection(self.collection_name, schema=schema, index_params=index_params,
                                      consistency_level=self.settings.consistency_level)

    def _adopt_index_types(self, configured: dict[str, FieldIndexSettings]) -> None:
        """Fields left to the store's choice take the index type the existing collection has.

        A file made with searches in process has ``FLAT``; reopened with ``local_search=False`` its searches
        must send FLAT's parameters, not HNSW's.
        """
        for field, index in configured.items():
            if index.index_type is not None:
                continue
            try:
                found = self.client.describe_index(self.collection_name, field).get("index_type")
            except self._pymilvus.MilvusException:  # no index on the field: keep the default choice
                continue
            if found in DEFAULT_BUILD_PARAMS:
                self._indexes[field] = replace(index, index_type=found)

    def index_settings(self, field: str) -> FieldIndexSettings:
        """Index settings of ``text_vec`` or ``image_vec``, with the index type the collection uses."""
        return self._indexes[field]

    def drop(self) -> None:
        """Drop the collection (all rows)."""
        self.client.drop_collection(self.collection_name)
        folder = self.local_index_dir()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if self.local is not None:
            self.local.clear()
            forget_mirror(self._local_key())
            self.local = None

    def close(self) -> None:
        """Save the in-process copy when it changed (embedded URIs, ``local_persist``); close the connection."""
        if self.local is not None and not self.local.persisted:
            self.save_local_index()
        self.client.close()

    # ------------------------------------------------------------------------------------------ ingestion
    def _check_vectors(self, field: str, vectors: np.ndarray, n: int) -> None:
        dim = self.text_dim if field == TEXT_FIELD else self.image_dim
        if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] != dim:
            raise DimensionMismatchError(
                f"{field}: the embedder returned shape {tuple(vectors.shape)}, expected ({n}, {dim}); the "
                f"server's model changed since the collection was made: serve the same model or use another "
                f"collection_name"
            )

    @staticmethod
    def _vector_value(dim: int, vector: Any) -> np.ndarray:
        """(dim,) float32 contiguous array of ``vector``, or the null stand-in when it is None."""
        if vector is None:
            return np.asarray(null_vector(dim), np.float32)
        return np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)

    def _row(self, item: StoreItem, text_vec: Any, image_vec: Any) -> dict[str, Any]:
        for name in ("text", "caption", "uri"):
            size = len(getattr(item, name).encode("utf-8"))
            if size > self.settings.max_varchar_bytes:
                raise ValueError(
                    f"item {item.key}: {name} has {size} UTF-8 bytes, over the {self.settings.max_varchar_bytes} "
                    f"Milvus VARCHAR limit; split it into smaller chunks"
                )
        assert self.text_dim is not None
        assert self.image_dim is not None
        return {
            "id": item.key,
            # float32 arrays, not lists: pymilvus packs an ndarray in one copy (2x faster ingest than lists).
            TEXT_FIELD: self._vector_value(self.text_dim, text_vec),
            IMAGE_FIELD: self._vector_value(self.image_dim, image_vec),
            "has_text_vec": text_vec is not None,
            "has_image_vec": image_vec is not None,
            "doc_id": item.doc_id, "chunk_id": item.chunk_id, "modality": item.modality, "uri": item.uri,
            "page": int(item.page), "caption": item.caption, "text": item.text, "meta": item.meta,
        }

    def upsert_vectors(
        self, items: Sequence[StoreItem], text_vecs: Sequence[Any], image_vecs: Sequence[Any]
    ) -> list[str]:
        """Upsert items whose vectors are already computed (None in a list = no vector for that field).

        Returns:
            The primary keys, in item order. Items with the same key keep the last occurrence.
        """
        if not len(items) == len(text_vecs) == len(image_vecs):
            raise ValueError("items, text_vecs and image_vecs must have the same length")
        rows: dict[str, dict[str, Any]] = {}
        for item, tv, iv in zip(items, text_vecs, image_vecs, strict=True):
            if tv is None and iv is None:
                raise ValueError(f"item {item.key} has neither a text_vec nor an image_vec")
            rows[item.key] = self._row(item, tv, iv)
        if rows:
            if self.local is not None:
                self._local_written()
            self._write_rows(list(rows.values()))
            if self.local is not None:
                self.local.upsert(list(rows.values()), HAS_FLAG, SCALAR_FIELDS)
        return [item.key for item in items]

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Write whole rows: insert the keys the local copy does not hold (embedded milvus-lite 3), else upsert."""
        if self.local is None or not self._insert_new:
            self.client.upsert(self.collection_name, rows)
            return
        known = self.local.rows
        fresh = [r for r in rows if r["id"] not in known]
        seen = [r for r in rows if r["id"] in known]
        if fresh:
            self.client.insert(self.collection_name, fresh)
        if seen:
            self.client.upsert(self.collection_name, seen)

    async def aembed_items(self, items: Sequence[StoreItem]) -> tuple[list[Any], list[Any]]:
        """``text_vec`` and ``image_vec`` (or None) per item; the text and image-space calls run concurrently."""
        text_idx = [i for i, it in enumerate(items) if it.text_for_text_vec] if self.text_embedder else []
        image_idx: list[int] = []
        image_text_idx: list[int] = []
        if self.image_embedder is not None:
            image_idx = [i for i, it in enumerate(items) if it.image is not None]
            if self.settings.embed_text_into_image_space:
                image_text_idx = [i for i, it in enumerate(items) if it.image is None and it.text]

        async def nothing() -> np.ndarray:
            return np.zeros((0, 0), np.float32)

        text_job = (self.text_embedder.aembed([items[i].text_for_text_vec for i in text_idx], "document")
                    if self.text_embedder is not None and text_idx else nothing())
        image_job = (self.image_embedder.aembed_images([items[i].image for i in image_idx], None, "document")
                     if self.image_embedder is not None and image_idx else nothing())
        image_text_job = (self.image_embedder.aembed([items[i].text for i in image_text_idx], "document")
                          if self.image_embedder is not None and image_text_idx else nothing())
        text_out, image_out, image_text_out = await asyncio.gather(text_job, image_job, image_text_job)
        text_vecs: list[Any] = [None] * len(items)
        image_vecs: list[Any] = [None] * len(items)
        for field, idx, out, target in (
            (TEXT_FIELD, text_idx, text_out, text_vecs),
            (IMAGE_FIELD, image_idx, image_out, image_vecs),
            (IMAGE_FIELD, image_text_idx, image_text_out, image_vecs),
        ):
            if idx:
                self._check_vectors(field, np.asarray(out), len(idx))
                for row, i in enumerate(idx):
                    target[i] = out[row]
        return text_vecs, image_vecs

    def _batches(self, items: Sequence[StoreItem]) -> Iterable[Sequence[StoreItem]]:
        size = self.settings.batch_size
        return (items[i : i + size] for i in range(0, len(items), size))

    def upsert(self, items: Sequence[StoreItem], *, show_progress: bool = True) -> list[str]:
        """Embed and upsert ``items`` batch by batch (idempotent: same item → same key → same row).

        Each batch is written as soon as it is embedded, so an interrupted run resumes by running again.

        Returns:
            The primary keys, in item order.
        """
        self.require_collection()
        keys: list[str] = []
        with tqdm(total=len(items), desc="milvus upsert", unit="item", disable=not show_progress) as bar:
            for batch in self._batches(items):
                # The embedding clients' sync paths share one background loop; run the concurrent
                # text + image coroutine there too, so sync ingestion also works inside Jupyter.
                text_vecs, image_vecs = run_sync(self.aembed_items(batch))
                keys.extend(self.upsert_vectors(batch, text_vecs, image_vecs))
                bar.update(len(batch))
        return keys

    async def aupsert(self, items: Sequence[StoreItem], *, show_progress: bool = True) -> list[str]:
        """Async :meth:`upsert` (Milvus calls run in a worker thread)."""
        await asyncio.to_thread(self.require_collection)
        keys: list[str] = []
        with tqdm(total=len(items), desc="milvus upsert", unit="item", disable=not show_progress) as bar:
            for batch in self._batches(items):
                text_vecs, image_vecs = await self.aembed_items(batch)
                keys.extend(await asyncio.to_thread(self.upsert_vectors, batch, text_vecs, image_vecs))
                bar.update(len(batch))
        return keys

    def add_nodes(self, nodes: Sequence[Any], *, show_progress: bool = True) -> list[str]:
        """Upsert LlamaIndex ``TextNode`` / ``ImageNode`` objects (keys = node ids)."""
        from rag_plugins.milvus.nodes import item_from_node

        return self.upsert([item_from_node(n) for n in nodes], show_progress=show_progress)

    # ------------------------------------------------------------------------------------ reads / deletes
    def count(self, filters: Filter = None) -> int:
        """Number of rows (matching ``filters``)."""
        self.require_collection()
        res = self.client.query(self.collection_name, filter=to_expr(filters), output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def get(self, ids: Sequence[str], output_fields: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows by primary key (vectors only when asked for in ``output_fields``)."""
        self.require_collection()
        if not ids:
            return []
        rows = self.client.get(self.collection_name, ids=list(ids), output_fields=output_fields or ["id", *SCALAR_FIELDS])
        return [dict(r) for r in rows]

    def query(self, filters: Filter, *, limit: int | None = None,
              output_fields: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows matching a scalar filter."""
        self.require_collection()
        kwargs: dict[str, Any] = {"limit": limit} if limit is not None else {}
        rows = self.client.query(self.collection_name, filter=to_expr(filters),
                                 output_fields=output_fields or ["id", *SCALAR_FIELDS], **kwargs)
        return [dict(r) for r in rows]

    def delete(self, ids: Sequence[str]) -> None:
        """Delete rows by primary key."""
        self.require_collection()
        if ids:
            if self.local is not None:
                self._local_written()
            self.client.delete(self.collection_name, ids=list(ids))
            if self.local is not None:
                self.local.remove([str(i) for i in ids])

    def delete_where(self, filters: Filter) -> None:
        """Delete every row matching a scalar filter (Milvus expression or dict)."""
        self.require_collection()
        expr = to_expr(filters)
        if not expr:
            raise ValueError("delete_where needs a filter; use drop() to remove every row")
        keys = self._matching_keys(expr) if self.local is not None else []
        if self.local is not None:
            self._local_written()
        self.client.delete(self.collection_name, filter=expr)
        if self.local is not None:
            self.local.remove(list(keys))

    def delete_doc(self, doc_id: str) -> None:
        """Delete every item of one document."""
        self.delete_where(f"doc_id == {literal(doc_id)}")

    def _matching_keys(self, expr: str) -> set[str]:
        rows = self.client.query(self.collection_name, filter=expr, output_fields=["id"])
        return {str(r["id"]) for r in rows}

    # ------------------------------------------------------------------------------------------- search
    def search(
        self,
        text_query: Sequence[float] | np.ndarray | None,
        image_query: Sequence[float] | np.ndarray | None,
        *,
        fusion: Fusion | None = None,
        top_k: int = 10,
        text_limit: int | None = None,
        image_limit: int | None = None,
        filters: Filter = None,
    ) -> list[Hit]:
        """Hybrid search: one ``AnnSearchRequest`` per given query vector, fused by ``fusion``.

        Rows whose vector for a field is the null stand-in are excluded from that field's request.
        Hits are ordered by fused score, ties broken by id, so equal inputs give equal rankings.

        Args:
            text_query: Query vector for ``text_vec`` (None: skip the field).
            image_query: Query vector for ``image_vec`` (None: skip the field).
            fusion: RRF or weighted (default RRF, k=60).
            top_k: Hits returned.
            text_limit: Candidates from ``text_vec`` (default ``top_k``).
            image_limit: Candidates from ``image_vec`` (default ``top_k``).
            filters: Scalar filter applied to both fields.
        """
        if self.local is None:
            self.require_collection()  # the local copy is emptied and detached by drop(): no round trip
        fusion = fusion or Fusion()
        user_expr = to_expr(filters)
        if self.local is not None:
            return self._local_search(text_query, image_query, fusion, top_k, text_limit, image_limit, user_expr)
        requests, fields = [], []
        for field, vector, limit in ((TEXT_FIELD, text_query, text_limit), (IMAGE_FIELD, image_query, image_limit)):
            if vector is None:
                continue
            requests.append(self._pymilvus.AnnSearchRequest(
                data=[np.asarray(vector, np.float32).tolist()], anns_field=field,
                param=self.index_settings(field).search(), limit=limit or top_k,
                expr=and_exprs(f"{HAS_FLAG[field]} == true", user_expr),
            ))
            fields.append(field)
        if not requests:
            raise ValueError("give at least one of text_query and image_query")
        result = self.client.hybrid_search(self.collection_name, requests, fusion.ranker(fields), limit=top_k,
                                           output_fields=SCALAR_FIELDS)
        hits = [Hit(id=str(h["id"]), score=float(h["distance"]), fields=dict(h.get("entity", {})))
                for h in result[0]]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    def check_vector(self, field: str, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """``vector`` as a float32 array, checked against the dim of ``field``.

        Raises:
            ValueError: ``field`` is not ``text_vec`` or ``image_vec``.
            DimensionMismatchError: the vector is not one-dimensional with the field's dim.
        """
        if field not in VECTOR_FIELDS:
            raise ValueError(f"field must be one of {list(VECTOR_FIELDS)}, not {field!r}")
        dim = self.text_dim if field == TEXT_FIELD else self.image_dim
        array = np.asarray(vector, np.float32)
        if array.ndim != 1 or array.shape[0] != dim:
            raise DimensionMismatchError(
                f"{field}: got a vector of shape {tuple(array.shape)}, expected ({dim},); embed with the "
                f"{'text' if field == TEXT_FIELD else 'image-space'} model the collection was built with"
            )
        return array

    def search_field(
        self,
        field: str,
        vector: Sequence[float] | np.ndarray,
        *,
        top_k: int = 10,
        filters: Filter = None,
    ) -> list[Hit]:
        """Plain ANN search on one vector field (no fusion).

        Rows whose vector for ``field`` is the null stand-in are never returned. The score is the field's
        metric as Milvus reports it: cosine similarity (``COSINE``) or inner product (``IP``), higher is
        better. Hits are ordered by score, ties broken by id.

        Args:
            field: ``text_vec`` or ``image_vec``.
            vector: Query vector of that field's dim.
            top_k: Hits returned (at most).
            filters: Scalar filter (Milvus expression or ``{field: value | [values]}``).

        Raises:
            ValueError: unknown ``field`` or ``top_k < 1``.
            DimensionMismatchError: the vector's dim differs from the field's.
            CollectionNotFoundError: the collection is gone.
        """
        if self.local is None:
            self.require_collection()
        query = self.check_vector(field, vector)
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.local is not None:
            found = self._local_field(field, query, top_k, to_expr(filters))
            return [Hit(id=k, score=s, fields=dict(self.local.rows.get(k, {}))) for k, s in found[:top_k]]
        result = self.client.search(
            self.collection_name, data=[query.tolist()], anns_field=field,
            search_params=self.index_settings(field).search(), limit=top_k,
            filter=and_exprs(f"{HAS_FLAG[field]} == true", to_expr(filters)), output_fields=SCALAR_FIELDS,
        )
        hits = [Hit(id=str(h["id"]), score=float(h["distance"]), fields=dict(h.get("entity", {})))
                for h in result[0]]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    def _local_field(self, field: str, vector: np.ndarray, limit: int, expr: str) -> list[tuple[str, float]]:
        assert self.local is not None
        vectors = self.local.fields[field]
        allowed = self.local.allowed(field, expr, self._matching_keys) if expr else None
        return vectors.search(vector, limit, allowed)[:limit]

    def _local_search(self, text_query: Any, image_query: Any, fusion: Fusion, top_k: int,
                      text_limit: int | None, image_limit: int | None, expr: str) -> list[Hit]:
        """:meth:`search` answered by the in-process copy: exact per-field top lists, fused like Milvus Lite."""
        assert self.local is not None
        per_field: dict[str, list[tuple[str, float]]] = {}
        for field, vector, limit in ((TEXT_FIELD, text_query, text_limit), (IMAGE_FIELD, image_query, image_limit)):
            if vector is not None:
                per_field[field] = self._local_field(field, self.check_vector(field, vector), limit or top_k, expr)
        if not per_field:
            raise ValueError("give at least one of text_query and image_query")
        rows = self.local.rows
        return [Hit(id=k, score=s, fields=dict(rows.get(k, {}))) for k, s in fusion.fuse(
            per_field, top_k, {f: self.index_settings(f).metric for f in per_field})]
