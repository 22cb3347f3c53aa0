"""A Milvus Lite store filled with random vectors (real Milvus Lite, in process; no servers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import FieldIndexSettings, MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.support.milvus_doubles import TableEmbedder, unit

TEXT_DIM = 16
IMAGE_DIM = 12
N_ROWS = 120


@dataclass
class RandomStore:
    store: MultiVectorMilvusStore
    keys: list[str]
    text_vecs: dict[str, np.ndarray]  # only rows that have a text_vec
    image_vecs: dict[str, np.ndarray]  # only rows that have an image_vec
    queries: dict[str, tuple[np.ndarray, np.ndarray]]


def make_settings(tmp_path: Path, **kw: object) -> MilvusStoreSettings:
    base: dict[str, object] = {
        "uri": str(tmp_path / "milvus.db"), "collection_name": "t",
        # FLAT = exact search, so rankings can be compared with a brute-force computation.
        "text_index": FieldIndexSettings(index_type="FLAT", metric="COSINE"),
        "image_index": FieldIndexSettings(index_type="FLAT", metric="COSINE"),
    }
    base.update(kw)
    return MilvusStoreSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RandomStore]:
    rng = np.random.default_rng(1234)
    queries = {f"q{i}": (unit(rng, TEXT_DIM), unit(rng, IMAGE_DIM)) for i in range(4)}
    text_table = {k: v[0] for k, v in queries.items()}
    image_table = {k: v[1] for k, v in queries.items()}
    store = MultiVectorMilvusStore(
        TableEmbedder(text_table, TEXT_DIM), TableEmbedder(image_table, IMAGE_DIM),  # type: ignore[arg-type]
        make_settings(tmp_path_factory.mktemp("rand")),
    )
    items, tvs, ivs = [], [], []
    text_vecs: dict[str, np.ndarray] = {}
    image_vecs: dict[str, np.ndarray] = {}
    for i in range(N_ROWS):
        # Every 7th row has no text_vec, every 5th no image_vec (never both): the null-vector path.
        item = StoreItem(text=f"row {i}", doc_id=f"doc{i % 10}", chunk_id=str(i), page=i % 3,
                         modality="image" if i % 2 else "text", meta={"i": i})
        tv = None if i % 7 == 3 else unit(rng, TEXT_DIM)
        iv = None if i % 5 == 1 and tv is not None else unit(rng, IMAGE_DIM)
        items.append(item)
        tvs.append(tv)
        ivs.append(iv)
        if tv is not None:
            text_vecs[item.key] = tv
        if iv is not None:
            image_vecs[item.key] = iv
    keys = store.upsert_vectors(items, tvs, ivs)
    yield RandomStore(store, keys, text_vecs, image_vecs, queries)
    store.close()
