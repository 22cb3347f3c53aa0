"""The in-process exact search of embedded collections equals Milvus Lite's own answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.milvus.fusion import Fusion
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.local_index import forget_mirror
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.unit.rag_plugins.milvus.conftest import IMAGE_DIM, TEXT_DIM, RandomStore, make_settings


def milvus_twin(random_store: RandomStore) -> MultiVectorMilvusStore:
    """The same collection, searched by Milvus Lite itself (local_search=False)."""
    s = random_store.store
    settings = make_settings(Path("."), uri=s.settings.uri, local_search=False)
    return MultiVectorMilvusStore(settings=settings, client=s.client)


@pytest.mark.parametrize("fusion", [Fusion("rrf", rrf_k=10), Fusion("weighted", weights=(0.3, 0.7))])
@pytest.mark.parametrize("filters", [None, {"page": [0, 2]}])
def test_local_search_equals_milvus_lite(random_store: RandomStore, fusion: Fusion, filters: object) -> None:
    assert random_store.store.local is not None  # a file URI gets the local path by default
    twin = milvus_twin(random_store)
    assert twin.local is None
    for qt, qi in random_store.queries.values():
        kw = {"fusion": fusion, "top_k": 12, "text_limit": 15, "image_limit": 9, "filters": filters}
        got = random_store.store.search(qt, qi, **kw)  # type: ignore[arg-type]
        want = twin.search(qt, qi, **kw)  # type: ignore[arg-type]
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)
        assert [h.fields["text"] for h in got] == [h.fields["text"] for h in want]
        for field, q in (("text_vec", qt), ("image_vec", qi)):
            a = random_store.store.search_field(field, q, top_k=7, filters=filters)  # type: ignore[arg-type]
            b = twin.search_field(field, q, top_k=7, filters=filters)  # type: ignore[arg-type]
            assert [h.id for h in a] == [h.id for h in b]


def test_concurrent_searches_are_batched_and_exact(random_store: RandomStore) -> None:
    queries = list(random_store.queries.values()) * 8
    alone = [[h.id for h in random_store.store.search(qt, qi, top_k=10, text_limit=20, image_limit=20)]
             for qt, qi in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: [h.id for h in random_store.store.search(
            q[0], q[1], top_k=10, text_limit=20, image_limit=20)], queries))
    assert together == alone


def test_writes_and_reopen_keep_the_local_copy_in_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    settings = make_settings(tmp_path, text_dim=TEXT_DIM, image_dim=IMAGE_DIM)
    store = MultiVectorMilvusStore(settings=settings)
    items = [StoreItem(text=f"t{i}", doc_id=f"d{i % 3}", chunk_id=str(i)) for i in range(30)]
    tv = rng.standard_normal((30, TEXT_DIM)).astype(np.float32)
    iv = rng.standard_normal((30, IMAGE_DIM)).astype(np.float32)
    store.upsert_vectors(items, list(tv), list(iv))
    store.delete_doc("d1")
    store.delete([items[0].key])
    store.upsert_vectors(items[3:4], [None], [iv[5] + 0.3])  # row 3 loses its text_vec, gets a new image_vec
    twin = MultiVectorMilvusStore(settings=make_settings(tmp_path, local_search=False), client=store.client)
    assert store.local is not None
    assert len(store.local.fields["text_vec"]) == store.count("has_text_vec == true") == 18
    hits = store.search(tv[3], iv[5], top_k=30, text_limit=30, image_limit=30)
    assert [h.id for h in hits] == [h.id for h in twin.search(tv[3], iv[5], top_k=30, text_limit=30, image_limit=30)]
    assert {h.fields["doc_id"] for h in hits} == {"d0", "d2"}
    # A fresh process (no shared copy yet) loads the rows from the file.
    store.close()
    forget_mirror(store._local_key())
    reopened = MultiVectorMilvusStore(settings=settings)
    assert reopened.local is not None
    assert len(reopened.local.rows) == 19
    again = reopened.search(tv[3], iv[5], top_k=30, text_limit=30, image_limit=30)
    assert [(h.id, h.fields) for h in again] == [(h.id, h.fields) for h in hits]
    reopened.close()
