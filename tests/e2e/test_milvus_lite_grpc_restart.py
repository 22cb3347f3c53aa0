"""Data written through the Milvus Lite gRPC server (``python -m milvus_lite server``) survives a restart.

A real server process on 127.0.0.1; the store talks to it by ``http://127.0.0.1:PORT`` exactly as it would to
Milvus standalone. Restarted once after a graceful stop and once after SIGKILL (no chance to flush).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.milvus_hybrid import MilvusLiteServer, grpc_server_available, unit_rows
from rag_plugins.milvus.errors import CollectionNotFoundError
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore

pytestmark = pytest.mark.skipif(not grpc_server_available(), reason="milvus-lite ships no gRPC server")

N_ROWS = 200
TEXT_DIM, IMAGE_DIM = 16, 24


def open_store(uri: str, *, create: bool) -> MultiVectorMilvusStore:
    return MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="kb", text_dim=TEXT_DIM,
                                                               image_dim=IMAGE_DIM), create=create)


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_rows_survive_server_restart(tmp_path: Path, how: str) -> None:
    rng = np.random.default_rng(0)
    text, image = unit_rows(rng, N_ROWS, TEXT_DIM), unit_rows(rng, N_ROWS, IMAGE_DIM)
    items = [StoreItem(text=f"chunk {i}", doc_id=f"doc{i % 10}", chunk_id=str(i)) for i in range(N_ROWS)]
    server = MilvusLiteServer(tmp_path / "data", log_path=tmp_path / "milvus.log")
    server.start()
    try:
        store = open_store(server.uri, create=True)
        # the last 20 rows have no image vector (stored as the null stand-in, flagged false)
        store.upsert_vectors(items, list(text), [*image[:-20], *([None] * 20)])
        store.delete_doc("doc3")
        expected = store.search(text[5], image[5], top_k=5)
        assert store.count() == N_ROWS - N_ROWS // 10
        store.close()
        if how == "graceful":
            server.stop()
        else:
            server.kill()

        server.start()  # same data dir, same port
        reopened = open_store(server.uri, create=False)
        assert reopened.count() == N_ROWS - N_ROWS // 10
        assert reopened.count({"doc_id": "doc3"}) == 0
        assert reopened.count({"has_image_vec": False}) == 20 - 2  # doc3 held 2 of the last 20
        got = reopened.search(text[5], image[5], top_k=5)
        assert [h.id for h in got] == [h.id for h in expected]
        assert got[0].id == items[5].key
        reopened.drop()
        reopened.close()
        with pytest.raises(CollectionNotFoundError, match="ingest first"):
            open_store(server.uri, create=False)
    finally:
        server.stop()
