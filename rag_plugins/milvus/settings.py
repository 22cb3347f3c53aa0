"""Settings of :class:`~rag_plugins.milvus.store.MultiVectorMilvusStore`: connection, schema, indexes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

IndexType = Literal["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"]
Metric = Literal["COSINE", "IP"]

#: Build parameters used when none are given (Milvus' own usual defaults).
DEFAULT_BUILD_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "FLAT": {},
    "AUTOINDEX": {},
}
#: Search parameters used when none are given.
DEFAULT_SEARCH_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"ef": 128},
    "IVF_FLAT": {"nprobe": 16},
    "FLAT": {},
    "AUTOINDEX": {},
}


@dataclass(frozen=True)
class FieldIndexSettings:
    """Index of one vector field in Milvus.

    Attributes:
        index_type: ``HNSW``, ``IVF_FLAT``, ``FLAT`` (exact) or ``AUTOINDEX`` (Zilliz/Milvus picks); None (the
            default) lets the store pick when it creates the collection: ``FLAT`` when its in-process copy
            answers the searches (embedded file URIs), ``HNSW`` otherwise (see :meth:`resolved`).
        metric: ``COSINE`` (default; any vectors) or ``IP`` (equal to cosine for L2-normalized vectors, which
            is what rag-serve returns).
        build_params: Index build parameters (None: :data:`DEFAULT_BUILD_PARAMS`).
        search_params: Search parameters (None: :data:`DEFAULT_SEARCH_PARAMS`).
    """

    index_type: IndexType | None = None
    metric: Metric = "COSINE"
    build_params: dict[str, Any] | None = None
    search_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index_type is not None and self.index_type not in DEFAULT_BUILD_PARAMS:
            raise ValueError(f"index_type must be one of {sorted(DEFAULT_BUILD_PARAMS)}, not {self.index_type!r}")
        if self.metric not in ("COSINE", "IP"):
            raise ValueError(f"metric must be 'COSINE' or 'IP', not {self.metric!r}")

    def resolved(self, searched_in_process: bool) -> FieldIndexSettings:
        """These settings with a concrete ``index_type`` (an explicit one is kept).

        The default is ``FLAT`` when the store's in-process copy answers the searches: Milvus then only stores
        the rows, and milvus-lite 3 builds an HNSW graph per flushed segment in a background thread of the
        writing process, which took about three quarters of the CPU of an embedded ingest (py-spy,
        ``bench/results/milvus_ingest_100k.md``). Otherwise ``HNSW``, the index a Milvus server searches with.

        Args:
            searched_in_process: Whether searches are answered by the in-process copy.
        """
        if self.index_type is not None:
            return self
        return replace(self, index_type="FLAT" if searched_in_process else "HNSW")

    def _concrete(self) -> IndexType:
        if self.index_type is None:
            raise ValueError("index_type is None: call resolved() first (the store does)")
        return self.index_type

    def build(self) -> dict[str, Any]:
        """Build parameters to send."""
        return dict(DEFAULT_BUILD_PARAMS[self._concrete()] if self.build_params is None else self.build_params)

    def search(self) -> dict[str, Any]:
        """``param`` of a search request on this field: metric plus search parameters."""
        params = DEFAULT_SEARCH_PARAMS[self._concrete()] if self.search_params is None else self.search_params
        return {"metric_type": self.metric, "params": dict(params)}


@dataclass(frozen=True)
class AnnSettings:
    """When and how a field of the in-process copy switches from exact search to an IVF index.

    Below ``threshold`` live rows a field is searched exactly (brute force). From ``threshold`` rows on, an
    inverted-file index with fp16 codes (FAISS ``IndexIVFScalarQuantizer``, ``QT_fp16``, inner product) picks
    ``overfetch x limit`` candidates per query, which are then re-scored exactly from the float32 rows, so the
    scores (and the order of what is found) are the exact ones; only recall is approximate.

    Attributes:
        threshold: Live rows from which the IVF index is used (0 disables it: always exact).
        nlist_per_sqrt_n: Lists = this x sqrt(rows) (clamped to [16, 65536]).
        nprobe: Lists scanned per query.
        overfetch: Candidates asked of the index per wanted hit (>= 1).
        train_per_list: Training sample = this x nlist rows (k-means, ``niter`` iterations).
        niter: k-means iterations.
        retrain_growth: Retrain when the live rows exceed this x the rows the index was trained on.
    """

    threshold: int = 20_000
    nlist_per_sqrt_n: float = 2.0
    nprobe: int = 64
    overfetch: float = 2.0
    train_per_list: int = 16
    niter: int = 8
    retrain_growth: float = 4.0

    def nlist(self, n: int) -> int:
        """Number of inverted lists for ``n`` rows."""
        return int(min(65_536, max(16, self.nlist_per_sqrt_n * np.sqrt(max(n, 1)))))


@dataclass(frozen=True)
class MilvusStoreSettings:
    """Where the collection lives and how it is laid out.

    Attributes:
        uri: ``./file.db`` (Milvus Lite, in process; the default) or ``http://host:19530`` (Milvus Lite gRPC
            server, Milvus standalone/cluster, Zilliz), passed to ``MilvusClient`` unchanged.
        token: ``user:password`` or an API key, for servers that want one.
        db_name: Database on a Milvus server ("" = the server default).
        collection_name: Collection to use (created on first use unless the store is opened with
            ``create=False``).
        text_dim: ``text_vec`` size; None = the text embedder's ``info()["dim"]``.
        image_dim: ``image_vec`` size; None = the image-space embedder's ``info()["dim"]``.
        text_index: Index of ``text_vec``.
        image_index: Index of ``image_vec``.
        batch_size: Items embedded and upserted per batch.
        embed_text_into_image_space: Give text-only items an ``image_vec`` from the multimodal model's text
            side (the seed plan), so text chunks are found by image-space queries too.
        max_varchar_bytes: Max UTF-8 bytes of ``text``/``caption`` (Milvus' VARCHAR limit is 65,535).
        consistency_level: Milvus consistency; ``Strong`` so a search sees every finished upsert.
        local_search: Answer ``search`` / ``search_field`` from an exact in-process copy of the vectors
            (:mod:`rag_plugins.milvus.local_index`): None (default) = only for embedded file URIs, where
            milvus-lite 3.x's pure-Python search path costs O(rows) per query; False = always ask Milvus;
            True = also for a server URI (only safe when this process is the only writer).
        local_ann: When a field of the in-process copy switches from exact search to an IVF index with exact
            re-scoring (:class:`AnnSettings`; ``AnnSettings(threshold=0)`` = always exact).
        local_persist: Save the in-process copy next to an embedded DB file on :meth:`close` (and load it on
            open when it still matches the collection), so reopening does not re-read every row from Milvus.
    """

    uri: str = "./milvus_rag.db"
    token: str = ""
    db_name: str = ""
    collection_name: str = "rag_multivector"
    text_dim: int | None = None
    image_dim: int | None = None
    text_index: FieldIndexSettings = field(default_factory=FieldIndexSettings)
    image_index: FieldIndexSettings = field(default_factory=FieldIndexSettings)
    batch_size: int = 64
    embed_text_into_image_space: bool = True
    max_varchar_bytes: int = 65_535
    consistency_level: str = "Strong"
    local_search: bool | None = None
    local_ann: AnnSettings = field(default_factory=AnnSettings)
    local_persist: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        for name in ("text_dim", "image_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
